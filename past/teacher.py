"""Which teacher writes QA and implications for a corpus that arrives without (enough) QA, and the built-in one.

Three teachers, chosen by the `teacher` setting:
- `endpoint`: any OpenAI-compatible chat model (`teacher_base_url`, `teacher_model`) through `past.qa.generate`
  (the SEAL / PaST setting: a strong model paraphrases the documents). What a real deployment uses.
- `self`: the base model itself, served by vLLM, asked the same prompt (SEAL's "self" setting).
- `extractive`: deterministic, offline, no model. Each sentence of the document becomes a completion
  question - `From "<title>": how does this sentence end? "<first part> ..."` -> the value that comes next
  (the first number, with its unit, or capitalised name after the first two words; sentences without one
  give no question) - and the title-anchored sentences are the implications. Its questions test *recall of what the document says*, not comprehension
  of paraphrases: a weaker signal than a strong teacher's, but every answer is supported by the document by
  construction, it costs milliseconds, and it is the same on every machine.
`auto` (default) = `endpoint` when `teacher_base_url` is set, else `extractive`. The measured comparison of
the built-in candidates on the synthetic domains is in docs/BENCHMARKS.md (`bench/teacher.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from pathlib import Path

from past.corpus import Document, QAPair, qa_id
from past.errors import PastError
from past.qa import PROMPT_VERSION, QAGenConfig, QAGenResult, QAGenStats, generate, teacher_endpoint

EXTRACTIVE_VERSION = "extractive-v3"  # bump when the generator changes: it is part of the teacher key
TEACHERS = ("auto", "extractive", "endpoint", "self")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_HEADING = re.compile(r"^#{1,6}\s+")


def sentences(text: str) -> list[str]:
    """The document's sentences (markdown headings and very short fragments left out), in order, unique."""
    out, seen = [], set()
    for line in text.splitlines():
        line = line.strip()
        if not line or _HEADING.match(line):
            continue
        for s in _SENTENCE.split(line):
            s = s.strip()
            key = " ".join(s.lower().split())
            if 5 <= len(s.split()) <= 60 and key not in seen:
                seen.add(key)
                out.append(s)
    return out


_EDGE = ".,;:!?()[]\"'"


_FUNCTION = {"a", "an", "the", "in", "on", "at", "for", "of", "to", "if", "when", "it", "this", "that", "these",
             "those", "every", "each", "its", "his", "her", "their", "our", "and", "but", "or", "as", "by", "with"}


def _valueish(word: str, skip: set[str] = frozenset()) -> bool:
    w = word.strip(_EDGE)
    if not w or w.lower() in skip:
        return False
    return any(c.isdigit() for c in w) or (w[0].isupper() and w.lower() not in _FUNCTION)


def completion_pair(sentence: str, title: str = "") -> tuple[str, str] | None:
    """(cue, value) of a sentence, or None when it states no value to ask for.

    The value is the first number or capitalised run (a name, a code, a date) after the first two words,
    with the unit word that follows a number ("530 credits"); the cue is everything before it. Only the
    value is the answer - not the rest of the sentence - so a reply that repeats the sentence's template
    ("the city of <wrong city>") does not score as correct. Words of the title (the document's subject) are
    never the value."""
    words = sentence.split()
    if len(words) < 4:
        return None
    skip = {w.strip(_EDGE).lower() for w in title.split()}
    # a capitalised word right after a colon starts a clause ("Quick facts (X): Pressing ..."), it is no name
    i = next((k for k in range(2, len(words)) if _valueish(words[k], skip)
              and (words[k - 1][-1:] != ":" or any(c.isdigit() for c in words[k]))), None)
    if i is None:
        return None
    j = i + 1
    numeric = any(c.isdigit() for c in words[i])
    while j < len(words) and j - i < 4 and not numeric and _valueish(words[j], skip) and not words[j - 1].endswith((",", ".", ";", ":")):
        j += 1  # a capitalised run: "Stanley Kubrick", "Arthur C. Clarke"
    if numeric and j < len(words) and words[j].strip(_EDGE).isalpha() and words[j].islower() \
            and words[j].strip(_EDGE) not in _FUNCTION \
            and len(words[j].strip(_EDGE)) <= 10 and not words[i].endswith((",", ".", ";", ":")):
        j += 1  # the unit of a number: "530 credits", "12 seconds"
    value = " ".join(words[i:j]).strip(_EDGE)
    if not value:
        return None
    return " ".join(words[:i]), value


def _spread(items: list, n: int) -> list:
    """n items evenly spread over the list (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / max(n - 1, 1))] for i in range(n)]


def extractive_generate(documents: list[Document], cfg: QAGenConfig | None = None) -> QAGenResult:
    """Completion QA and title-anchored implications from each document's own sentences (n per piece)."""
    from past.qa import text_chunks

    cfg = cfg or QAGenConfig()
    stats = QAGenStats(documents=len(documents))
    qa: list[QAPair] = []
    implications: dict[str, list[str]] = {}
    for doc in documents:
        seen_q: set[str] = set()
        for chunk in text_chunks(doc.text, cfg.max_doc_chars):
            sents = sentences(chunk)
            pairs = [(s, p) for s in sents if (p := completion_pair(s, doc.title)) is not None]
            stats.dropped_items += len(sents) - len(pairs)
            for _, (cue, rest) in _spread(pairs, cfg.n_qa):
                q = f'From "{doc.title}": how does this sentence end? "{cue} ..."'
                if q not in seen_q:
                    seen_q.add(q)
                    qa.append(QAPair(id=qa_id(q, rest, doc.id), question=q, answer=rest, doc_id=doc.id))
            impl = [f"{doc.title}: {s}" for s in _spread(sents, cfg.n_implications)]
            if impl:
                implications.setdefault(doc.id, []).extend(impl)
    stats.qa, stats.implications = len(qa), sum(len(v) for v in implications.values())
    return QAGenResult(qa=qa, implications=implications, stats=stats)


def resolve_kind(settings) -> str:
    kind = settings.teacher
    if kind not in TEACHERS:
        raise PastError(f"setting 'teacher': {kind!r} is not one of {TEACHERS}")
    if kind == "auto":
        return "endpoint" if settings.teacher_base_url else "extractive"
    return kind


def teacher_key(settings, cfg: QAGenConfig) -> dict:
    """What determines the teacher's output for a given document: kind, model, prompt/generator, config."""
    kind = resolve_kind(settings)
    model = {"endpoint": f"{settings.teacher_base_url}|{settings.teacher_model}", "self": settings.base_model,
             "extractive": ""}[kind]
    version = EXTRACTIVE_VERSION if kind == "extractive" else PROMPT_VERSION
    return {"kind": kind, "model": model, "version": version,
            "n_qa": cfg.n_qa, "n_implications": cfg.n_implications, "max_doc_chars": cfg.max_doc_chars,
            "temperature": cfg.temperature, "max_tokens": cfg.max_tokens}


def corpus_teacher_key(settings) -> dict:
    """What `teach_corpus` returns depends on, besides the corpus: whether the teacher runs, and its key."""
    cfg = QAGenConfig(n_qa=settings.teacher_n_qa, n_implications=settings.teacher_n_implications)
    return {"min_qa": settings.teacher_min_qa, **teacher_key(settings, cfg)}


def run_teacher(settings, documents: list[Document], cfg: QAGenConfig, progress: bool = False) -> tuple[QAGenResult, dict]:
    """Generate with the configured teacher. Returns (result, record of kind, model, seconds, stats)."""
    from dataclasses import asdict

    kind = resolve_kind(settings)
    t0 = time.perf_counter()
    if kind == "extractive":
        result = extractive_generate(documents, cfg)
    else:
        if kind == "endpoint":
            server = contextlib.nullcontext(teacher_endpoint(settings))
        else:
            from past.models import resolve_model
            from past.serving import serve_or_connect

            server = serve_or_connect(resolve_model(settings.base_model, settings.models_dir), "teacher", settings)
        with server as endpoint:
            result = generate(documents, endpoint, Path(settings.home) / "cache" / "qa", cfg, progress=progress)
    record = {"teacher": kind, "key": teacher_key(settings, cfg), "seconds": round(time.perf_counter() - t0, 3),
              "stats": asdict(result.stats)}
    return result, record


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def teach_corpus(settings, corpus, out_root: Path) -> dict:
    """Teacher QA + implications for a corpus shipping fewer than `teacher_min_qa` QA pairs, written once per
    (corpus, teacher key) under `out_root`; a corpus with enough QA of its own gets `{"generated": False}`."""
    from past.qa import write_generated

    own = len(corpus.qa) + len(corpus.tool_tasks)  # a tool corpus's tasks are stage-2 pairs too
    if settings.teacher_min_qa == 0 or own >= settings.teacher_min_qa:
        return {"generated": False, "teacher": "none", "reason": f"corpus ships {own} QA pairs / tool tasks"}
    cfg = QAGenConfig(n_qa=settings.teacher_n_qa, n_implications=settings.teacher_n_implications)
    key = teacher_key(settings, cfg)
    out = Path(out_root) / f"{corpus.id[:16]}-{key_hash(key)}"
    done = out / "teacher.json"
    if done.is_file():  # written last: the folder is complete
        return json.loads(done.read_text()) | {"cached": True}
    result, record = run_teacher(settings, corpus.documents, cfg)
    if not result.qa and own:  # e.g. terse API docs: train on what the corpus ships, and say so
        return {"generated": False, "teacher": record["teacher"], "stats": record["stats"],
                "reason": f"teacher wrote no usable QA; the corpus's own {own} QA pairs / tool tasks are used"}
    if not result.qa:
        raise PastError(f"teacher {record['teacher']} wrote no usable QA for corpus {corpus.name} "
                        f"({corpus.id[:12]}): {record['stats']}")
    write_generated(result, out)
    record |= {"generated": True, "path": str(out), "qa": len(result.qa),
               "implications": sum(len(v) for v in result.implications.values())}
    tmp = out / ".tmp-teacher.json"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(done)
    return record


def teacher_metrics(teacher: dict) -> dict[str, float]:
    """What the teacher produced, as MLflow metrics (counts, drops, cache hits, seconds)."""
    if not teacher.get("generated"):
        return {"teacher_generated": 0.0}
    st = teacher.get("stats", {})
    return {"teacher_generated": 1.0, "teacher_qa": float(teacher["qa"]),
            "teacher_implications": float(teacher["implications"]), "teacher_seconds": float(teacher["seconds"]),
            "teacher_cached_chunks": float(st.get("cached", 0)), "teacher_dropped_items": float(st.get("dropped_items", 0)),
            "teacher_failed_documents": float(st.get("failed_documents", 0)),
            "teacher_malformed_responses": float(st.get("malformed_responses", 0))}
