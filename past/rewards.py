"""GRPO reward functions, in TRL's calling convention: `f(prompts, completions, answer, **kw) -> list[float]`.

Rule rewards (exact match, token-F1, format) need nothing but the reference answer. Token-F1 is the
workhorse: on a small model exact match is almost always 0 across a whole group, and a group whose
completions all get the same reward gives GRPO zero gradient - partial credit keeps the signal alive.

The LLM-judge reward asks any OpenAI-compatible endpoint the paper's yes/no question ("is the answer correct
given the reference?"), caches each verdict per (question, reference, answer), retries with backoff, and,
when the judge is dead or slow, falls back to token-F1 for that sample. After `max_consecutive_failures`
it stops calling the judge for the rest of the run (a dead judge must not cost a timeout per sample).
Fallbacks are counted and reported through TRL's `log_metric` hook, so they show up in the run's metrics.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from past.scoring import exact_match, normalize, token_f1

JUDGE_PROMPT = (
    "You are grading an answer to a question.\n"
    "Question: {question}\nReference answer: {reference}\nGiven answer: {answer}\n"
    "Is the given answer correct given the reference answer? Reply with exactly one word: yes or no."
)


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


@dataclass
class JudgeReward:
    """Yes/no LLM judge through an OpenAI-compatible endpoint, with cache, retries and rule fallback."""

    base_url: str
    model: str
    api_key: str = "EMPTY"
    timeout_s: float = 30.0
    retries: int = 2
    max_consecutive_failures: int = 3
    cache_path: Path | None = None
    prompt: str = JUDGE_PROMPT
    __name__: str = "judge_reward"  # TRL names reward columns after the function

    calls: int = 0
    fallbacks: int = 0
    _consecutive_failures: int = 0
    _cache: dict[str, bool] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        from openai import OpenAI

        self._client = OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s, max_retries=0)
        if self.cache_path and self.cache_path.exists():
            for line in self.cache_path.read_text().splitlines():
                rec = json.loads(line)
                self._cache[rec["key"]] = rec["verdict"]

    @property
    def disabled(self) -> bool:
        return self._consecutive_failures >= self.max_consecutive_failures

    def verdict(self, question: str, reference: str, answer: str) -> bool | None:
        """True/False from the judge, or None when it could not answer (dead, slow, unparseable)."""
        key = hashlib.sha256(json.dumps([question, reference, answer]).encode()).hexdigest()
        if key in self._cache:
            return self._cache[key]
        if self.disabled:
            return None
        for attempt in range(self.retries + 1):
            try:
                self.calls += 1
                r = self._client.chat.completions.create(
                    model=self.model, temperature=0.0, max_tokens=3,
                    messages=[{"role": "user", "content": self.prompt.format(
                        question=question, reference=reference, answer=answer)}],
                )
                word = normalize(r.choices[0].message.content or "").split()[:1]
                if word and word[0] in ("yes", "no"):
                    v = word[0] == "yes"
                    self._remember(key, v)
                    self._consecutive_failures = 0
                    return v
            except Exception:  # noqa: BLE001 - any transport error: retry, then fall back
                pass
            if attempt < self.retries:
                time.sleep(min(0.5 * 2**attempt, 4.0))
        self._consecutive_failures += 1
        return None

    def _remember(self, key: str, verdict: bool) -> None:
        with self._lock:
            self._cache[key] = verdict
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache_path, "a") as f:
                    f.write(json.dumps({"key": key, "verdict": verdict}) + "\n")

    def __call__(self, prompts: list, completions: list, answer: list[str], log_metric=None, **_: Any) -> list[float]:
        rewards, fell_back = [], 0
        for p, c, a in zip(prompts, completions, answer):
            text = completion_text(c)
            v = self.verdict(prompt_text(p), a, text)
            if v is None:
                fell_back += 1
                rewards.append(token_f1(text, a))
            else:
                rewards.append(1.0 if v else 0.0)
        self.fallbacks += fell_back
        if log_metric is not None:
            log_metric("judge/fallback_frac", fell_back / max(len(rewards), 1))
            log_metric("judge/disabled", float(self.disabled))
        return rewards


RULE_REWARDS = {"exact_match": exact_match_reward, "token_f1": token_f1_reward, "format": format_reward}
