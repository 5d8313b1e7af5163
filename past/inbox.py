"""The inbox: corpora arrive as folders or archives, are claimed exactly once, and tracked until adapted.

One watcher pass (serialised by a lock file, so two watchers never interleave):

  1. recover: corpora a killed pass left in `<home>/staging/` go back through the claim; ledger entries left
     `claimed` (never submitted) are handed out again. Nothing is lost, and since adaptation is idempotent per
     corpus id, handing out twice never runs twice.
  2. for each inbox entry that is *complete* (a `.ready` marker inside a folder, or nothing in it modified
     for `settle_s` seconds), claim it with an atomic rename into staging, unpack archives, validate (bad
     -> quarantine with reasons), hash the content (corpus id), and rename it to `<home>/corpora/<id>/`.
     Content already seen goes to `<home>/duplicates/` instead (kept, never re-run).
  3. the ledger (`<home>/ledger/<id>.json`, created with O_EXCL) records each corpus's status:
     claimed -> (submitted) -> running -> promoted | rejected | failed. A `running` entry whose process on
     this host is gone (a killed inline run) is handed out again.
  4. recovery of deployment runs (`recovery_plan`, fed the runs' states by the caller, which knows the
     orchestrator): a corpus whose run ended (crashed, failed, cancelled) without recording an outcome is
     handed out again, at most `max_attempts` times in all; then it is marked `failed` with the reason, and
     a cancelled run marks it `cancelled`. Either way it never sits `submitted` forever.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from past.corpus import META_FILE, CorpusError, corpus_hash, is_archive, materialize, quarantine, validate, write_meta
from past.errors import PastError

READY_MARKER = ".ready"
_PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload")


class InboxError(PastError):
    """The inbox or ledger cannot be used (another watcher holds the lock, unreadable ledger entry)."""


@dataclass
class Claim:
    kind: str  # new | duplicate | quarantined
    name: str
    corpus_id: str | None = None
    path: Path | None = None  # where the corpus now lives
    reasons: list[str] = field(default_factory=list)


def _dirs(home: Path) -> dict[str, Path]:
    d = {k: home / k for k in ("inbox", "staging", "corpora", "duplicates", "ledger", "quarantine")}
    for p in d.values():
        p.mkdir(parents=True, exist_ok=True)
    return d


@contextmanager
def watch_lock(home: Path, wait_s: float = 0.0) -> Iterator[None]:
    """Exclusive lock for one watcher pass; raises InboxError if another pass holds it past `wait_s`."""
    from filelock import FileLock, Timeout

    home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(home / ".watch.lock", timeout=wait_s)  # timeout 0: exactly one attempt
    try:
        lock.acquire()
    except Timeout:
        raise InboxError("another watcher pass is running (lock held on .watch.lock)") from None
    try:
        yield
    finally:
        lock.release()


def _newest_mtime(entry: Path) -> float:
    if entry.is_file():
        return entry.stat().st_mtime
    return max([entry.stat().st_mtime] + [p.lstat().st_mtime for p in entry.rglob("*")])


def is_complete(entry: Path, settle_s: float, now: float | None = None) -> bool:
    """Done being written: a `.ready` marker (folders), else no modification for `settle_s` seconds."""
    if entry.name.endswith(_PARTIAL_SUFFIXES):
        return False
    if entry.is_dir() and (entry / READY_MARKER).exists():
        return True
    return (now if now is not None else time.time()) - _newest_mtime(entry) >= settle_s


def inbox_entries(inbox: Path) -> list[Path]:
    """Candidate corpora in the inbox, oldest first; hidden names are the producers' temp files."""
    entries = [p for p in inbox.iterdir() if not p.name.startswith(".")] if inbox.is_dir() else []
    return sorted(entries, key=lambda p: (p.stat().st_mtime, p.name))


# --- ledger -----------------------------------------------------------------------------------------------
def ledger_path(home: Path, corpus_id: str) -> Path:
    return home / "ledger" / f"{corpus_id}.json"


def read_ledger(home: Path, corpus_id: str) -> dict | None:
    p = ledger_path(home, corpus_id)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise InboxError(f"{p}: unreadable ledger entry ({e})") from None


def all_ledger(home: Path) -> list[dict]:
    d = home / "ledger"
    return sorted((json.loads(p.read_text()) for p in d.glob("*.json")), key=lambda r: r.get("arrived", 0)) \
        if d.is_dir() else []


def update_ledger(home: Path, corpus_id: str, **fields: object) -> dict:
    """Merge fields into a ledger entry (atomic replace); appends status changes to its history."""
    rec = read_ledger(home, corpus_id) or {"corpus_id": corpus_id, "history": []}
    if "status" in fields and fields["status"] != rec.get("status"):
        rec["history"].append({"status": fields["status"], "at": time.time()})
    rec.update(fields)
    p = ledger_path(home, corpus_id)
    p.parent.mkdir(parents=True, exist_ok=True)  # corpora adapted by path (backfill) were never claimed
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=2, default=str))
    os.replace(tmp, p)
    return rec


def _create_ledger(home: Path, corpus_id: str, rec: dict) -> bool:
    """Create the entry only if it does not exist (O_EXCL): the one place a corpus id is first accepted."""
    p = ledger_path(home, corpus_id)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({**rec, "history": [{"status": rec["status"], "at": time.time()}]}, f, indent=2, default=str)
    return True


# --- claiming ---------------------------------------------------------------------------------------------
def _unique(parent: Path, name: str) -> Path:
    ts = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    cand, n = parent / f"{ts}-{name}", 1  # keep the name's suffix last: `.tar.gz` must stay an archive
    while cand.exists():
        cand, n = parent / f"{ts}-{n}-{name}", n + 1
    return cand


def claim_entry(entry: Path, home: Path, settings) -> Claim | None:
    """Claim one inbox (or staging) entry. None if it vanished (someone else took it)."""
    d = _dirs(home)
    name = entry.name
    if entry.parent.parent != d["staging"]:
        slot = _unique(d["staging"], "claim")  # staging/<ts>-claim/<original name>: names (and suffixes) survive
        slot.mkdir()
        staged = slot / name
        try:
            os.rename(entry, staged)  # the claim: atomic, exactly one claimer wins
        except FileNotFoundError:
            slot.rmdir()
            return None
    else:
        staged = entry
    arrived = time.time()
    try:
        return _process_staged(staged, name, entry, home, d, settings, arrived)
    finally:
        if staged.parent.exists() and not any(staged.parent.iterdir()):
            staged.parent.rmdir()


def _process_staged(staged: Path, name: str, entry: Path, home: Path, d: dict, settings, arrived: float) -> Claim:
    """Unpack, validate, hash and file a staged entry. Every step is safe to redo after a crash."""
    folder = staged
    if is_archive(staged):
        try:
            folder = materialize(staged, staged.with_name(staged.name + ".d"))
        except CorpusError as e:
            q = quarantine(staged, e.reasons, settings)
            return Claim("quarantined", name, path=q, reasons=[str(r) for r in e.reasons])
    (folder / READY_MARKER).unlink(missing_ok=True)
    reasons = validate(folder)
    if reasons:
        if folder != staged:
            shutil.rmtree(folder, ignore_errors=True)  # quarantine keeps the original archive, not our unpacking
        qdir = quarantine(staged, reasons, settings)
        return Claim("quarantined", name, path=qdir, reasons=[str(r) for r in reasons])

    cid = corpus_hash(folder)
    final = d["corpora"] / cid
    if final.exists():  # this content was accepted before
        dup = _unique(d["duplicates"], name)
        os.rename(folder, dup)
        if folder != staged:
            staged.unlink(missing_ok=True)
        return Claim("duplicate", name, corpus_id=cid, path=dup)
    write_meta(folder, source=str(entry), name=name.split(".")[0], arrived=arrived)
    # Ledger first, then the rename: a crash in between leaves a ledger entry whose folder is still in staging,
    # and the recovery pass lands here again with the same id and finishes the move.
    _create_ledger(home, cid, {"corpus_id": cid, "name": name, "path": str(final), "status": "claimed",
                               "arrived": arrived})
    os.rename(folder, final)
    if folder != staged:
        staged.unlink(missing_ok=True)  # the archive itself; its content now lives in corpora/<id>
    return Claim("new", name, corpus_id=cid, path=final)


def scan_inbox(settings, settle_s: float = 10.0, now: float | None = None) -> tuple[list[Claim], list[dict]]:
    """One watcher pass: (claims made now, ledger entries to hand to adaptation). Caller holds watch_lock."""
    home = Path(settings.home)
    d = _dirs(home)
    claims: list[Claim] = []
    for leftover in sorted(p for slot in d["staging"].iterdir() for p in slot.iterdir()):
        # a killed pass left these: finish claiming them
        if leftover.name.endswith(".d") or leftover.name.startswith(".tmp-"):
            shutil.rmtree(leftover, ignore_errors=True)  # half-unpacked archive: the archive itself is still here
            continue
        if (c := claim_entry(leftover, home, settings)) is not None:
            claims.append(c)
    for slot in d["staging"].iterdir():
        if slot.is_dir() and not any(slot.iterdir()):
            slot.rmdir()
    for entry in inbox_entries(d["inbox"]):
        if is_complete(entry, settle_s, now) and (c := claim_entry(entry, home, settings)) is not None:
            claims.append(c)
    # runs started as deployments (flow_run_id) are recovered from their run's state: recovery_plan
    to_submit = [r for r in all_ledger(home)
                 if r.get("status") == "claimed" or (orphaned(r) and not r.get("flow_run_id"))]
    return claims, to_submit


def orphaned(rec: dict) -> bool:
    """A corpus marked `running` by a process on this host that no longer exists (a killed inline run)."""
    if rec.get("status") != "running" or rec.get("host") != socket.gethostname() or not rec.get("pid"):
        return False
    return not pid_alive(int(rec["pid"]))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


UNFINISHED = ("submitted", "running")  # the ledger says a run owns the corpus, no outcome recorded yet


@dataclass
class Recovery:
    resubmit: list[dict] = field(default_factory=list)  # ledger entries to hand out again (attempts += 1)
    give_up: list[dict] = field(default_factory=list)  # crashed max_attempts times: mark failed, tell someone
    cancelled: list[dict] = field(default_factory=list)  # a person cancelled the run: mark cancelled


def recovery_plan(records: list[dict], run_states: dict[str, str | None], max_attempts: int) -> Recovery:
    """Which unfinished corpora lost their run. `run_states`: flow_run_id -> state type (COMPLETED, RUNNING,
    CRASHED, ...; None = the orchestrator has no such run). A run still scheduled/pending/running owns its
    corpus, unless it is RUNNING with its recorded process gone from this host; a COMPLETED run whose ledger is unfinished ended on an older path (e.g. a cached result) and is
    left alone - the ledger is only rewritten by adapt itself."""
    plan = Recovery()
    for rec in records:
        run_id = rec.get("flow_run_id")
        if rec.get("status") not in UNFINISHED or not run_id or run_id not in run_states:
            continue
        state = run_states[run_id]
        if state == "CANCELLED":
            plan.cancelled.append(rec)
        elif state in ("CRASHED", "FAILED", None) or (state == "RUNNING" and orphaned(rec)):
            # RUNNING with its process gone on this host: a killed worker, nobody left to report the crash
            (plan.resubmit if int(rec.get("attempts", 1)) < max_attempts else plan.give_up).append(rec)
    return plan


def corpus_dir(home: Path, corpus_id: str) -> Path:
    p = Path(home) / "corpora" / corpus_id
    if not (p / META_FILE).exists():
        raise InboxError(f"corpus {corpus_id} is not in {p.parent}")
    return p
