"""The yes/no answer judge, shared by the eval gate (past.evaluation) and the GRPO reward (past.rewards).

One prompt, one verdict parser, one verdict cache, one client policy:
- prompt: the paper's question - is the proposed answer correct given the reference? - answered yes or no;
- parser: the first word of the reply, lower-cased, trailing punctuation stripped; anything else is no verdict;
- cache: per (endpoint, judge model, prompt, question, reference, answer), in memory and, with a `cache_path`,
  in an append-only JSONL file so verdicts survive restarts (a torn last line from a killed writer is skipped);
- client: OpenAI-compatible chat completions, greedy, 3 tokens, a per-request timeout, retries with exponential
  backoff on transport failures (connection refused, timeout, 5xx, 429; `past.errors.retry_policy`, tenacity) -
  the client library's own retries are off so every attempt is counted. A reply that is not yes/no is not
  retried (greedy: it would come back the same).

A verdict is True/False, or None when the judge could not give one. What None means is the caller's policy:
the gate fails closed (counted as an error), the GRPO reward falls back to token-F1 and trips a breaker.
`verdict` is the async entry point (the gate's concurrent eval); `verdict_sync` the blocking one (TRL calls
reward functions synchronously; run several in threads for concurrency - the sync client is thread-safe).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from pathlib import Path

from past.errors import retry_policy

JUDGE_PROMPT = (
    "You are grading an answer to a question.\n"
    "Question: {question}\nReference answer: {reference}\nProposed answer: {answer}\n"
    "Is the proposed answer correct given the reference? Reply with exactly one word: yes or no."
)


def judge_messages(question: str, answer: str, reference: str, prompt: str = JUDGE_PROMPT) -> list[dict]:
    return [{"role": "user", "content": prompt.format(question=question, reference=reference, answer=answer)}]


def parse_verdict(text: str | None) -> bool | None:
    """'Yes.' -> True, 'no, because ...' -> False, anything else (empty, 'maybe', None) -> None."""
    words = (text or "").strip().lower().split()
    first = words[0].strip(".,!:;\"'") if words else ""
    return {"yes": True, "no": False}.get(first)


class VerdictCache:
    """Verdicts by key, in memory and optionally appended to a JSONL file (thread-safe)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self._mem: dict[str, bool] = {}
        self._lock = threading.Lock()
        if self.path and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self._mem[rec["key"]] = bool(rec["verdict"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn line from a killed writer: just a miss

    @staticmethod
    def key(judge: list[str], question: str, answer: str, reference: str) -> str:
        return hashlib.sha256(json.dumps([judge, question, reference, answer]).encode()).hexdigest()

    def get(self, key: str) -> bool | None:
        return self._mem.get(key)

    def put(self, key: str, verdict: bool) -> None:
        with self._lock:
            self._mem[key] = verdict
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:  # one short O_APPEND write per verdict
                    f.write(json.dumps({"key": key, "verdict": verdict}) + "\n")

    def __len__(self) -> int:
        return len(self._mem)


class Judge:
    """Yes/no judge at an OpenAI-compatible endpoint, with cache, timeout and retries.

    Counters (for metrics): `requests` HTTP attempts made, `hits` cache hits, `failures` verdicts that came
    back None after all retries.
    """

    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY", timeout_s: float = 30.0,
                 retries: int = 2, backoff_s: float = 0.5, cache_path: str | Path | None = None,
                 prompt: str = JUDGE_PROMPT) -> None:
        self.base_url, self.model, self.api_key, self.timeout_s = base_url, model, api_key, timeout_s
        self.retries, self.backoff_s, self.prompt = retries, backoff_s, prompt
        self.cache = VerdictCache(cache_path)
        self.requests = self.hits = self.failures = 0
        self._lock = threading.Lock()
        self._sync = None  # clients are made on first use: a judge that is never asked opens nothing
        self._async = None

    def key(self, question: str, answer: str, reference: str) -> str:
        return VerdictCache.key([self.base_url, self.model, self.prompt], question, answer, reference)

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _request(self, question: str, answer: str, reference: str) -> dict:
        return dict(model=self.model, max_tokens=3, temperature=0.0,
                    messages=judge_messages(question, answer, reference, self.prompt))

    def _done(self, key: str, text: str | None) -> bool | None:
        v = parse_verdict(text)
        if v is None:
            self._count("failures")
        else:
            self.cache.put(key, v)
        return v

    def verdict_sync(self, question: str, answer: str, reference: str) -> bool | None:
        """Blocking verdict: True/False, or None when the judge failed or said neither yes nor no."""
        key = self.key(question, answer, reference)
        if (v := self.cache.get(key)) is not None:
            self._count("hits")
            return v
        with self._lock:  # reward functions call this from several threads at once
            if self._sync is None:
                from openai import OpenAI

                self._sync = OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s,
                                    max_retries=0)
        try:
            for attempt in retry_policy(self.retries, self.backoff_s):
                with attempt:
                    self._count("requests")
                    r = self._sync.chat.completions.create(**self._request(question, answer, reference))
        except Exception:  # noqa: BLE001 - every failure is a missing verdict; transport ones were retried
            self._count("failures")
            return None
        return self._done(key, _content(r))

    async def verdict(self, question: str, answer: str, reference: str) -> bool | None:
        """Async verdict (same policy as `verdict_sync`), for callers already inside an event loop."""
        key = self.key(question, answer, reference)
        if (v := self.cache.get(key)) is not None:
            self._count("hits")
            return v
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            from openai import AsyncOpenAI

            # One client per event loop: its connection pool belongs to the loop that opened it, and the gate
            # runs one asyncio.run per served model.
            self._async = (loop, AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s,
                                             max_retries=0))
        client = self._async[1]
        try:
            async for attempt in retry_policy(self.retries, self.backoff_s, asynchronous=True):
                with attempt:
                    self._count("requests")
                    r = await client.chat.completions.create(**self._request(question, answer, reference))
        except Exception:  # noqa: BLE001
            self._count("failures")
            return None
        return self._done(key, _content(r))


def _content(response) -> str | None:
    try:
        return response.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        return None


def judge_from_settings(settings, **kw) -> Judge | None:
    """The configured judge (verdicts cached under `<home>/cache/judge.jsonl`), or None without `judge_base_url`."""
    import os

    if not settings.judge_base_url:
        return None
    kw.setdefault("cache_path", Path(settings.home) / "cache" / "judge.jsonl")
    return Judge(settings.judge_base_url, settings.judge_model, os.environ.get(settings.api_key_env, "EMPTY"),
                 settings.judge_timeout_s, **kw)
