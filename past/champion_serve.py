"""Serve the champion: one stable OpenAI-compatible endpoint that follows the registry's `champion` alias.

    past serve support-bot --port 8000      # clients use base_url http://127.0.0.1:8000/v1, model "support-bot"

What the support bot needs is an address that always answers with the current champion. vLLM serves one
model per process and cannot swap full weights in place (its LoRA hot-loading does not apply to our merged
models), so `past serve` runs a small front on a fixed port that forwards every request to one vLLM server
per champion version. A roll, when the alias moves:

    1. start a vLLM server for the new version on a free port (served as `name` and `name/version`);
    2. wait for /health, then one real chat completion (a server that is up but cannot answer never serves);
    3. switch the front's backend (one attribute assignment: the next request goes to the new server);
    4. drain: wait until the requests in flight on the old server are done (bounded), then stop it.

So there is no moment without a healthy backend: the old server keeps answering until the new one has.
A version that fails to start is logged and retried after a back-off; the old champion keeps serving.

State: after every switch `<home>/serve/<name>.json` (url, version, pid) is written atomically. The gate
reads it (`running_champion`) and asks this endpoint for the champion's answers, by the versioned name, so
an endpoint that has already rolled to another version answers 404 and the gate fails closed rather than
compare with the wrong model.

Why a hand-written proxy: nginx/envoy are outside the stack, and what is needed (forward, stream back,
count requests in flight per backend) is ~40 lines of Starlette + httpx, both already installed with Prefect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from past.corpus import atomic_write
from past.serving import Endpoint, ServingError, VLLMServer, ask, health_ok

log = logging.getLogger("past.serve")

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones recomputed on the way: never forwarded. The body is
# passed through as raw bytes, so content-encoding travels with it.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass(frozen=True)
class ServeState:
    """What `<home>/serve/<name>.json` records: where the champion is served and which version it is."""

    name: str
    version: str  # the registry version behind the front now
    url: str  # the front's base URL (…/v1)
    pid: int  # the `past serve` process
    updated_at: float


def state_path(home: Path, name: str) -> Path:
    return Path(home) / "serve" / f"{name.replace('/', '_')}.json"


def running_champion(home: Path, name: str) -> ServeState | None:
    """The state of a live `past serve` for `name` whose front answers /health, else None."""
    p = state_path(home, name)
    try:
        st = ServeState(**json.loads(p.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    try:
        os.kill(st.pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    return st if health_ok(st.url) else None


class _Backend:
    """One vLLM server for one version, with the number of front requests in flight on it."""

    def __init__(self, version: str, server: VLLMServer) -> None:
        self.version, self.server, self.inflight = version, server, 0
        self.base = server.endpoint.base_url.removesuffix("/v1")


def _app(front: "ChampionFront"):
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))

    async def forward(request):
        backend = front.backend  # read once: a request finishes on the server it started on
        if backend is None:
            return JSONResponse({"error": {"message": f"no champion of {front.name!r} is served yet",
                                           "type": "unavailable"}}, status_code=503)
        backend.inflight += 1
        try:
            url = backend.base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
            req = client.build_request(request.method, url, headers=headers, content=await request.body())
            resp = await client.send(req, stream=True)
        except BaseException:
            backend.inflight -= 1
            raise

        async def done() -> None:
            await resp.aclose()
            backend.inflight -= 1

        return StreamingResponse(resp.aiter_raw(), status_code=resp.status_code,
                                 headers={k: v for k, v in resp.headers.items() if k.lower() not in _HOP},
                                 background=BackgroundTask(done))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


class ChampionFront:
    """The stable front and the roller behind it. `resolve()` → (version, model folder) of the champion or None.

    Runs the HTTP front in the calling thread (uvicorn) and polls `resolve` every `poll_s` in another."""

    def __init__(self, name: str, resolve: Callable[[], tuple[str, Path] | None], settings, host: str = "127.0.0.1",
                 port: int = 8000, poll_s: float = 30.0, drain_s: float = 60.0, retry_s: float = 300.0) -> None:
        self.name, self.resolve, self.settings = name, resolve, settings
        self.host, self.port, self.poll_s, self.drain_s, self.retry_s = host, port, poll_s, drain_s, retry_s
        self.backend: _Backend | None = None
        self._failed: dict[str, float] = {}  # version → when its start failed (retried after retry_s)
        self._state_version: str | None = None  # the version <home>/serve/<name>.json names
        self._stop = threading.Event()
        self._server = None  # the uvicorn server, once run() starts it

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # -- rolling -----------------------------------------------------------------------------------------
    def _start(self, version: str, model_dir: Path) -> _Backend:
        s = self.settings
        server = VLLMServer(
            model_dir, served_name=self.name, python=s.serve_python, max_model_len=s.serve_max_model_len,
            startup_timeout_s=s.serve_startup_timeout_s, aliases=[f"{self.name}/{version}"],
            extra_args=s.serve_extra_args.split(),
            # Two servers share the machine during a roll. On a CPU host vLLM pins each engine's OpenMP threads
            # to the same cores ("auto"), and a new engine never finished starting beside a loaded old one
            # (2 cores: > 200 s, then killed; unpinned: 29 s). No effect on GPU serving.
            env={"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_WAIT_POLICY": "PASSIVE"},
            log_path=s.home / "logs" / f"serve-{self.name.replace('/', '_')}-v{version}.log",
        )
        ep = server.start()
        try:  # healthy is not enough: it must answer a real request before it takes traffic
            ask(Endpoint(ep.base_url, f"{self.name}/{version}"), "Say OK.", max_tokens=2, timeout=120)
        except Exception as e:  # noqa: BLE001 - any failure to answer keeps the old champion serving
            server.stop()
            raise ServingError(f"version {version} started but did not answer: {e}") from e
        return _Backend(version, server)

    def roll_once(self) -> bool:
        """Follow the alias one step. True if the backend changed."""
        target = self.resolve()
        if target is None:
            return False
        version, model_dir = target
        if self.backend is not None and self.backend.version == version:
            return False
        if time.monotonic() - self._failed.get(version, -1e18) < self.retry_s:
            return False
        log.info("serve: champion of %s is now version %s; starting it beside %s", self.name, version,
                 self.backend.version if self.backend else "nothing")
        try:
            new = self._start(version, model_dir)
        except (ServingError, OSError) as e:
            self._failed[version] = time.monotonic()
            log.error("serve: version %s failed to start (old champion keeps serving; retry in %.0f s): %s",
                      version, self.retry_s, e)
            return False
        old, self.backend = self.backend, new  # the switch
        try:
            self._write_state()
        except OSError as e:  # retried by the poll loop; the drain below must happen regardless
            log.error("serve: could not record the served version: %s", e)
        log.info("serve: %s now answers with version %s at %s", self.name, version, self.url)
        if old is not None:
            deadline = time.monotonic() + self.drain_s
            while old.inflight > 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            old.server.stop()
            log.info("serve: stopped version %s (%d requests still in flight)", old.version, old.inflight)
        return True

    def _write_state(self) -> None:
        """Record which version the front serves (for the gate); retried each poll until it succeeds."""
        b = self.backend
        if b is None or self._state_version == b.version:
            return
        st = ServeState(self.name, b.version, self.url, os.getpid(), time.time())
        path = state_path(self.settings.home, self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(asdict(st), indent=1))
        self._state_version = b.version

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.roll_once()
                self._write_state()
            except Exception:  # noqa: BLE001 - a registry or disk hiccup must not end serving
                log.exception("serve: checking the champion failed; retrying in %.0f s", self.poll_s)
            self._stop.wait(self.poll_s)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until SIGINT/SIGTERM (or `stop()`); every vLLM server started here is stopped on the way out."""
        import uvicorn

        config = uvicorn.Config(_app(self), host=self.host, port=self.port, log_level="warning",
                                timeout_graceful_shutdown=int(self.drain_s))
        self._server = uvicorn.Server(config)
        if threading.current_thread() is threading.main_thread():
            # uvicorn re-raises the signal it caught once it has shut down; with the default SIGTERM action
            # that would kill the process before the `finally` below stops the vLLM servers
            signal.signal(signal.SIGTERM, _exit_cleanly)
        poller = threading.Thread(target=self._poll, name="past-serve-roller", daemon=True)
        poller.start()
        try:
            self._server.run()
        finally:
            self._stop.set()
            poller.join(timeout=5)  # a server it is still starting is stopped by past.serving's atexit guard
            if self.backend is not None:
                self.backend.server.stop()
            state_path(self.settings.home, self.name).unlink(missing_ok=True)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


def prefer_served(champion, home: Path, name: str):
    """The gate's `Champion`, asked at a running `past serve` endpoint when that serves this very version."""
    import dataclasses

    if champion is None or champion.is_base:
        return champion
    st = running_champion(home, name)
    if st is None or f"{name}/{st.version}" != champion.version:
        return champion
    return dataclasses.replace(champion, url=st.url, served_name=champion.version)


def registry_resolver(settings, name: str) -> Callable[[], tuple[str, Path] | None]:
    """Resolve the champion alias in the MLflow registry to (version, model folder)."""
    from past.registry import Registry

    reg = Registry(settings)

    def resolve() -> tuple[str, Path] | None:
        mv = reg.champion(name)
        return None if mv is None else (str(mv.version), reg.local_path(mv))

    return resolve
