"""Corpora: format, safe extraction, validation, content hashing, metadata, quarantine and QA splits.

A corpus is a folder (or a `.tar.gz`/`.tgz`/`.tar`/`.zip` archive of one) holding:
- documents: `*.md` / `*.txt` files (id = relative path without suffix, title = first `# heading` or file
  stem), and/or `*.jsonl` files of records `{"id", "title", "text"}`;
- optionally `qa.jsonl` at the top: records `{"question", "answer", "doc_id"?, "id"?}`;
- optionally `corpus.meta.json` (name, arrival time, source), written by `write_meta`, outside the hash.
Hidden files (`.name`) are ignored; any other file is rejected, so nothing is silently skipped.

Validation collects *every* problem as a `Reason(code, file, message)` rather than stopping at the first, so
a quarantined corpus carries the complete list in `reasons.json`. The corpus id is a sha256 over the sorted
relative paths and bytes of its content files: the same content always gets the same id, wherever it lands.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from past.errors import PastError
from past.tools import TOOL_TASKS_FILE, TOOLS_FILE, ToolSpec, parse_tool_spec, parse_tool_tasks

META_FILE = "corpus.meta.json"
QA_FILE = "qa.jsonl"
DOC_SUFFIXES = (".md", ".txt")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


@dataclass(frozen=True)
class Limits:
    """Size limits a corpus must respect (defaults sized for "a few thousand pages", not a data lake)."""

    max_file_bytes: int = 20 * 2**20  # 20 MiB per file
    max_total_bytes: int = 500 * 2**20  # 500 MiB per corpus (also caps archive extraction: no zip bombs)
    max_files: int = 10_000  # files per corpus
    max_doc_chars: int = 2_000_000  # characters per document
    max_qa: int = 100_000  # QA pairs per corpus


DEFAULT_LIMITS = Limits()


class CorpusError(PastError):
    """A corpus that cannot be used; `.reasons` holds the machine-readable list."""

    def __init__(self, path: Path, reasons: list["Reason"]) -> None:
        self.path, self.reasons = Path(path), reasons
        head = "; ".join(str(r) for r in reasons[:5])
        more = f" (+{len(reasons) - 5} more)" if len(reasons) > 5 else ""
        super().__init__(f"invalid corpus {path}: {head}{more}")


@dataclass(frozen=True)
class Reason:
    """One validation failure. `code` is stable (see docs/corpus.md); `file` is relative to the corpus."""

    code: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.file}: {self.message}"


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    source: str  # relative file it came from

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class QAPair:
    id: str
    question: str
    answer: str
    doc_id: str | None = None


def qa_id(question: str, answer: str, doc_id: str | None) -> str:
    """Stable id of a QA pair: the same question/answer/document always maps to the same id."""
    key = f"{doc_id or ''}\x00{question.strip()}\x00{answer.strip()}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


@dataclass
class Corpus:
    root: Path
    id: str
    documents: list[Document]
    qa: list[QAPair]
    meta: dict = field(default_factory=dict)
    tools: "ToolSpec | None" = None  # tools.json of a tool corpus (past.tools)
    tool_tasks: list = field(default_factory=list)  # tool_tasks.jsonl: past.tools.ToolTask

    @property
    def name(self) -> str:
        return self.meta.get("name") or self.root.name

    def doc(self, doc_id: str) -> Document:
        return next(d for d in self.documents if d.id == doc_id)


# --- safe archive extraction ----------------------------------------------------------------------------
def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _member_problem(name: str) -> str | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in p.parts:
        return "path escapes the corpus folder ('..')"
    return None


def extract_archive(archive: Path, dest: Path, limits: Limits = DEFAULT_LIMITS) -> list[Reason]:
    """Extract into `dest` (must not exist) after checking *every* member; nothing is written if any fails.

    Refused: absolute or `..` paths, symlinks, hard links, devices/fifos, more than `max_files` members or
    more than `max_total_bytes` uncompressed. A single top folder holding everything is unwrapped.
    """
    rel = archive.name
    reasons: list[Reason] = []
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                total = 0
                for info in infos:
                    if (why := _member_problem(info.filename)):
                        reasons.append(Reason("path_escape", info.filename, why))
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        reasons.append(Reason("symlink", info.filename, "symbolic links are not allowed"))
                    total += info.file_size
                reasons += _count_limits(rel, len(infos), total, limits)
                if not reasons:
                    dest.mkdir(parents=True)
                    for info in infos:
                        zf.extract(info, dest)
        else:
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                total = 0
                for m in members:
                    if (why := _member_problem(m.name)):
                        reasons.append(Reason("path_escape", m.name, why))
                    if m.issym() or m.islnk():
                        reasons.append(Reason("symlink", m.name, f"link to {m.linkname!r} is not allowed"))
                    elif not (m.isfile() or m.isdir()):
                        reasons.append(Reason("special_file", m.name, "device, fifo or other special member"))
                    total += max(m.size, 0)
                reasons += _count_limits(rel, len(members), total, limits)
                if not reasons:
                    dest.mkdir(parents=True)
                    tf.extractall(dest, filter="data")  # the stdlib filter is a second line of defence
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        return [Reason("bad_archive", rel, f"cannot read archive: {e}")]
    if reasons:
        shutil.rmtree(dest, ignore_errors=True)
        return reasons
    entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():  # archive of a folder: unwrap it
        inner = entries[0]
        for child in inner.iterdir():
            os.replace(child, dest / child.name)
        inner.rmdir()
    return []


def _count_limits(rel: str, n: int, total: int, limits: Limits) -> list[Reason]:
    out = []
    if n > limits.max_files:
        out.append(Reason("too_many_files", rel, f"{n} files > limit {limits.max_files}"))
    if total > limits.max_total_bytes:
        out.append(Reason("too_large", rel, f"{total} bytes uncompressed > limit {limits.max_total_bytes}"))
    return out


# --- scanning and loading -----------------------------------------------------------------------------
def content_files(root: Path) -> list[Path]:
    """Every non-hidden entry under root except the metadata file, sorted by relative path (no following links)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        d = Path(dirpath)
        for name in sorted(filenames) + [x for x in dirnames if (d / x).is_symlink()]:
            if name.startswith(".") or (d == root and name == META_FILE):
                continue
            out.append(d / name)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def corpus_hash(root: Path, files: list[Path] | None = None) -> str:
    """sha256 over (relative path, size, bytes) of each content file in sorted order."""
    h = hashlib.sha256()
    for p in files if files is not None else content_files(root):
        data = p.read_bytes()
        h.update(p.relative_to(root).as_posix().encode("utf-8") + b"\x00")
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def _read_text(p: Path, rel: str, limits: Limits, reasons: list[Reason]) -> str | None:
    try:
        size = p.stat().st_size
        if size > limits.max_file_bytes:
            reasons.append(Reason("too_large", rel, f"{size} bytes > limit {limits.max_file_bytes}"))
            return None
        data = p.read_bytes()
    except OSError as e:
        reasons.append(Reason("unreadable", rel, f"cannot read: {e.strerror or e}"))
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        reasons.append(Reason("not_utf8", rel, f"not UTF-8 at byte {e.start}"))
        return None


def _jsonl(text: str, rel: str, reasons: list[Reason]) -> list[tuple[int, dict]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            reasons.append(Reason("bad_json", f"{rel}:{n}", f"invalid JSON: {e.msg}"))
            continue
        if not isinstance(obj, dict):
            reasons.append(Reason("bad_json", f"{rel}:{n}", "each line must be a JSON object"))
            continue
        rows.append((n, obj))
    return rows


def _str_field(obj: dict, key: str, where: str, reasons: list[Reason], required: bool = True) -> str | None:
    v = obj.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip():
        reasons.append(Reason("missing_field", where, f"field {key!r} must be a non-empty string"))
        return None
    return v


def scan(root: Path, limits: Limits = DEFAULT_LIMITS) -> tuple[Corpus | None, list[Reason]]:
    """Load a corpus folder, collecting every problem. Returns (corpus or None, reasons)."""
    root = Path(root)
    reasons: list[Reason] = []
    if not root.exists() and not root.is_symlink():
        return None, [Reason("not_found", str(root), "no such file or folder")]
    if root.is_symlink() or not root.is_dir():
        return None, [Reason("not_a_folder", root.name, "a corpus is a folder or a .tar.gz/.zip archive")]
    files = content_files(root)
    if len(files) > limits.max_files:
        return None, [Reason("too_many_files", ".", f"{len(files)} files > limit {limits.max_files}")]
    docs: list[Document] = []
    raw_qa: list[tuple[str, dict]] = []
    raw_tasks: list[tuple[str, dict]] = []
    spec_text: str | None = None
    total = 0
    for p in files:
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            reasons.append(Reason("symlink", rel, f"symbolic link (to {os.readlink(p)!r}) is not allowed"))
            continue
        if not p.is_file():
            reasons.append(Reason("special_file", rel, "not a regular file"))
            continue
        total += p.stat().st_size
        suffix = p.suffix.lower()
        if rel == QA_FILE:
            text = _read_text(p, rel, limits, reasons)
            raw_qa += [(f"{rel}:{n}", o) for n, o in _jsonl(text, rel, reasons)] if text is not None else []
        elif rel == TOOLS_FILE:
            spec_text = _read_text(p, rel, limits, reasons)
        elif rel == TOOL_TASKS_FILE:
            text = _read_text(p, rel, limits, reasons)
            raw_tasks += [(f"{rel}:{n}", o) for n, o in _jsonl(text, rel, reasons)] if text is not None else []
        elif suffix in DOC_SUFFIXES:
            text = _read_text(p, rel, limits, reasons)
            if text is None:
                continue
            doc_id = rel[: -len(p.suffix)]
            first = text.lstrip().splitlines()[0] if text.strip() else ""
            title = first.lstrip("#").strip() if first.startswith("#") else p.stem
            docs.append(Document(id=doc_id, title=title, text=text.strip(), source=rel))
        elif suffix == ".jsonl":
            text = _read_text(p, rel, limits, reasons)
            for n, obj in _jsonl(text, rel, reasons) if text is not None else []:
                where = f"{rel}:{n}"
                vals = [_str_field(obj, k, where, reasons, required=k != "title") for k in ("id", "text", "title")]
                if vals[0] is not None and vals[1] is not None:
                    docs.append(Document(id=vals[0].strip(), title=(vals[2] or vals[0]).strip(),
                                         text=vals[1].strip(), source=where))
        else:
            reasons.append(Reason("unsupported_file", rel, f"expected .md, .txt, .jsonl documents, {QA_FILE}, "
                                                          f"{TOOLS_FILE} or {TOOL_TASKS_FILE}"))
    if total > limits.max_total_bytes:
        reasons.append(Reason("too_large", ".", f"{total} bytes > limit {limits.max_total_bytes}"))

    # documents: non-empty, bounded, unique by id and by content
    by_id: dict[str, Document] = {}
    by_sha: dict[str, Document] = {}
    for d in docs:
        if not d.text:
            reasons.append(Reason("empty_document", d.source, f"document {d.id!r} has no text"))
            continue
        if len(d.text) > limits.max_doc_chars:
            reasons.append(Reason("too_large", d.source, f"{len(d.text)} characters > limit {limits.max_doc_chars}"))
        if d.id in by_id:
            reasons.append(Reason("duplicate_document", d.source, f"id {d.id!r} also in {by_id[d.id].source}"))
        elif d.sha256 in by_sha:
            reasons.append(Reason("duplicate_document", d.source,
                                  f"same text as {by_sha[d.sha256].source} (id {by_sha[d.sha256].id!r})"))
        else:
            by_id[d.id], by_sha[d.sha256] = d, d
    if not docs and not any(r.code in {"not_utf8", "unreadable", "too_large", "bad_json"} for r in reasons):
        reasons.append(Reason("no_documents", ".", "no .md, .txt or .jsonl documents found"))

    # QA: well-formed, pointing at known documents, unique
    qa: list[QAPair] = []
    seen: dict[str, str] = {}
    for where, obj in raw_qa:
        q = _str_field(obj, "question", where, reasons)
        a = _str_field(obj, "answer", where, reasons)
        doc_id = obj.get("doc_id")
        if doc_id is not None and not isinstance(doc_id, str):
            reasons.append(Reason("missing_field", where, "field 'doc_id' must be a string when given"))
            continue
        if doc_id is not None and doc_id not in by_id:
            reasons.append(Reason("unknown_doc_id", where, f"doc_id {doc_id!r} names no document"))
            continue
        if q is None or a is None:
            continue
        pair = QAPair(id=str(obj.get("id") or qa_id(q, a, doc_id)), question=q.strip(), answer=a.strip(),
                      doc_id=doc_id)
        if pair.id in seen:
            reasons.append(Reason("duplicate_qa", where, f"QA id {pair.id!r} also at {seen[pair.id]}"))
            continue
        seen[pair.id] = where
        qa.append(pair)
    if len(qa) > limits.max_qa:
        reasons.append(Reason("too_large", QA_FILE, f"{len(qa)} QA pairs > limit {limits.max_qa}"))

    # tool corpus: a valid spec, and tasks whose own call succeeds and whose answer is in its observation
    spec = None
    if spec_text is not None:
        spec, problems = parse_tool_spec(spec_text)
        reasons += [Reason("bad_tool_spec", where, why) for where, why in problems]
    tool_tasks, problems = parse_tool_tasks(raw_tasks, spec) if raw_tasks else ([], [])
    reasons += [Reason("bad_tool_task", where, why) for where, why in problems]
    if reasons:
        return None, reasons
    corpus = Corpus(root=root, id=corpus_hash(root, files), documents=list(by_id.values()), qa=qa,
                    meta=read_meta(root), tools=spec, tool_tasks=tool_tasks)
    return corpus, []


def validate(path: Path, limits: Limits = DEFAULT_LIMITS) -> list[Reason]:
    """All reasons why `path` (folder or archive) is not a usable corpus; empty list = valid."""
    path = Path(path)
    if is_archive(path):
        with tempfile.TemporaryDirectory(prefix="past-corpus-") as tmp:
            reasons = extract_archive(path, Path(tmp) / "c", limits)
            return reasons or scan(Path(tmp) / "c", limits)[1]
    return scan(path, limits)[1]


def load_corpus(path: Path, limits: Limits = DEFAULT_LIMITS) -> Corpus:
    """A valid corpus folder -> `Corpus`; raises `CorpusError` with every reason otherwise.

    Archives must be unpacked first with `materialize` (so the documents have a stable home on disk).
    """
    path = Path(path)
    if is_archive(path):
        raise CorpusError(path, [Reason("is_archive", path.name, "unpack it first (`materialize`)")])
    corpus, reasons = scan(path, limits)
    if reasons:
        raise CorpusError(path, reasons)
    assert corpus is not None
    return corpus


def materialize(path: Path, dest: Path, limits: Limits = DEFAULT_LIMITS) -> Path:
    """Safely unpack an archive corpus into the new folder `dest` (atomically); folders are returned as is."""
    path, dest = Path(path), Path(dest)
    if not is_archive(path):
        return path
    tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}-{time.monotonic_ns()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    reasons = extract_archive(path, tmp, limits)
    if reasons:
        raise CorpusError(path, reasons)
    os.replace(tmp, dest)
    return dest


# --- metadata -------------------------------------------------------------------------------------------
def read_meta(root: Path) -> dict:
    p = Path(root) / META_FILE
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return {}


def write_meta(root: Path, source: str, name: str | None = None, arrived: float | None = None) -> dict:
    """Record name, arrival time, source and content id beside the documents (first arrival wins)."""
    root = Path(root)
    meta = read_meta(root)
    if meta.get("corpus_id"):
        return meta
    meta = {"name": name or root.name, "arrived": arrived if arrived is not None else time.time(),
            "source": source, "corpus_id": corpus_hash(root)}
    atomic_write(root / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old file or the new one, never half of it."""
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- quarantine -----------------------------------------------------------------------------------------
def quarantine(path: Path, reasons: list[Reason], settings) -> Path:
    """MOVE a bad corpus to `<home>/quarantine/<name>-<ts>/<name>` with `reasons.json` beside it.

    The folder is assembled under a hidden temp name inside the quarantine, then renamed, so a reader never
    sees a quarantine entry without its reasons; if we die half-way, the corpus sits in that temp folder
    (never lost). Nothing but `path` is touched.
    """
    path = Path(path)
    qroot = Path(settings.quarantine)
    qroot.mkdir(parents=True, exist_ok=True)
    ts = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    final = qroot / f"{path.name}-{ts}"
    n = 1
    while final.exists():
        final = qroot / f"{path.name}-{ts}-{n}"
        n += 1
    tmp = qroot / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    record = {"corpus": path.name, "original_path": str(path.resolve()), "quarantined": time.time(),
              "reasons": [asdict(r) for r in reasons]}
    (tmp / "reasons.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    try:
        os.rename(path, tmp / path.name)  # same filesystem: atomic
    except OSError:
        shutil.move(str(path), str(tmp / path.name))  # another filesystem: copy, then delete
    os.rename(tmp, final)
    return final


# --- deterministic QA splits ----------------------------------------------------------------------------
def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).hexdigest()


SPLIT_BY = ("document", "question", "fact")


def fact_key(p: QAPair) -> str:
    """What a question asks about: its document and its normalised answer. Two questions with the same key
    ask the same fact in different words (the teacher writes several per fact, from different sentences)."""
    from past.scoring import normalize

    return f"{p.doc_id}\x00{normalize(p.answer)}"


def split_qa(qa: list[QAPair], eval_fraction: float = 0.2, seed: int = 0,
             by: str = "document") -> tuple[list[QAPair], list[QAPair]]:
    """Split QA into (train, eval). Three held-out units:

    - `document`: every QA of one document lands on the same side. The strict test: held-out documents were
      only read in stage 1 (at 135M almost nothing read only in stage 1 is recalled: docs/BENCHMARKS.md).
    - `question`: single questions; a held-out question's fact may or may not be asked by a training question.
    - `fact`: paraphrase hold-out. Questions are grouped by the fact they ask (`fact_key`); a held-out question
      is always one whose fact keeps at least one *other* question, from another sentence, on the training
      side, and every fact of the corpus is trained. The gate then measures "answers a question about the
      new documents that it was not trained on, in words it was not trained on" - the support-bot test and
      SEAL's setting (train on teacher rewrites that cover the passage, test on other questions about it) -
      not recall of facts that no training example states. Facts asked only once are never held out, so
      the held-out set can be smaller than `eval_fraction` asks for (the gate's `gate_min_new_items` refuses
      a set too small to decide on, with the reason).

    Groups (documents, single questions or, for `fact`, the held-out candidates) are ordered by
    sha256(seed, key) and the first round(n * eval_fraction) go to eval, at least one and at most n - 1 when
    there are 2+ groups. A group's side depends only on its key and the seed, so adding documents rarely
    reshuffles the others.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction {eval_fraction} must be in [0, 1)")
    if by not in SPLIT_BY:
        raise ValueError(f"split by {by!r}: expected one of {SPLIT_BY}")
    if by == "fact":
        return _split_by_fact(qa, eval_fraction, seed)
    groups: dict[str, list[QAPair]] = {}
    for p in qa:
        groups.setdefault(f"doc:{p.doc_id}" if p.doc_id is not None and by == "document" else f"qa:{p.id}",
                          []).append(p)
    keys = sorted(groups, key=lambda k: _rank(seed, k))
    n_eval = round(len(keys) * eval_fraction)
    if eval_fraction > 0 and len(keys) >= 2:
        n_eval = min(max(n_eval, 1), len(keys) - 1)
    eval_keys = set(keys[:n_eval])
    side = {id(p): k in eval_keys for k, ps in groups.items() for p in ps}
    return [p for p in qa if not side[id(p)]], [p for p in qa if side[id(p)]]


def _split_by_fact(qa: list[QAPair], eval_fraction: float, seed: int) -> tuple[list[QAPair], list[QAPair]]:
    facts: dict[str, list[QAPair]] = {}
    for p in qa:
        facts.setdefault(fact_key(p), []).append(p)
    # in each fact, the first question by rank stays on the training side; the others may be held out
    candidates = [p for ps in facts.values() for p in sorted(ps, key=lambda p: _rank(seed, f"qa:{p.id}"))[1:]]
    candidates.sort(key=lambda p: _rank(seed, f"qa:{p.id}"))
    n_eval = min(round(len(qa) * eval_fraction), len(candidates))
    if eval_fraction > 0 and candidates:
        n_eval = max(n_eval, 1)
    held = {id(p) for p in candidates[:n_eval]}
    return [p for p in qa if id(p) not in held], [p for p in qa if id(p) in held]


def split_record(p: QAPair, corpus_id: str) -> dict:
    """The exact split-file schema the eval gate reads: id, question, answer, doc_id, corpus_id."""
    return {"id": p.id, "question": p.question, "answer": p.answer, "doc_id": p.doc_id, "corpus_id": corpus_id}


def write_splits(corpus: Corpus, out_dir: Path, qa: list[QAPair] | None = None, eval_fraction: float = 0.2,
                 seed: int = 0, by: str = "document") -> dict:
    """Write `train.jsonl` and `eval.jsonl` (one `split_record` per line) + `split.json`, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, held = split_qa(corpus.qa if qa is None else qa, eval_fraction, seed, by)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", held)):
        atomic_write(out_dir / name, "".join(json.dumps(split_record(p, corpus.id), ensure_ascii=False) + "\n"
                                              for p in rows))
    summary = {"corpus_id": corpus.id, "seed": seed, "eval_fraction": eval_fraction, "by": by, "train": len(train),
               "eval": len(held), "eval_facts_also_trained": _facts_also_trained(train, held), "eval_doc_ids": sorted({p.doc_id for p in held if p.doc_id is not None})}
    atomic_write(out_dir / "split.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _facts_also_trained(train: list[QAPair], held: list[QAPair]) -> int:
    """Held-out questions whose fact a training question also asks (all of them under `fact`)."""
    trained = {fact_key(p) for p in train}
    return sum(fact_key(p) in trained for p in held)


def read_qa_jsonl(path: Path) -> list[QAPair]:
    """QA pairs from a split file or a generated `qa.jsonl` (fields question, answer, doc_id?, id?)."""
    path = Path(path)
    reasons: list[Reason] = []
    text = _read_text(path, path.name, Limits(max_file_bytes=DEFAULT_LIMITS.max_total_bytes), reasons)
    rows = _jsonl(text, path.name, reasons) if text is not None else []
    out = []
    for n, o in rows:
        q, a = _str_field(o, "question", f"{path.name}:{n}", reasons), _str_field(o, "answer", f"{path.name}:{n}", reasons)
        if q is not None and a is not None:
            out.append(QAPair(id=str(o.get("id") or qa_id(q, a, o.get("doc_id"))), question=q, answer=a,
                              doc_id=o.get("doc_id")))
    if reasons:
        raise CorpusError(path, reasons)
    return out
