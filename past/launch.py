"""One SFT stage's training in N processes: `accelerate launch` around `past.sft.fit_stage` (DDP).

The caller (`past.sft.train_stage`) prepares the rows, and afterwards runs the training check, writes the
manifest and publishes; only the training moves into the launched processes:

    job.json (stage arguments, rows, recipe) -> accelerate launch --multi_gpu --num_processes N -m past.launch job.json
      every rank: fit_stage(...)            TRL's trainer does DDP (NCCL on GPUs, gloo on CPU)
      rank 0:     merge LoRA, save model/ + tokenizer, then metrics.json (written last: the done-marker)
    caller: the training check on model/ (if any), then model/'s files are moved into the published folder

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


def fit_launched(fit: dict, recipe) -> tuple[Path, dict]:
    """Run `fit_stage(**fit, recipe=recipe)` in `recipe.processes` DDP processes -> (merged model folder, metrics)."""
    from past.serving import free_port
    from past.sft import SFTError

    out = Path(fit["stage_dir"]) / "launched"
    shutil.rmtree(out, ignore_errors=True)  # a previous launch's leftovers; checkpoints live beside, not in here
    out.mkdir(parents=True)
    job = out / "job.json"
    job.write_text(json.dumps({"fit": fit, "recipe": asdict(recipe), "out": str(out)}))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           str(recipe.processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "past.launch", str(job)]
    log = out / "launch.log"
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    done = out / "metrics.json"
    if rc != 0 or not done.is_file():
        tail = log.read_text(errors="replace")[-LOG_TAIL:]
        raise SFTError(f"stage {fit['name']}: `accelerate launch` with {recipe.processes} processes exited {rc}"
                       f"{'' if done.is_file() else ' without a result'}; log {log}:\n{tail}")
    return out / "model", json.loads(done.read_text())


def main(job_path: str) -> int:
    """Entry point of every launched rank."""
    from past.corpus import atomic_write
    from past.sft import SFTRecipe, fit_stage

    job = json.loads(Path(job_path).read_text())
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
