"""The inbox claims each corpus exactly once, loses none, and survives a killed watcher."""

from __future__ import annotations

import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from past.config import load_settings
from past.inbox import (READY_MARKER, InboxError, claim_entry, read_ledger, scan_inbox, update_ledger,
                        watch_lock)


def corpus(root: Path, tag: str) -> Path:
    root.mkdir(parents=True)
    (root / "doc.md").write_text(f"# Doc {tag}\nThe widget {tag} costs {len(tag)} credits.\n")
    (root / "qa.jsonl").write_text(json.dumps({"question": f"Cost of widget {tag}?", "answer": f"{len(tag)} credits",
                                               "doc_id": "doc"}) + "\n")
    return root


def old(path: Path, age: float = 60) -> Path:
    t = time.time() - age
    for p in [path, *path.rglob("*")]:
        os.utime(p, (t, t))
    return path


@pytest.fixture()
def settings():
    return load_settings()


def tree(home: Path) -> set[str]:
    return {p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file() and "ledger" not in p.parts}


def test_two_corpora_landing_together_are_both_claimed_once(settings) -> None:
    inbox = settings.home / "inbox"
    old(corpus(inbox / "a", "alpha"))
    old(corpus(inbox / "b", "beta"))
    claims, todo = scan_inbox(settings, settle_s=10)
    assert sorted(c.kind for c in claims) == ["new", "new"]
    ids = {c.corpus_id for c in claims}
    assert len(ids) == 2 and {r["corpus_id"] for r in todo} == ids
    assert not list(inbox.iterdir()), "claimed corpora leave the inbox"
    for cid in ids:
        assert (settings.home / "corpora" / cid / "doc.md").exists()
        assert read_ledger(settings.home, cid)["status"] == "claimed"
    claims2, todo2 = scan_inbox(settings, settle_s=10)
    assert claims2 == [] and {r["corpus_id"] for r in todo2} == ids, "unsubmitted corpora are handed out again"
    for cid in ids:
        update_ledger(settings.home, cid, status="submitted")
    assert scan_inbox(settings, settle_s=10) == ([], [])


def test_duplicate_content_is_kept_but_not_rerun(settings) -> None:
    inbox = settings.home / "inbox"
    old(corpus(inbox / "first", "same"))
    (c1,), _ = scan_inbox(settings, settle_s=10)
    old(corpus(inbox / "again", "same"))
    (c2,), todo = scan_inbox(settings, settle_s=10)
    assert c2.kind == "duplicate" and c2.corpus_id == c1.corpus_id
    assert (c2.path / "doc.md").exists() and c2.path.parent.name == "duplicates"
    assert [r["corpus_id"] for r in todo] == [c1.corpus_id]


def test_corpus_still_being_written_waits(settings) -> None:
    inbox = settings.home / "inbox"
    fresh = corpus(inbox / "fresh", "x")  # just written: not settled
    old(corpus(inbox / "upload.part", "y"))  # partial upload name: never claimed
    assert scan_inbox(settings, settle_s=30) == ([], [])
    (fresh / READY_MARKER).touch()  # the producer says it is done
    claims, _ = scan_inbox(settings, settle_s=30)
    assert [c.name for c in claims] == ["fresh"]
    assert not (settings.home / "corpora" / claims[0].corpus_id / READY_MARKER).exists()
    assert (inbox / "upload.part").exists()


def test_bad_corpus_is_quarantined_and_nothing_else_moves(settings) -> None:
    inbox = settings.home / "inbox"
    good = old(corpus(inbox / "good", "fine"))
    bad = inbox / "bad"
    bad.mkdir()
    (bad / "doc.md").write_bytes(b"\xff\xfe not utf-8")
    old(bad)
    claims, _ = scan_inbox(settings, settle_s=10)
    kinds = {c.name: c for c in claims}
    assert kinds["bad"].kind == "quarantined" and kinds["bad"].reasons
    assert kinds["good"].kind == "new"
    qdir = kinds["bad"].path
    assert (qdir / "bad" / "doc.md").exists() and json.loads((qdir / "reasons.json").read_text())["reasons"]
    assert (settings.home / "corpora" / kinds["good"].corpus_id / "doc.md").read_text() == (
        "# Doc fine\nThe widget fine costs 4 credits.\n")


def test_archive_corpus_is_unpacked_and_claimed(settings, tmp_path: Path) -> None:
    src = corpus(tmp_path / "arch", "zipped")
    inbox = settings.home / "inbox"
    inbox.mkdir(parents=True)
    with tarfile.open(inbox / "drop.tar.gz", "w:gz") as tf:
        for p in src.iterdir():
            tf.add(p, arcname=p.name)
    old(inbox / "drop.tar.gz")
    (c,), _ = scan_inbox(settings, settle_s=10)
    assert c.kind == "new" and (c.path / "doc.md").exists()
    assert not any((settings.home / "staging").iterdir())


def test_killed_watcher_leftovers_are_recovered(settings) -> None:
    home = settings.home
    staging = home / "staging"
    corpus(staging / "20260101T000000-claim" / "mid-claim", "orphan")  # a pass died right after its rename
    claims, todo = scan_inbox(settings, settle_s=10)
    assert [c.kind for c in claims] == ["new"] and len(todo) == 1
    assert not any(staging.iterdir())


def test_claim_race_has_one_winner(settings) -> None:
    inbox = settings.home / "inbox"
    entry = old(corpus(inbox / "raced", "r"))
    first = claim_entry(entry, settings.home, settings)
    assert first is not None and first.kind == "new"
    assert claim_entry(entry, settings.home, settings) is None, "the loser of the rename gets nothing"


def test_watch_lock_is_exclusive(settings) -> None:
    with watch_lock(settings.home):
        with pytest.raises(InboxError, match="another watcher"):
            with watch_lock(settings.home):
                pass
    with watch_lock(settings.home):  # released
        pass


def test_crash_between_ledger_and_move_is_finished_not_duplicated(settings, monkeypatch) -> None:
    import past.inbox as inbox_mod

    inbox = settings.home / "inbox"
    old(corpus(inbox / "c", "crashy"))
    real_rename = os.rename

    def dying_rename(src, dst):
        if Path(dst).parent.name == "corpora":
            raise KeyboardInterrupt("watcher killed")
        return real_rename(src, dst)

    monkeypatch.setattr(inbox_mod.os, "rename", dying_rename)
    with pytest.raises(KeyboardInterrupt):
        scan_inbox(settings, settle_s=10)
    monkeypatch.setattr(inbox_mod.os, "rename", real_rename)
    claims, todo = scan_inbox(settings, settle_s=10)
    assert [c.kind for c in claims] == ["new"] and len(todo) == 1
    assert (settings.home / "corpora" / claims[0].corpus_id / "doc.md").exists()
    assert not any((settings.home / "duplicates").iterdir())


def test_running_entry_of_a_dead_process_is_handed_out_again(settings) -> None:
    import socket
    import subprocess

    inbox = settings.home / "inbox"
    old(corpus(inbox / "x", "orphan-run"))
    (c,), _ = scan_inbox(settings, settle_s=10)
    dead = subprocess.Popen(["true"])
    dead.wait()
    update_ledger(settings.home, c.corpus_id, status="running", pid=dead.pid, host=socket.gethostname())
    assert [r["corpus_id"] for r in scan_inbox(settings, settle_s=10)[1]] == [c.corpus_id]
    update_ledger(settings.home, c.corpus_id, status="running", pid=os.getpid(), host=socket.gethostname())
    assert scan_inbox(settings, settle_s=10)[1] == [], "a live run is left alone"


def test_recovery_plan_hands_out_crashed_runs_until_attempts_run_out() -> None:
    """#16: a corpus whose run crashed stayed `submitted` forever. Each ended-without-outcome run is handed
    out again; the attempt that uses up `max_attempts` gives up; a cancelled run is recorded, not retried."""
    import os
    import socket

    from past.inbox import recovery_plan

    dead_pid = 2 ** 22 + 12345  # above the default pid_max: no such process
    recs = [
        {"corpus_id": "crashed", "status": "submitted", "flow_run_id": "r1", "attempts": 1},
        {"corpus_id": "failed-hard", "status": "running", "flow_run_id": "r2", "attempts": 3},
        {"corpus_id": "cancelled", "status": "submitted", "flow_run_id": "r3"},
        {"corpus_id": "vanished", "status": "submitted", "flow_run_id": "r4", "attempts": 2},
        {"corpus_id": "zombie", "status": "running", "flow_run_id": "r5", "host": socket.gethostname(), "pid": dead_pid},
        {"corpus_id": "alive", "status": "running", "flow_run_id": "r6", "host": socket.gethostname(), "pid": os.getpid()},
        {"corpus_id": "pending", "status": "submitted", "flow_run_id": "r7"},
        {"corpus_id": "done", "status": "promoted", "flow_run_id": "r8"},
        {"corpus_id": "no-run-id", "status": "submitted"},
    ]
    states = {"r1": "CRASHED", "r2": "FAILED", "r3": "CANCELLED", "r4": None, "r5": "RUNNING", "r6": "RUNNING",
              "r7": "SCHEDULED", "r8": "CRASHED"}
    plan = recovery_plan(recs, states, max_attempts=3)
    assert [r["corpus_id"] for r in plan.resubmit] == ["crashed", "vanished", "zombie"]
    assert [r["corpus_id"] for r in plan.give_up] == ["failed-hard"]
    assert [r["corpus_id"] for r in plan.cancelled] == ["cancelled"]
    assert recovery_plan(recs, states, max_attempts=1).give_up[0]["corpus_id"] == "crashed"
