"""GRPO reward functions, in TRL's calling convention: `f(prompts, completions, answer, **kw) -> list[float]`.

Rule rewards (exact match, token-F1, format) need nothing but the reference answer. Token-F1 is the
workhorse: on a small model exact match is almost always 0 across a whole group, and a group whose
completions all get the same reward gives GRPO zero gradient - partial credit keeps the signal alive.

The LLM-judge reward asks the shared yes/no judge (past.judge: the gate's prompt, parser, cache and client
with timeout and retries) and, when the judge is dead or slow, falls back to token-F1 for that sample. After
`max_consecutive_failures` it stops calling the judge for the rest of the run (a dead judge must not cost a
timeout per sample). Fallbacks are counted and reported through TRL's `log_metric` hook, so they show up in
the run's metrics, and in `GRPOResult.judge`.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from past.judge import Judge, judge_from_settings
from past.scoring import exact_match, normalize, token_f1


def completion_text(completion: Any) -> str:
    """TRL passes plain strings, or (conversational) a list of messages whose last one is the answer."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    return str(completion)


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return str(prompt[-1].get("content") or "")
    return str(prompt)


def exact_match_reward(completions: list, answer: list[str], **_: Any) -> list[float]:
    """1 if the normalised completion equals the reference, else 0."""
    return [exact_match(completion_text(c), a) for c, a in zip(completions, answer)]


def token_f1_reward(completions: list, answer: list[str], **_: Any) -> list[float]:
    """SQuAD token-F1 between completion and reference: partial credit."""
    return [token_f1(completion_text(c), a) for c, a in zip(completions, answer)]


def format_reward(completions: list, answer: list[str], max_words: int = 24, **_: Any) -> list[float]:
    """A direct answer: non-empty, at most `max_words` words (or 2x the reference), no word looping."""
    out = []
    for c, a in zip(completions, answer):
        words = normalize(completion_text(c)).split()
        limit = max(max_words, 2 * len(normalize(a).split()))
        if not words:
            out.append(0.0)
            continue
        looping = len(words) >= 6 and len(set(words)) / len(words) < 0.4
        out.append(0.0 if looping else (1.0 if len(words) <= limit else 0.5))
    return out


# --- a protocol skill: the JSON answer envelope (the method benchmark's positive control) ----------------
# A reply protocol is the kind of skill a small model learns from RL quickly and SFT on bare answers does not
# teach (it unlearns it: measured in docs/RESULTS.md), so it is where a skill vector must show up first.
ENVELOPE_INSTRUCTION = 'Reply in JSON with one key, like this: {"answer": "..."}'


def envelope_answer(text: str) -> str | None:
    """The answer of a reply that is exactly one JSON object `{"answer": "<non-empty string>"}`, else None."""
    try:
        obj = json.loads(text.strip())
    except ValueError:
        return None
    if isinstance(obj, dict) and list(obj) == ["answer"] and isinstance(obj["answer"], str) and obj["answer"].strip():
        return obj["answer"]
    return None


def _embedded_envelope(text: str) -> bool:
    """A `{"answer": ...}` object somewhere inside a longer reply (half credit: the protocol, not the discipline)."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start:])
            if isinstance(obj, dict) and isinstance(obj.get("answer"), str) and obj["answer"].strip():
                return True
        except ValueError:
            pass
        start = text.find("{", start + 1)
    return False


def envelope_reward(completions: list, answer: list[str], **_: Any) -> list[float]:
    """1 for a reply that is exactly the envelope, 0.5 for an envelope inside other text, else 0."""
    out = []
    for c in completions:
        text = completion_text(c)
        out.append(1.0 if envelope_answer(text) is not None else 0.5 if _embedded_envelope(text) else 0.0)
    return out


def envelope_f1_reward(completions: list, answer: list[str], **_: Any) -> list[float]:
    """Token-F1 of the enveloped answer against the reference (of the whole reply when it is not enveloped)."""
    out = []
    for c, a in zip(completions, answer):
        text = completion_text(c)
        inner = envelope_answer(text)
        out.append(token_f1(text if inner is None else inner, a))
    return out


class JudgeReward:
    """GRPO reward from the yes/no judge (past.judge): 1 for yes, 0 for no, token-F1 when it gives no verdict.

    Fallback policy (a reward must never crash or stall a run): the judge retries transport failures itself;
    a sample still without a verdict gets token-F1 and is counted; after `max_consecutive_failures` verdicts
    in a row fail, the judge is not asked again for the rest of the run (cached verdicts are still used).
    Each call reports `judge/fallback_frac` and `judge/disabled` through TRL's `log_metric`.
    """

    __name__ = "judge_reward"  # TRL names reward columns after the function

    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY", timeout_s: float = 30.0,
                 retries: int = 2, max_consecutive_failures: int = 3, cache_path: str | Path | None = None,
                 backoff_s: float = 0.5, concurrency: int = 8, judge: Judge | None = None) -> None:
        self.judge = judge or Judge(base_url, model, api_key, timeout_s, retries, backoff_s, cache_path)
        self.max_consecutive_failures, self.concurrency = max_consecutive_failures, max(1, concurrency)
        self.samples = self.fallbacks = 0
        self._consecutive_failures = 0
        self._lock = threading.Lock()

    @property
    def disabled(self) -> bool:
        return self._consecutive_failures >= self.max_consecutive_failures

    API_KEY_ENV = "PAST_LAUNCH_JUDGE_API_KEY"  # how the key reaches launched processes (never written to a file)

    def describe(self) -> dict:
        """Everything that makes this reward except the API key, as JSON: each launched GRPO process rebuilds it."""
        j = self.judge
        return {"base_url": j.base_url, "model": j.model, "timeout_s": j.timeout_s, "retries": j.retries,
                "backoff_s": j.backoff_s, "prompt": j.prompt, "cache_path": str(j.cache.path) if j.cache.path else None,
                "max_consecutive_failures": self.max_consecutive_failures, "concurrency": self.concurrency}

    @classmethod
    def from_description(cls, d: dict, api_key: str = "EMPTY") -> "JudgeReward":
        judge = Judge(d["base_url"], d["model"], api_key, d["timeout_s"], d["retries"], d["backoff_s"], d["cache_path"],
                      d["prompt"])
        return cls(d["base_url"], d["model"], max_consecutive_failures=d["max_consecutive_failures"],
                   concurrency=d["concurrency"], judge=judge)

    @property
    def calls(self) -> int:
        """HTTP requests made to the judge (retries included)."""
        return self.judge.requests

    def verdict(self, question: str, answer: str, reference: str) -> bool | None:
        key = self.judge.key(question, answer, reference)
        if self.disabled:  # breaker open: cached verdicts only
            return self.judge.cache.get(key)
        v = self.judge.verdict_sync(question, answer, reference)
        with self._lock:
            self._consecutive_failures = 0 if v is not None else self._consecutive_failures + 1
        return v

    def stats(self) -> dict[str, float]:
        return {"samples": float(self.samples), "fallbacks": float(self.fallbacks), "calls": float(self.calls),
                "cache_hits": float(self.judge.hits), "disabled": float(self.disabled)}

    def __call__(self, prompts: list, completions: list, answer: list[str], log_metric=None, **_: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        args = [(prompt_text(p), t, a) for p, t, a in zip(prompts, texts, answer)]
        with ThreadPoolExecutor(self.concurrency) as pool:
            verdicts = list(pool.map(lambda x: self.verdict(*x), args))
        rewards = [token_f1(t, a) if v is None else float(v) for v, t, a in zip(verdicts, texts, answer)]
        fell_back = sum(v is None for v in verdicts)
        self.samples += len(rewards)
        self.fallbacks += fell_back
        if log_metric is not None:
            log_metric("judge/fallback_frac", fell_back / max(len(rewards), 1))
            log_metric("judge/disabled", float(self.disabled))
        return rewards


def judge_reward_from_settings(settings, **kw) -> JudgeReward | None:
    """The GRPO judge reward for the configured endpoint (verdicts cached under the home folder), or None."""
    judge = judge_from_settings(settings)
    return None if judge is None else JudgeReward(judge.base_url, judge.model, judge=judge, **kw)


def _episodes(episode: list[dict] | None) -> list[dict]:
    if episode is None:
        raise ValueError("episode rewards need the tool rollout (past.tool_rollout.ToolRollout) as rollout_func")
    return episode


def episode_reward(completions: list, episode: list[dict] | None = None, **_: Any) -> list[float]:
    """A tool episode's shaped reward (past.tools.episode_reward: format, error-free calls, Finish, pass)."""
    return [float(e["reward"]) for e in _episodes(episode)]


def episode_pass_reward(completions: list, episode: list[dict] | None = None, **_: Any) -> list[float]:
    """1 when the episode passed: weight 0 in a recipe logs the pass rate per step."""
    return [float(e["pass"]) for e in _episodes(episode)]


def episode_finish_reward(completions: list, episode: list[dict] | None = None, **_: Any) -> list[float]:
    """1 when the episode called Finish: weight 0 logs the finish rate per step."""
    return [float(e["finish"]) for e in _episodes(episode)]


RULE_REWARDS = {"exact_match": exact_match_reward, "token_f1": token_f1_reward, "format": format_reward,
                "envelope": envelope_reward, "envelope_f1": envelope_f1_reward, "episode": episode_reward,
                "episode_pass": episode_pass_reward, "episode_finish": episode_finish_reward}
