"""Corpus tasks: claim arrivals from the inbox, validate, and keep the ledger's status current."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from past import inbox
from past.corpus import CorpusError, load_corpus, read_qa_jsonl, validate
from past.models import sha256_file
from past.teacher import corpus_teacher_key
from tasks.common import cached, retry_transient, settings


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5)
def claim_new_corpora(settle_s: float = 10.0, lock_wait_s: float = 0.0) -> dict:
    """One watcher pass: claim complete arrivals exactly once; list the corpora to hand to adaptation."""
    s = settings()
    with inbox.watch_lock(Path(s.home), wait_s=lock_wait_s):
        claims, to_submit = inbox.scan_inbox(s, settle_s=settle_s)
    return {
        "claims": [{"kind": c.kind, "name": c.name, "corpus_id": c.corpus_id, "path": str(c.path),
                    "reasons": c.reasons} for c in claims],
        "to_submit": [{"corpus_id": r["corpus_id"], "path": r["path"], "name": r.get("name")} for r in to_submit],
    }


@task
def resolve_corpus(corpus: str) -> dict:
    """A corpus id (claimed into the home folder) or a folder path -> validated corpus manifest."""
    s = settings()
    path = Path(corpus)
    if not path.exists() and (Path(s.home) / "corpora" / corpus).is_dir():
        path = Path(s.home) / "corpora" / corpus
    reasons = validate(path)
    if reasons:
        raise CorpusError(path, reasons)  # deterministic: no retry; the inbox already quarantines arrivals
    c = load_corpus(path)
    return {"corpus_id": c.id, "path": str(path.resolve()), "name": c.name, "documents": len(c.documents),
            "qa": len(c.qa)}


@task(cache_policy=cached(recipe=lambda: corpus_teacher_key(settings())), persist_result=True)
def teacher_qa(corpus: dict) -> dict:
    """Teacher QA + implications when the corpus ships fewer than `teacher_min_qa` pairs (cached by content)."""
    from past.teacher import teach_corpus, teacher_metrics

    s = settings()
    record = teach_corpus(s, load_corpus(Path(corpus["path"])), Path(s.home) / "teacher")
    return record | {"metrics": teacher_metrics(record)}


@task
def mark_corpus(corpus_id: str, status: str, **fields: object) -> None:
    """Record a corpus's status (submitted, promoted, rejected, failed) in the ledger."""
    s = settings()
    inbox.update_ledger(Path(s.home), corpus_id, status=status, **fields)


@task
def corpora_between(start: float | None = None, end: float | None = None) -> list[str]:
    """Ids of claimed corpora whose arrival time is within [start, end) (Unix seconds)."""
    s = settings()
    return [r["corpus_id"] for r in inbox.all_ledger(Path(s.home))
            if (start is None or r.get("arrived", 0) >= start) and (end is None or r.get("arrived", 0) < end)]


@task
def resolve_rl_questions(path: str) -> dict:
    """A JSONL of RL questions (question, answer, doc_id) -> checked manifest keyed by its content hash."""
    qa = read_qa_jsonl(Path(path))  # CorpusError with every bad line: deterministic, no retry
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(Path(path)), "questions": len(qa)}
