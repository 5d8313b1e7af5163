"""Soak test of the production path (#16) through the real `past up`, with `past serve` beside it.

    past up (Prefect server + process worker + MLflow UI), past serve support-bot, a client polling the endpoint
    three corpora land in the inbox at once -> the watch deployment runs
    the worker is SIGKILLed mid-SFT (with its flow runs: a machine crash); `past up` notices and stops the rest
    `past up` again (a restarted Prefect server); watch passes reconcile what the crash stranded
    at the end: every corpus adapted exactly once or marked failed with a reason, one accelerator task at a time,
    no RUNNING MLflow run, no process left, and the champion endpoint never failed a request through a roll

The model is a tiny random one, so the gate's floors are opened (accuracy 0, margin -1, no training check):
what is tested is the orchestration, not the model. Minutes on 2 cores: marked `slow` and `soak`
(`make test-soak`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.soak]

BIN = Path(sys.executable).parent
TERMINAL = ("promoted", "rejected", "failed")


def wait_for(what: str, cond, timeout_s: float, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def drop(inbox: Path, name: str, tag: str) -> None:
    """A corpus arrives the documented way: staged under a dot-name, `.ready` inside, renamed into place."""
    from past.inbox import READY_MARKER

    tmp = write(inbox / f".{name}.uploading", tag)
    (tmp / READY_MARKER).touch()
    os.replace(tmp, inbox / name)


def write(tmp: Path, tag: str) -> Path:
    """Three one-fact documents and their QA."""
    tmp.mkdir(parents=True)
    qa = []
    for i in range(3):
        (tmp / f"d{i}.md").write_text(f"# {tag} unit {i}\nThe {tag} unit {i} costs {i + 20} credits.\n")
        qa.append({"question": f"How much does the {tag} unit {i} cost?", "answer": f"{i + 20} credits", "doc_id": f"d{i}"})
    (tmp / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))
    return tmp


class Poller(threading.Thread):
    """A support-bot client: one chat completion every 0.3 s; records (time, ok, served version)."""

    def __init__(self, url: str, name: str, home: Path) -> None:
        super().__init__(daemon=True)
        self.url, self.name, self.home = url, name, home
        self.log: list[tuple[float, bool, str | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import httpx

        from past.champion_serve import state_path

        while not self.stop.is_set():
            try:
                r = httpx.post(f"{self.url}/v1/chat/completions", timeout=30, json={
                    "model": self.name, "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]})
                ok = r.status_code == 200 and bool(r.json()["choices"])
            except Exception:  # noqa: BLE001 - every failure counts, whatever its kind
                ok = False
            try:
                version = json.loads(state_path(self.home, self.name).read_text())["version"]
            except (OSError, ValueError, KeyError):
                version = None
            self.log.append((time.monotonic(), ok, version))
            time.sleep(0.3)


def test_soak_past_up_crash_restart_and_champion_roll(tmp_path: Path, tiny_model_dir: Path, serve_python: Path) -> None:
    import psutil
    from mlflow import MlflowClient

    from past.config import load_settings
    from past.inbox import all_ledger
    from past.serving import free_port

    home = tmp_path / "home"
    pport, mport, sport = free_port(), free_port(), free_port()
    api = f"http://127.0.0.1:{pport}/api"
    env = {**os.environ, "PAST_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
           "PAST_BASE_MODEL": str(tiny_model_dir), "PAST_SERVE_PYTHON": str(serve_python),
           # a tiny random model: open the gate's floors (what is soaked is the orchestration)
           "PAST_GATE_MIN_ACCURACY": "0", "PAST_GATE_MARGIN": "-1", "PAST_GATE_RETENTION_TOLERANCE": "1",
           "PAST_GATE_MIN_NEW_ITEMS": "1", "PAST_GATE_MAX_ERROR_RATE": "1", "PAST_GATE_BASE_AS_CHAMPION": "false",
           "PAST_GATE_MAX_TOKENS": "8", "PAST_SFT_MIN_TRAIN_RECALL": "0", "PAST_SFT__EPOCHS_MEMORIZE": "1",
           "PAST_SFT__EPOCHS_QA": "1", "PAST_SFT__MIN_STEPS_QA": "8", "PAST_SFT__REPLAY_EXAMPLES": "2",
           "PAST_TEACHER_MIN_QA": "0", "PAST_MLFLOW_UI_URL": f"http://127.0.0.1:{mport}"}
    for k in ("PREFECT_API_URL", "PAST_MLFLOW_TRACKING_URI", "PAST_SERVE_URL", "PAST_CONFIG"):
        env.pop(k, None)
    s = load_settings(home=home)
    out_up = tmp_path / "up.out"

    def past_up() -> subprocess.Popen:
        log = open(out_up, "ab")
        p = subprocess.Popen([str(BIN / "past"), "up", "--prefect-port", str(pport), "--mlflow-port", str(mport)],
                             stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        n = out_up.read_text().count("drop corpora into")
        wait_for("past up", lambda: p.poll() is not None or out_up.read_text().count("drop corpora into") > n, 400)
        assert p.poll() is None, out_up.read_text()[-3000:]
        return p

    def run_watch() -> None:
        subprocess.run([str(BIN / "prefect"), "--no-prompt", "deployment", "run", "watch/watch"], env={
            **env, "PREFECT_API_URL": api}, check=True, capture_output=True, timeout=120)

    def ledger() -> dict[str, dict]:
        return {r["corpus_id"]: r for r in all_ledger(home)}

    serve = subprocess.Popen([str(BIN / "past"), "serve", "support-bot", "--port", str(sport), "--poll-s", "3",
                              "--drain-s", "5", "--retry-s", "20"], stdout=open(tmp_path / "serve.out", "ab"),
                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
    poller = Poller(f"http://127.0.0.1:{sport}", "support-bot", home)
    up = None
    try:
        up = past_up()
        poller.start()
        for i, tag in enumerate(("amber", "basalt", "cobalt")):
            drop(home / "inbox", f"soak-{i}", tag)
        run_watch()

        # the worker dies mid-SFT, taking its flow runs with it (kill -9: nothing gets to clean up)
        wait_for("an SFT in progress", lambda: list((home / "runs").glob("adapt-*/sft/stage1")), 600, 0.2)
        worker = next(p for p in psutil.Process(up.pid).children() if "worker" in " ".join(p.cmdline()))
        victims = [worker, *worker.children(recursive=True)]
        for p in victims:
            p.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=30)
        assert up.wait(timeout=120) == 1, "past up reports the dead worker and stops the rest"
        assert "a service exited" in out_up.read_text()
        stranded = [r for r in ledger().values() if r.get("status") not in TERMINAL]
        assert stranded, "the crash left corpora without an outcome"

        up = past_up()  # a fresh Prefect server process on the same database
        done = lambda: len(ledger()) == 3 and all(r.get("status") in TERMINAL for r in ledger().values())  # noqa: E731
        deadline = time.monotonic() + 1500
        while not done() and time.monotonic() < deadline:
            run_watch()  # reconcile: resubmit what the crash stranded (the schedule would do this every 2 min)
            time.sleep(45)
        assert done(), json.dumps(ledger(), indent=1, default=str)[-3000:]
        # the champion endpoint rolls to the last promoted version; let the poller see it
        client = MlflowClient(tracking_uri=s.mlflow_uri, registry_uri=s.mlflow_uri)
        champion = str(client.get_model_version_by_alias("support-bot", "champion").version)  # an int in MLflow 3
        wait_for("past serve on the last champion", lambda: any(v == champion and ok for _, ok, v in poller.log[-5:]),
                 300, 1)

        # a manual deployment run with a changed recipe field, the way an operator starts one (issue 13)
        manual = write(tmp_path / "manual-dune", "dune")
        subprocess.run([str(BIN / "prefect"), "--no-prompt", "deployment", "run", "adapt/adapt", "-p", f"corpus={manual}",
                        "-p", 'sft={"lora_r": 4}', "--watch", "--watch-timeout", "900"], env={**env, "PREFECT_API_URL": api},
                       check=True, capture_output=True, timeout=960)
    finally:
        poller.stop.set()
        for p in (up, serve):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (up, serve):
            if p is not None:
                try:
                    p.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)

    # the manual run trained with the rank it was given: in the MLflow run's params and the model's manifest
    from past.corpus import load_corpus
    from past.registry import source_path

    versions = client.search_model_versions("name='support-bot'")
    mine = [v for v in versions if v.tags.get("corpus_id") == load_corpus(manual).id]
    assert len(mine) == 1, [v.version for v in versions]
    assert client.get_run(mine[0].run_id).data.params["sft_recipe.lora_r"] == "4"
    assert json.loads((source_path(mine[0].source) / "past-model.json").read_text())["recipe"]["lora_r"] == 4
    assert ledger()[load_corpus(manual).id]["status"] in ("promoted", "rejected")

    # every corpus: adapted exactly once (one registered version) or failed with a reason
    for cid, rec in ledger().items():
        mine = [v for v in versions if v.tags.get("corpus_id") == cid]
        if rec["status"] == "failed":
            assert rec.get("error") or rec.get("reason"), rec
            assert len(mine) <= 1, rec
        else:
            assert len(mine) == 1, (rec, [v.version for v in mine])
    assert sum(r["status"] == "promoted" for r in ledger().values()) >= 2, "two promotions: one roll to watch"
    assert sum(int(r.get("attempts", 1)) > 1 for r in ledger().values()) >= 1, "the crash was recovered by resubmission"

    # no MLflow run left RUNNING, no process left behind
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    def ours(p: psutil.Process) -> bool:  # started with this test's home: past up, its children, past serve
        try:
            return p.pid != os.getpid() and (str(tmp_path) in " ".join(p.cmdline())
                                             or p.environ().get("PAST_HOME") == str(home))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False
    left = [p for p in psutil.process_iter() if ours(p)]
    assert left == [], [p.cmdline() for p in left]

    # the champion endpoint answered every request from its first answer on, through every roll
    serving = [(t, ok, v) for t, ok, v in poller.log if v is not None]
    first_ok = next(i for i, (_, ok, _) in enumerate(serving) if ok)
    answered = serving[first_ok:]
    assert len({v for _, _, v in answered}) >= 2, "the poller saw a roll"
    assert [t for t, ok, _ in answered if not ok] == [], "failed requests on the champion endpoint"
    _check_prefect_record(home, env)


def _check_prefect_record(home: Path, env: dict) -> None:
    """Prefect's own record, read from a server on the same database (past up is stopped by now): one
    accelerator task at a time across both servers' lifetimes, and no flow run left `Running` (the killed ones
    were marked Crashed by the watcher)."""
    import httpx

    from past.serving import free_port

    port = free_port()
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env={**env, "PREFECT_HOME": str(home / "prefect")}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        api = f"http://127.0.0.1:{port}/api"
        wait_for("prefect server", lambda: _ok(f"{api}/health"), 120, 0.5)
        r = httpx.post(f"{api}/task_runs/filter", json={"task_runs": {"tags": {"all_": ["accelerator"]},
                                                                      "state": {"type": {"any_": ["COMPLETED"]}}}})
        r.raise_for_status()
        spans = sorted((run["start_time"], run["end_time"], run["name"]) for run in r.json()
                       if run["start_time"] and run["end_time"])  # a cache hit never ran
        assert len(spans) >= 6, spans  # SFT stages and gates of three corpora
        for (s1, e1, n1), (s2, _, n2) in zip(spans, spans[1:]):
            assert s2 >= e1, f"{n2} started at {s2} while {n1} ran until {e1}"
        adapt_runs = lambda *states: httpx.post(f"{api}/flow_runs/filter", json={  # noqa: E731
            "flows": {"name": {"any_": ["adapt"]}}, "flow_runs": {"state": {"type": {"any_": list(states)}}}}).json()
        assert [(f["name"], f["state_type"]) for f in adapt_runs("RUNNING", "PENDING")] == []
        assert adapt_runs("CRASHED"), "the killed adapt runs show as Crashed"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
