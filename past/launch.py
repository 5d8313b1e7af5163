"""Training in N processes: `accelerate launch` around `past.sft.fit_stage` (an SFT stage) or
`past.grpo.fit_grpo` (a GRPO run), with DDP.

The caller (`past.sft.train_stage`) prepares the rows, and afterwards runs the training check, writes the
manifest and publishes; only the training moves into the launched processes:

    job.json (stage arguments, rows, recipe) -> accelerate launch --multi_gpu --num_processes N -m past.launch job.json
      every rank: fit_stage(...)            TRL's trainer does DDP (NCCL on GPUs, gloo on CPU)
      rank 0:     merge LoRA, save model/ + tokenizer, then metrics.json (written last: the done-marker)
    caller: the training check on model/ (if any), then model/'s files are moved into the published folder

A GRPO job works the same way: the job file holds the QA, the recipe and JSON descriptions of the judge
(`JudgeReward.describe`; its API key travels in the environment, never in the file) and of the tool rollout
(`ToolRollout.describe`), which every rank rebuilds; rank 0 saves the policy and writes `result.json` last.

`--multi_gpu` is accelerate's torchrun launcher; on a machine without CUDA the ranks come up as MULTI_CPU with
gloo (accelerate's `--cpu` flag instead selects its single-process launcher, mpirun aside). Checkpoints live in
the stage folder as in-process, so a killed launch resumes from the last complete one (with the same N).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

LOG_TAIL = 3000


def _launch(out: Path, processes: int, job: dict, what: str, error: type[Exception], env: dict | None = None) -> None:
    """Write `job` to `out/job.json` and run it in `processes` ranks; a failure raises `error` with the log tail."""
    import os

    from past.serving import free_port

    (out / "job.json").write_text(json.dumps(job))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "past.launch", str(out / "job.json")]
    log = out / "launch.log"
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}).returncode
    done = out / job["done"]
    if rc != 0 or not done.is_file():
        tail = log.read_text(errors="replace")[-LOG_TAIL:]
        raise error(f"{what}: `accelerate launch` with {processes} processes exited {rc}"
                    f"{'' if done.is_file() else ' without a result'}; log {log}:\n{tail}")


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)  # a previous launch's leftovers; checkpoints live beside, not in here
    folder.mkdir(parents=True)
    return folder


def fit_launched(fit: dict, recipe) -> tuple[Path, dict]:
    """Run `fit_stage(**fit, recipe=recipe)` in `recipe.processes` DDP processes -> (merged model folder, metrics)."""
    from past.sft import SFTError

    out = _fresh(Path(fit["stage_dir"]) / "launched")
    _launch(out, recipe.processes, {"kind": "sft", "fit": fit, "recipe": asdict(recipe), "out": str(out),
                                    "done": "metrics.json"}, f"stage {fit['name']}", SFTError)
    return out / "model", json.loads((out / "metrics.json").read_text())


def fit_grpo_launched(init_model_dir, qa: list[dict], work: Path, recipe, judge=None, rollout=None) -> tuple[Path, dict]:
    """Run `fit_grpo` in `recipe.processes` DDP processes -> (rank 0's policy folder, GRPOResult fields).
    Checkpoints stay in `work`, so a killed launch resumes from the last complete one (with the same N)."""
    from past.grpo import GRPOError

    for obj, what in ((judge, "judge"), (rollout, "rollout_func")):
        if obj is not None and not hasattr(obj, "describe"):
            raise GRPOError(f"a launched GRPO run rebuilds its {what} in each process: {type(obj).__name__} has no "
                            "describe(); use past.rewards.JudgeReward / past.tool_rollout.ToolRollout or processes = 1")
    out = _fresh(Path(work) / "launched")
    env = {}
    if judge is not None:
        from past.rewards import JudgeReward

        env[JudgeReward.API_KEY_ENV] = judge.judge.api_key
    job = {"kind": "grpo", "init": str(init_model_dir), "qa": qa, "work": str(work), "recipe": asdict(recipe),
           "judge": judge.describe() if judge is not None else None,
           "rollout": rollout.describe() if rollout is not None else None, "out": str(out), "done": "result.json"}
    _launch(out, recipe.processes, job, f"GRPO from {init_model_dir}", GRPOError, env)
    return out / "model", json.loads((out / "result.json").read_text())


def _grpo_rank(job: dict) -> int:
    import os

    from past.corpus import atomic_write
    from past.grpo import GRPORecipe, fit_grpo, save_policy

    out = Path(job["out"])
    r = job["recipe"]
    recipe = GRPORecipe(**(r | {"rewards": tuple(r["rewards"]), "reward_weights": tuple(r["reward_weights"])}))
    judge = rollout = None
    if job["judge"]:
        from past.rewards import JudgeReward

        judge = JudgeReward.from_description(job["judge"], os.environ.get(JudgeReward.API_KEY_ENV, "EMPTY"))
    if job["rollout"]:
        from past.tool_rollout import ToolRollout

        rollout = ToolRollout.from_description(job["rollout"])
    trainer, fields = fit_grpo(job["init"], job["qa"], Path(job["work"]), recipe, judge, rollout_func=rollout)
    if trainer.is_world_process_zero():
        save_policy(trainer, out / "model")
        atomic_write(out / "result.json", json.dumps(fields, indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return 0


def main(job_path: str) -> int:
    """Entry point of every launched rank."""
    from past.corpus import atomic_write
    from past.sft import SFTRecipe, fit_stage

    job = json.loads(Path(job_path).read_text())
    if job.get("kind") == "grpo":
        return _grpo_rank(job)
    out = Path(job["out"])
    trainer, tok, metrics = fit_stage(recipe=SFTRecipe(**job["recipe"]), **job["fit"])
    if trainer.is_world_process_zero():
        model = trainer.model.merge_and_unload() if job["recipe"]["use_lora"] else trainer.model
        model.save_pretrained(out / "model", safe_serialization=True)
        tok.save_pretrained(out / "model")
        atomic_write(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
