"""QA pairs and "implications" from a teacher model, for corpora that arrive without QA.

As in SEAL and the PaST paper, a teacher reads each document and writes (a) question/answer pairs and
(b) implications: short standalone restatements of the document's facts, which stage 1 of SFT trains on
next to the document itself. The teacher is any OpenAI-compatible chat endpoint (`past.serving.Endpoint`).

Robustness, because teachers misbehave: transient HTTP errors are retried with exponential backoff,
requests are spaced by a minimum interval (a simple rate limit), results are cached on disk keyed by
(document sha256, prompt version, model) so a re-run costs nothing, and the parser is strict: output that
is not the requested JSON is dropped and counted in the returned stats - it never crashes the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from past.corpus import Document, QAPair, qa_id
from past.errors import retry_policy
from past.serving import Endpoint

PROMPT_VERSION = "qa-v1"  # bump whenever PROMPT changes: it is part of the cache key

PROMPT = """Read the document and write questions a reader could answer from it alone, closed-book.

Reply with ONE JSON object and nothing else, exactly of this shape:
{{"qa": [{{"question": "...", "answer": "..."}}], "implications": ["...", "..."]}}

Rules:
- "qa": {n_qa} question/answer pairs. Each question must make sense without the document (name the
  subject explicitly). Each answer is short: a name, number, date or phrase copied from the document.
- "implications": {n_impl} standalone sentences restating facts of the document, or facts that follow
  directly from it. Each must be understandable on its own.

Title: {title}

Document:
{text}
"""


@dataclass
class QAGenConfig:
    n_qa: int = field(default=5, metadata={"help": "QA pairs requested per document."})
    n_implications: int = field(default=5, metadata={"help": "Implications requested per document."})
    max_doc_chars: int = field(default=6000, metadata={"help": "A longer document is asked about in pieces of at "
                                                               "most this many characters (n_qa per piece)."})
    temperature: float = field(default=0.0, metadata={"help": "Teacher sampling temperature."})
    max_tokens: int = field(default=1024, metadata={"help": "Max tokens of one teacher reply."})
    retries: int = field(default=4, metadata={"help": "Retries of a failed request (HTTP 5xx/429, timeouts)."})
    backoff_s: float = field(default=1.0, metadata={"help": "First retry delay; doubles each retry."})
    min_interval_s: float = field(default=0.0, metadata={"help": "Minimum seconds between requests (rate limit)."})
    timeout_s: float = field(default=120.0, metadata={"help": "Timeout of one request."})


@dataclass
class QAGenStats:
    documents: int = 0
    cached: int = 0
    requests: int = 0
    retries: int = 0
    failed_documents: int = 0  # request kept failing after all retries
    malformed_responses: int = 0  # reply was not a JSON object of the requested shape
    dropped_items: int = 0  # individual QA/implication entries that were malformed
    qa: int = 0
    implications: int = 0


@dataclass
class QAGenResult:
    qa: list[QAPair]
    implications: dict[str, list[str]]  # doc_id -> sentences
    stats: QAGenStats


class RateLimiter:
    """At most one request per `min_interval_s` across threads."""

    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s, self._next, self._lock = min_interval_s, 0.0, threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.min_interval_s
        if delay > 0:
            time.sleep(delay)


# --- strict parsing -------------------------------------------------------------------------------------
_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```\s*$", re.S)


def parse_reply(reply: str) -> tuple[list[dict], list[str], int] | None:
    """(qa items, implications, dropped item count), or None if the reply is not the requested JSON object.

    Accepted: exactly one JSON object (optionally inside one ```json fence) with list fields "qa" and
    "implications"; a QA item needs non-empty string "question" and "answer". Anything else is dropped.
    """
    text = reply.strip()
    if (m := _FENCE.match(text)):
        text = m.group(1).strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("qa"), list) or not isinstance(obj.get("implications", []), list):
        return None
    qa, impl, dropped = [], [], 0
    for item in obj["qa"]:
        ok = (isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("answer"), str)
              and item["question"].strip() and item["answer"].strip())
        if ok:
            qa.append({"question": item["question"].strip(), "answer": item["answer"].strip()})
        else:
            dropped += 1
    for s in obj.get("implications", []):
        if isinstance(s, str) and s.strip():
            impl.append(s.strip())
        else:
            dropped += 1
    return qa, impl, dropped


# --- cache ----------------------------------------------------------------------------------------------
def cache_key(doc_sha256: str, model: str, prompt_version: str = PROMPT_VERSION) -> str:
    return hashlib.sha256(f"{doc_sha256}\x00{prompt_version}\x00{model}".encode()).hexdigest()


def _cache_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / key[:2] / f"{key}.json"


def _cache_put(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{threading.get_ident()}"
    tmp.write_text(json.dumps(value), encoding="utf-8")
    os.replace(tmp, path)


# --- the teacher loop -----------------------------------------------------------------------------------
def _client(endpoint: Endpoint, cfg: QAGenConfig):
    from openai import OpenAI

    # max_retries=0: past.errors.retry_policy retries (tenacity), so retries are counted and backoff is ours to set
    return OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, timeout=cfg.timeout_s, max_retries=0)


def _ask(client, endpoint: Endpoint, prompt: str, cfg: QAGenConfig, limiter: RateLimiter,
         stats: QAGenStats) -> str | None:
    import openai

    try:
        for attempt in retry_policy(cfg.retries, cfg.backoff_s):  # a 4xx other than 429 will not heal: not retried
            with attempt:
                limiter.wait()
                stats.requests += 1
                stats.retries += attempt.retry_state.attempt_number > 1
                r = client.chat.completions.create(
                    model=endpoint.model, messages=[{"role": "user", "content": prompt}],
                    temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                )
    except openai.OpenAIError:
        return None
    return (r.choices[0].message.content or "") if r.choices else ""


def text_chunks(text: str, max_chars: int) -> list[str]:
    """Cut a document into pieces of ≤ max_chars at paragraph (else line, else hard) boundaries: a long
    document is asked about piece by piece, so its tail is never cut from the teacher's prompt."""
    if len(text) <= max_chars:
        return [text]
    out, cur = [], ""
    for para in re.split(r"(\n\s*\n)", text):
        while len(para) > max_chars:  # one huge paragraph: cut it hard
            if cur:
                out.append(cur)
                cur = ""
            out.append(para[:max_chars])
            para = para[max_chars:]
        if len(cur) + len(para) > max_chars and cur.strip():
            out.append(cur)
            cur = ""
        cur += para
    if cur.strip():
        out.append(cur)
    return [c.strip() for c in out if c.strip()]


def generate(documents: list[Document], endpoint: Endpoint, cache_dir: Path, cfg: QAGenConfig | None = None,
             progress: bool = True) -> QAGenResult:
    """Ask the teacher about every document, chunk by chunk (cache first). Never raises for misbehaviour."""
    cfg = cfg or QAGenConfig()
    stats = QAGenStats(documents=len(documents))
    limiter = RateLimiter(cfg.min_interval_s)
    client = _client(endpoint, cfg)
    qa: list[QAPair] = []
    implications: dict[str, list[str]] = {}
    pieces = [(doc, chunk, i) for doc in documents for i, chunk in enumerate(text_chunks(doc.text, cfg.max_doc_chars))]
    for doc, chunk, i in tqdm(pieces, desc="teacher QA", unit="chunk", disable=not progress):
        chunk_sha = doc.sha256 if i == 0 and chunk == doc.text else hashlib.sha256(chunk.encode()).hexdigest()
        path = _cache_path(cache_dir, cache_key(chunk_sha, endpoint.model))
        parsed = None
        if path.is_file():
            try:
                hit = json.loads(path.read_text(encoding="utf-8"))
                parsed = (hit["qa"], hit["implications"], 0)
                stats.cached += 1
            except (json.JSONDecodeError, KeyError, OSError):
                parsed = None  # a damaged cache entry is just a miss
        if parsed is None:
            prompt = PROMPT.format(n_qa=cfg.n_qa, n_impl=cfg.n_implications, title=doc.title, text=chunk)
            reply = _ask(client, endpoint, prompt, cfg, limiter, stats)
            if reply is None:
                stats.failed_documents += 1
                continue
            parsed = parse_reply(reply)
            if parsed is None:
                stats.malformed_responses += 1
                continue
            _cache_put(path, {"qa": parsed[0], "implications": parsed[1], "model": endpoint.model,
                              "prompt_version": PROMPT_VERSION, "doc_sha256": chunk_sha})
        items, impl, dropped = parsed
        stats.dropped_items += dropped
        for it in items:
            qa.append(QAPair(id=qa_id(it["question"], it["answer"], doc.id), question=it["question"],
                             answer=it["answer"], doc_id=doc.id))
        if impl:
            implications.setdefault(doc.id, []).extend(impl)
    stats.qa, stats.implications = len(qa), sum(len(v) for v in implications.values())
    return QAGenResult(qa=qa, implications=implications, stats=stats)


def write_generated(result: QAGenResult, out_dir: Path) -> dict:
    """Write `qa.jsonl`, `implications.jsonl` ({doc_id, text} per line) and `stats.json` atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "qa.jsonl": "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in result.qa),
        "implications.jsonl": "".join(json.dumps({"doc_id": d, "text": t}, ensure_ascii=False) + "\n"
                                      for d, ts in result.implications.items() for t in ts),
        "stats.json": json.dumps(asdict(result.stats), indent=2) + "\n",
    }
    for name, text in files.items():
        tmp = out_dir / f".tmp-{name}-{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out_dir / name)
    return asdict(result.stats)


def read_implications(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.setdefault(row["doc_id"], []).append(row["text"])
    return out


def teacher_endpoint(settings) -> Endpoint:
    """The teacher from settings (teacher_base_url/teacher_model, key from the api_key_env variable)."""
    from past.errors import PastError

    if not settings.teacher_base_url or not settings.teacher_model:
        raise PastError("no teacher configured: set teacher_base_url and teacher_model "
                        "(PAST_TEACHER_BASE_URL / PAST_TEACHER_MODEL), or pass --base-url/--model")
    return Endpoint(base_url=settings.teacher_base_url, model=settings.teacher_model,
                    api_key=os.environ.get(settings.api_key_env, "EMPTY"))
