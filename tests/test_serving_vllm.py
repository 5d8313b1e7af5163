"""The gate against a REAL vLLM CPU server on the tiny model (one server start for the whole module).

Run heavy: `flock -x /tmp/past-cpu.lock .venv/bin/python -m pytest -q -m vllm tests/test_serving_vllm.py`.
Test order matters: the corrupt-model test runs before the shared server starts, and the half-way-failure
test runs last because it tears the shared server down."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from past.config import load_settings
from past.evaluation import Champion, EvalItem, answer_all, build_eval_set, run_gate
from past.serving import VLLMServer, health_ok

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

QA = [EvalItem(f"q{i}", q, a, "d0", "c1") for i, (q, a) in enumerate([
    ("What colour is the Zorblax flower?", "violet"), ("Who founded Quillmoor?", "Edda Varn"),
    ("In which year was the Tallow bridge built?", "1873"), ("What is the river in Quillmoor called?", "Sennet"),
])]


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid → (ppid, pgid, cmdline) for every live process, from /proc (no psutil needed)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] == "Z":  # zombies are dead, just not reaped yet
                continue
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out[int(d.name)] = (int(fields[1]), int(fields[2]), cmd)
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(pid: int) -> set[int]:
    table, found, frontier = _proc_table(), set(), {pid}
    while frontier:
        kids = {p for p, (pp, _, _) in table.items() if pp in frontier} - found
        found |= kids
        frontier = kids
    return found


def alive_in_group(pgid: int) -> set[int]:
    return {p for p, (_, g, _) in _proc_table().items() if g == pgid}


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = pids & set(_proc_table())
        if not left:
            return left
        time.sleep(0.2)
    return pids & set(_proc_table())


def settings_for(**kw):
    return load_settings(gate_max_tokens=16, gate_concurrency=4, gate_request_timeout_s=120, **kw)


def test_corrupt_model_fails_fast_with_log_tail(tiny_model_dir: Path, serve_python: Path, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "config.json").write_text("{ this is not json")
    s = settings_for(serve_python=serve_python)
    t0 = time.monotonic()
    rep = run_gate(bad, build_eval_set(QA), s, "corrupt/1", log=lambda m: None)
    took = time.monotonic() - t0
    d = rep.decision
    assert not d.passed and d.reason.startswith("candidate server failed: vLLM exited with code")
    assert "last log lines" in d.reason and len(d.reason.splitlines()) > 3  # the log tail explains why
    assert took < 180, f"start-up failure took {took:.0f}s to notice"
    assert not [c for _, _, c in _proc_table().values() if str(bad) in c], "a vLLM process outlived its failure"


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, serve_python: Path, tmp_path_factory: pytest.TempPathFactory):
    server = VLLMServer(tiny_model_dir, "tiny/1", python=serve_python, max_model_len=512, startup_timeout_s=400,
                        log_path=tmp_path_factory.mktemp("vllm") / "vllm.log")
    t0 = time.monotonic()
    ep = server.start()
    print(f"vLLM ready in {time.monotonic() - t0:.1f}s")
    try:
        yield server, ep
    finally:
        server.stop()


def test_gate_runs_through_real_server(served, tmp_path: Path) -> None:
    server, ep = served
    s = settings_for(serve_url=ep.base_url, gate_min_accuracy=0.0, gate_min_new_items=1, gate_margin=-1.0)
    items = build_eval_set(QA)  # + the general prompts
    rep = run_gate(None, items, s, "tiny/1", champion=Champion("tiny/1", url=ep.base_url), log=lambda m: None)
    assert rep.decision.passed, rep.decision.reason  # floor 0, same model as champion, a tie tolerated
    assert rep.decision.metrics["candidate_errors"] == 0 and rep.decision.metrics["champion_errors"] == 0
    assert all(isinstance(r.answer, str) and r.answer for r in rep.candidate)
    assert len(rep.champion) == len(items) and server.alive()
    data = json.loads(rep.write(tmp_path).read_text())
    assert len(data["items"]) == len(items) and "champion_answer" in data["items"][0]


def test_unknown_served_name_fails_closed(served) -> None:
    _, ep = served
    s = settings_for(serve_url=ep.base_url)
    rep = run_gate(None, build_eval_set(QA, include_general=False), s, "not-the-served-name", log=lambda m: None)
    assert not rep.decision.passed and "does not serve model 'not-the-served-name'" in rep.decision.reason


def test_server_is_shut_down_when_caller_fails_half_way(served) -> None:
    server, ep = served
    pgid = os.getpgid(server.proc.pid)
    procs = descendants(server.proc.pid) | {server.proc.pid}
    assert alive_in_group(pgid)
    s = settings_for()
    with pytest.raises(RuntimeError, match="half-way"):
        with contextlib.ExitStack() as stack:
            stack.push(server)  # the same __exit__ that `with VLLMServer(...)` runs on an exception
            got = answer_all(ep, QA[:2], s, progress=False)
            assert all(r.answer for r in got)
            raise RuntimeError("test failed half-way")
    assert not server.alive() and not health_ok(ep.base_url)
    assert not wait_gone(procs), "vLLM processes left behind"
    assert not alive_in_group(pgid), "process group still has members"
