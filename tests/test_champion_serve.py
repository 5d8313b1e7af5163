"""`past serve`: a stable endpoint on the champion alias that rolls to a newly promoted version without a
failed request. The roll test runs the real CLI over a real MLflow registry and real vLLM CPU servers."""

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

from past.champion_serve import ChampionFront, ServeState, prefer_served, running_champion, state_path
from past.config import load_settings
from past.evaluation import Champion
from past.serving import Endpoint, ask, free_port, health_ok

REPO = Path(__file__).resolve().parents[1]


def test_failed_start_keeps_serving_and_backs_off(tmp_path: Path) -> None:
    """A version whose server cannot start never takes traffic and is not retried before the back-off."""
    s = load_settings()
    calls = []

    def resolve():
        calls.append(1)
        return "3", tmp_path / "no-such-model"

    front = ChampionFront("bot", resolve, s, port=free_port(), retry_s=3600)
    assert front.roll_once() is False and front.backend is None
    assert "3" in front._failed
    assert front.roll_once() is False  # inside the back-off: not started again
    assert not state_path(s.home, "bot").exists()


def test_running_champion_ignores_dead_or_stale_state(tmp_path: Path) -> None:
    s = load_settings()
    p = state_path(s.home, "bot")
    p.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    p.write_text(json.dumps(ServeState("bot", "2", "http://127.0.0.1:9/v1", dead.pid, 0.0).__dict__))
    assert running_champion(s.home, "bot") is None  # its process is gone
    p.write_text(json.dumps(ServeState("bot", "2", "http://127.0.0.1:9/v1", os.getpid(), 0.0).__dict__))
    assert running_champion(s.home, "bot") is None  # alive, but nothing answers /health there
    p.write_text("{not json")
    assert running_champion(s.home, "bot") is None
    champ = Champion("bot/2", tmp_path)
    assert prefer_served(champ, s.home, "bot") is champ


def test_front_answers_503_without_a_champion_then_forwards(tmp_path: Path) -> None:
    """The front alone (a stdlib OpenAI server standing in for one backend): 503 before any champion, then
    every request forwarded and counted while in flight, so a drain can wait for it."""
    import urllib.error
    import urllib.request

    from past.champion_serve import _Backend
    from tests.fake_openai import FakeOpenAI

    front = ChampionFront("bot", lambda: None, load_settings(), port=free_port(), poll_s=0.2)
    t = threading.Thread(target=front.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(front.url + "/models", timeout=2)
            except urllib.error.HTTPError as e:
                assert e.code == 503 and "no champion" in e.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "the front never started"
                time.sleep(0.1)
        with FakeOpenAI(lambda q: "hello", models=("bot", "bot/1")) as fake:
            class Server:  # what _Backend needs of a VLLMServer
                endpoint = Endpoint(fake.url, "bot")

                def stop(self) -> None:
                    pass

            front.backend = _Backend("1", Server())
            assert [ask(Endpoint(front.url, "bot"), "hi") for _ in range(3)] == ["hello"] * 3
            time.sleep(0.3)
            assert front.backend.inflight == 0 and fake.requests == 3
    finally:
        front.stop()
        t.join(10)
    assert not t.is_alive()


@pytest.mark.vllm
@pytest.mark.slow  # ~2 min of two vLLM servers; CI's soak (tests/test_soak.py) checks the same roll through `past serve`
@pytest.mark.timeout(900)
def test_serve_rolls_to_new_champion_without_failed_requests(make_tiny, serve_python: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from past.registry import Registry

    monkeypatch.setenv("PAST_SERVE_PYTHON", str(serve_python))
    monkeypatch.setenv("PAST_SERVE_MAX_MODEL_LEN", "512")
    s = load_settings()
    reg = Registry(s)
    v1 = reg.register_candidate("bot", make_tiny("m1", seed=1), None, "c1")
    v2 = reg.register_candidate("bot", make_tiny("m2", seed=2), None, "c2")
    reg.promote("bot", v1, force=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "past.cli", "serve", "bot", "--port", str(port), "--poll-s", "1",
                             "--drain-s", "30"], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
                            cwd=REPO)

    def wait_version(v: str, timeout: float = 400) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = running_champion(s.home, "bot")
            if st is not None and st.version == v:
                return
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        raise AssertionError(f"never served version {v}:\n" + (tmp_path / "serve.log").read_text()[-3000:])

    try:
        wait_version(v1)
        assert health_ok(url)
        ok, failures, stop = [0], [], threading.Event()

        def client() -> None:  # the support bot: polls the stable name the whole time (2 cores: not a flood,
            while not stop.is_set():  # or the new server's start-up starves behind the old one's busy workers)
                try:
                    ask(Endpoint(url, "bot"), "Hello?", max_tokens=2, timeout=60)
                    ok[0] += 1
                except Exception as e:  # noqa: BLE001
                    failures.append(repr(e))
                stop.wait(0.5)

        t = threading.Thread(target=client)
        t.start()
        time.sleep(2)
        reg.promote("bot", v2, force=True)
        wait_version(v2)
        time.sleep(3)
        stop.set()
        t.join(timeout=120)
        assert failures == [] and ok[0] > 5, (ok, failures[:3])

        # The gate asks this endpoint for the champion, by version; the old version is no longer served.
        champ = prefer_served(reg.champion_ref("bot"), s.home, "bot")
        assert champ.url == url and champ.served_name == f"bot/{v2}"
        assert isinstance(ask(Endpoint(url, f"bot/{v2}"), "Hi", max_tokens=2), str)
        with pytest.raises(Exception, match="(?i)not ?found|does not exist|404"):
            ask(Endpoint(url, f"bot/{v1}"), "Hi", max_tokens=2)
        m1 = str(Path(reg.version("bot", v1).source.removeprefix("file://")))
        assert not any(m1 in c for c in _cmdlines()), "the old version's server was not stopped"
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        log.close()
    assert rc == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert not state_path(s.home, "bot").exists()
    assert not any("vllm.entrypoints" in c and str(tmp_path) in c for c in _cmdlines()), "a vLLM server outlived past serve"


def _cmdlines() -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return out
