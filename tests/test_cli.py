"""The `past` CLI as a user runs it: real subprocesses, exit codes, one clear error line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def past(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "past.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def test_help_lists_commands() -> None:
    r = past("--help")
    assert r.returncode == 0
    for cmd in ("doctor", "config", "model", "smoke", "skill", "corpus", "sft", "gate", "up", "adapt", "backfill"):
        assert cmd in r.stdout


def test_config_shows_values_and_help() -> None:
    r = past("config", env={"PAST_LAM": "0.75"})
    assert r.returncode == 0 and "lam = 0.75" in r.stdout and "PAST_LAM" in r.stdout


def test_bad_setting_is_one_error_line() -> None:
    r = past("config", env={"PAST_LAM": "inf"})
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_doctor_reports_every_component_and_fixes(tmp_path: Path) -> None:
    r = past("doctor", env={"PAST_SERVE_PYTHON": str(tmp_path / "nope" / "python"),
                            "PAST_PREFECT_API_URL": "http://127.0.0.1:9/api"})
    out = r.stdout
    for name in ("python deps", "torch device", "home folder", "base model", "serving", "mlflow store",
                 "prefect api", "teacher/judge"):
        assert name in out, f"doctor does not report {name!r}"
    assert r.returncode == 1, "a missing serving env is a failure"
    assert "make serve-env" in out and "past model prepare" in out and "past up" in out


def test_doctor_flags_damaged_cached_model(tmp_path: Path, make_tiny) -> None:
    home = Path(os.environ["PAST_HOME"])
    cached = home / "models" / "smollm2-135m-instruct"
    cached.parent.mkdir(parents=True)
    make_tiny("x").rename(cached)
    (cached / "config.json").write_text("{}")
    r = past("doctor")
    assert "cached copy damaged" in r.stdout and r.returncode == 1


def test_model_tiny_and_verify(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    r = past("model", "tiny", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert past("model", "verify", str(out)).returncode == 0
    (out / "model.safetensors").write_bytes(b"\0" * 10)
    r = past("model", "verify", str(out))
    assert r.returncode == 2 and "model.safetensors" in r.stderr


@pytest.mark.vllm
def test_smoke_serving_path_on_tiny_model(tmp_path: Path, tiny_model_dir: Path, serve_python: Path) -> None:
    """`past smoke` end to end through a real vLLM CPU server (tiny model: the answer is noise, but real)."""
    r = past("smoke", "--question", "Hello?", env={"PAST_BASE_MODEL": str(tiny_model_dir),
                                                  "PAST_SERVE_PYTHON": str(serve_python)}, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "A: " in r.stdout and "server stopped" in r.stdout


def test_past_adapt_runs_the_flow_on_a_docs_only_corpus(tiny_model_dir, tmp_path) -> None:
    """`past adapt CORPUS`: the adapt flow in a subprocess (temporary Prefect server), summary as JSON."""
    import json

    from tests.fake_openai import FakeOpenAI

    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"d{i}.md").write_text(f"# Part {i}\nThe part {i} weighs {i + 10} kilograms.\n")
    with FakeOpenAI(lambda q: "10 kilograms") as fake:
        env = {"PAST_BASE_MODEL": str(tiny_model_dir), "PAST_SERVE_URL": fake.url, "PAST_GATE_MIN_NEW_ITEMS": "1",
               "PAST_GATE_MIN_ACCURACY": "0", "PAST_SFT_MIN_TRAIN_RECALL": "0", "PAST_SFT__MIN_STEPS_QA": "1", "PAST_SFT__REPLAY_EXAMPLES": "2",
               "PAST_SFT__EPOCHS_MEMORIZE": "1", "PAST_SFT__EPOCHS_QA": "1", "PAST_GATE_MAX_TOKENS": "8",
               "PREFECT_HOME": str(tmp_path / "prefect")}
        r = past("adapt", str(corpus), "--model-name", "cli-bot", env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout[r.stdout.rindex('{\n  "corpus_id"'):])
    assert out["version"] == "1" and out["teacher"] == "extractive" and out["gate"]["new_items"] >= 1
    bad = past("adapt", str(tmp_path / "missing"), env=env, timeout=600)
    assert bad.returncode != 0


def test_past_up_points_local_flows_at_the_store_its_ui_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """#16: the local worker's flows used the Kubernetes placeholder (then `http://mlflow.past.svc:5000`) and hung."""
    from past.cli.up import env_for
    from past.config import load_settings

    monkeypatch.delenv("PAST_MLFLOW_TRACKING_URI", raising=False)
    s = load_settings()
    env = env_for(tmp_path, "http://127.0.0.1:4200/api", s.mlflow_uri)
    assert env["PAST_MLFLOW_TRACKING_URI"] == s.mlflow_uri and env["PAST_MLFLOW_TRACKING_URI"].startswith("sqlite:///")
    assert "svc" in env["PAST_K8S_MLFLOW_TRACKING_URI"]  # only the Kubernetes pool's job template reads this one
    text = (Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml").read_text()
    assert "{{ $PAST_K8S_MLFLOW_TRACKING_URI }}" in text and "{{ $PAST_MLFLOW_TRACKING_URI }}" not in text


def test_stopping_past_up_stops_the_whole_tree(tmp_path: Path) -> None:
    """#16: after SIGTERM to `past up`, two flow-run processes (own session, ignoring SIGTERM) kept running."""
    import psutil

    from past.cli.up import terminate_tree

    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    worker = ("import subprocess, sys, time; "
              f"subprocess.Popen([sys.executable, '-c', {stubborn!r}], start_new_session=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", worker], start_new_session=True)
    deadline = time.time() + 30
    while not psutil.Process(parent.pid).children() and time.time() < deadline:
        time.sleep(0.1)
    (child,) = psutil.Process(parent.pid).children()
    time.sleep(0.5)  # let the child install its SIGTERM handler
    killed = terminate_tree([parent.pid], timeout_s=2)
    assert killed == [child.pid], "the stubborn child needed SIGKILL; the parent went on SIGTERM"
    assert not psutil.pid_exists(child.pid) or psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
    parent.wait(timeout=5)


def test_kubernetes_deployments_run_from_the_image_not_a_host_checkout() -> None:
    """#15: the GPU deployments inherited the process pool's pull step (`{{ $PAST_REPO }}`, a host path)."""
    import re

    import yaml

    root = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((root / "deployments" / "prefect.yaml").read_text())
    workdir = re.search(r"^WORKDIR (\S+)$", (root / "Dockerfile").read_text(), re.M).group(1)
    for d in spec["deployments"]:
        pull = d.get("pull", spec["pull"])
        where = pull[0]["prefect.deployments.steps.set_working_directory"]["directory"]
        if d["work_pool"]["name"] == "past-k8s-gpu":
            assert where == workdir, d["name"]
        else:
            assert where == "{{ $PAST_REPO }}", d["name"]


def test_corpus_split_takes_the_held_out_unit(tmp_path: Path) -> None:
    import json

    facts = Path(__file__).parent / "data" / "facts"
    r = past("corpus", "split", str(facts), "--out", str(tmp_path / "q"), "--by", "question")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "q" / "split.json").read_text())["by"] == "question"
    r = past("corpus", "split", str(facts), "--out", str(tmp_path / "f"), env={"PAST_SFT__SPLIT_BY": "fact"})
    summary = json.loads((tmp_path / "f" / "split.json").read_text())
    assert r.returncode == 0 and summary["by"] == "fact" and summary["eval"] == 0  # every fact asked once
    r = past("corpus", "split", str(facts), "--out", str(tmp_path / "x"), env={"PAST_SFT__SPLIT_BY": "paragraph"})
    assert r.returncode == 2 and "setting 'sft'" in r.stderr and "split_by 'paragraph'" in r.stderr


def test_every_recipe_field_is_a_refresh_option_and_old_names_still_work(tmp_path: Path) -> None:
    """`past skill refresh` generates one option per GRPORecipe / SFTRecipe field (past.fields.add_recipe_args);
    the older short names are aliases; a value the recipe refuses fails before any training, in one line."""
    from dataclasses import fields

    from past.cli import build_parser
    from past.fields import recipe_args
    from past.grpo import GRPORecipe
    from past.sft import SFTRecipe

    argv = ["skill", "refresh", "src", "--out", "v", "--generations", "3", "--grpo-use-lora", "--grpo-lora-r", "8",
            "--reward-weights", "1,0.5,0.2", "--grpo-rewards", "token_f1", "exact_match", "format",
            "--sft-steps-qa", "7", "--sft-micro-batch-memorize", "2", "--no-sft-use-lora"]
    args = build_parser().parse_args(argv)
    assert recipe_args(args, GRPORecipe, "grpo-") == {
        "num_generations": 3, "use_lora": True, "lora_r": 8, "reward_weights": (1.0, 0.5, 0.2),
        "rewards": ("token_f1", "exact_match", "format")}
    assert recipe_args(args, SFTRecipe, "sft-") == {"max_steps_qa": 7, "micro_batch_memorize": 2, "use_lora": False}
    shown = past("skill", "refresh", "--help").stdout
    missing = [flag for flag in ["--grpo-" + f.name.replace("_", "-") for f in fields(GRPORecipe)]
               + ["--sft-" + f.name.replace("_", "-") for f in fields(SFTRecipe)] if flag not in shown]
    assert missing == []

    r = past("skill", "refresh", str(tmp_path), "--out", str(tmp_path / "v"), "--grpo-beta", "-1")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ") and "beta" in r.stderr
    r = past("skill", "refresh", str(tmp_path), "--out", str(tmp_path / "v"), "--reward-weights", "1,x")
    assert r.returncode == 2 and "--grpo-reward-weights: expected float values" in r.stderr
    assert not (tmp_path / "v").exists()
