"""`past up`: the local control plane on 127.0.0.1 - Prefect server, a process worker, the MLflow UI, and with
`--serve NAME` the champion endpoint (`past serve`) - and the deployments from deployments/prefect.yaml. Runs in the foreground; Ctrl-C or SIGTERM stops everything.

It only launches the `prefect` and `mlflow` command-line programs (no Prefect import: past/ stays free of
the orchestrator). Prefect's state lives in <home>/prefect, logs in <home>/logs. By default the flows write
to the MLflow store directly (versions point at model folders in place) and the UI reads it; with
`--mlflow-server` MLflow runs as a tracking server with artifact storage and the flows go through it over
HTTP, as pods of a cluster do (versions are uploaded; `past.registry.Registry.local_path`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start Prefect server + worker + MLflow UI on 127.0.0.1 and deploy the flows",
                       description="Foreground; Ctrl-C stops all of it. Schedules: watch every 2 min, "
                       "refresh-skill weekly (deployments/prefect.yaml).")
    p.add_argument("--prefect-port", type=int, default=4200, help="Prefect API/UI port")
    p.add_argument("--mlflow-port", type=int, default=5000, help="MLflow UI port")
    p.add_argument("--mlflow-server", action="store_true",
                   help="run MLflow as a tracking server that stores artifacts (as on a cluster) and point the flows "
                   "at http://127.0.0.1:PORT: versions are uploaded, not registered in place")
    p.add_argument("--no-worker", action="store_true", help="deploy only; start no process worker")
    p.add_argument("--serve", metavar="NAME", default="",
                   help="also run `past serve NAME` in the tree: the champion of NAME on a stable endpoint, rolled "
                   "on every promotion (503 until there is a champion)")
    p.add_argument("--serve-port", type=int, default=8000, help="port of the `--serve` endpoint")
    p.add_argument("--exit-after-deploy", action="store_true", help="stop everything once deployed (smoke test)")
    p.set_defaults(func=run)


def env_for(home: Path, api_url: str, mlflow_uri: str) -> dict[str, str]:
    """Environment every Prefect process shares: one home folder, local API, no telemetry, and the same
    MLflow store the UI shows (`mlflow_uri`: the settings' store, by default SQLite under the home)."""
    return {**os.environ, "PREFECT_HOME": str(home / "prefect"), "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            "PAST_HOME": str(home), "PAST_REPO": str(REPO), "DO_NOT_TRACK": "1",
            "PAST_MLFLOW_TRACKING_URI": mlflow_uri,
            # the library's own loggers (e.g. `past.sft` progress) go into the flow runs' logs in the UI
            "PREFECT_LOGGING_EXTRA_LOGGERS": os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "past"),
            # placeholders of the Kubernetes deployments only (deployments/prefect.yaml's gpu pool); set them
            # for a real cluster. They never reach the local worker's flows.
            "PAST_IMAGE": os.environ.get("PAST_IMAGE", "past-orchestrator:latest"),
            "PAST_K8S_MLFLOW_TRACKING_URI": os.environ.get(
                "PAST_K8S_MLFLOW_TRACKING_URI",  # the registry database: an MLflow HTTP server refuses in-place versions
                "postgresql://past@mlflow-db.past.svc:5432/mlflow")}


def terminate_tree(pids: list[int], timeout_s: float) -> list[int]:
    """SIGTERM every process in the trees under `pids` (children first seen at call time, whatever their
    session: the worker's flow runs start their own), SIGKILL what is still alive after `timeout_s`.
    Returns the pids that had to be killed. Stopping `past up` used to leave flow-run processes running."""
    import psutil

    tree: list[psutil.Process] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            tree += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in reversed(tree):  # children before their parents: a worker must not respawn what it lost
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in alive]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float, what: str, any_status: bool = False) -> None:
    """Until `url` answers 200 (or, with `any_status`, answers at all: `past serve` says 503 before a champion)."""
    import urllib.error

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: {what} exited with code {proc.returncode} (see its log)")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError:
            if any_status:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: {what} not healthy after {timeout_s:.0f}s")


def run(args: argparse.Namespace) -> int:
    from past.config import load_settings

    s = load_settings()
    home = Path(s.home).resolve()
    logs = home / "logs"
    for d in (logs, home / "prefect"):  # Prefect does not create missing parents of its SQLite database
        d.mkdir(parents=True, exist_ok=True)
    api = f"http://127.0.0.1:{args.prefect_port}/api"
    env = env_for(home, api, s.mlflow_uri)
    bin_dir = Path(sys.executable).parent
    procs: list[subprocess.Popen] = []

    def spawn(name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "ab")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                             cwd=REPO, start_new_session=True)
        procs.append(p)
        print(f"started {name} (pid {p.pid}, log {logs / (name + '.log')})", flush=True)
        return p

    def prefect(*a: str) -> None:
        subprocess.run([str(bin_dir / "prefect"), "--no-prompt", *a], env=env, cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)

    def stop(*_: object) -> None:
        terminate_tree([p.pid for p in procs], timeout_s=20)

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        server = spawn("prefect-server", [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1",
                                          "--port", str(args.prefect_port)])
        wait_healthy(f"{api}/health", server, 120, "prefect server")
        prefect("work-pool", "create", "past-local", "--type", "process", "--overwrite")
        prefect("work-pool", "create", "past-k8s-gpu", "--type", "kubernetes", "--overwrite",
                "--base-job-template", str(REPO / "deployments" / "k8s-gpu-job-template.json"))
        prefect("work-pool", "update", "past-k8s-gpu", "--concurrency-limit", "4")
        # One accelerator slot (training and the gate's servers carry the tag). `create` fails when the limit
        # exists already, so what is checked is that it exists afterwards.
        subprocess.run([str(bin_dir / "prefect"), "--no-prompt", "concurrency-limit", "create", "accelerator", "1"],
                       env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        prefect("concurrency-limit", "inspect", "accelerator")
        # A slot held by a task run that was killed (worker or machine crash) is never given back: Prefect 3.9
        # backs tag limits with a global limit whose task-run leases have a 100-year TTL, kept in the server's
        # memory, so after a restart the slot count stays taken with no lease left to expire, and every later
        # training waits forever. No worker of this machine runs yet, so no slot can be legitimately held.
        prefect("concurrency-limit", "reset", "accelerator")
        prefect("global-concurrency-limit", "update", "tag:accelerator", "--active-slots", "0")
        art = (home / "mlflow" / "artifacts")
        art.mkdir(parents=True, exist_ok=True)
        # Before the worker: with --mlflow-server its flows talk to this server, not to the database behind it.
        store = (["server", "--artifacts-destination", str(art)] if args.mlflow_server
                 else ["ui", "--default-artifact-root", art.as_uri()])
        ui = spawn("mlflow-ui", [sys.executable, "-m", "mlflow", store[0], "--backend-store-uri", s.mlflow_uri,
                                 *store[1:], "--host", "127.0.0.1", "--port", str(args.mlflow_port)])
        wait_healthy(f"http://127.0.0.1:{args.mlflow_port}/health", ui, 120, "mlflow server")
        if args.mlflow_server:
            env["PAST_MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{args.mlflow_port}"
        prefect("deploy", "--all", "--prefect-file", str(REPO / "deployments" / "prefect.yaml"))
        print(f"deployed flows from deployments/prefect.yaml; Prefect UI http://127.0.0.1:{args.prefect_port}",
              flush=True)
        if not args.no_worker:
            spawn("prefect-worker", [str(bin_dir / "prefect"), "worker", "start", "--pool", "past-local"])
        print(f"MLflow UI http://127.0.0.1:{args.mlflow_port}"
              + (" (tracking server: flows upload versions to it)" if args.mlflow_server else "")
              + f"; drop corpora into {home / 'inbox'}", flush=True)
        if args.serve:
            front = spawn("serve", [str(bin_dir / "past"), "serve", args.serve, "--port", str(args.serve_port)])
            wait_healthy(f"http://127.0.0.1:{args.serve_port}/v1/models", front, 120, "past serve", any_status=True)
            print(f"champion of {args.serve}: http://127.0.0.1:{args.serve_port}/v1 (503 until there is one)",
                  flush=True)
        if args.exit_after_deploy:
            return 0
        print("running; Ctrl-C stops the server, worker and UI", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        dead = [p.args[0] for p in procs if p.poll() is not None]
        print(f"error: a service exited: {dead}; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError as e:
        print(f"error: {' '.join(map(str, e.cmd[:4]))}... failed with code {e.returncode}", file=sys.stderr)
        return 2
    finally:
        stop()
