"""Where a CPU GRPO step's time goes: generation, reference/old log-probs, rewards, the loss forward, backward
+ optimizer, for a few recipe variants, measured side by side in one run.

    flock -x /tmp/past-cpu.lock .venv/bin/python bench/grpo_cost.py --steps 5 --out .bench/grpo-cost

Each variant is a real `past.grpo.train_grpo` run on the base model (SmolLM2-135M-Instruct) with the positive
control's envelope prompts and rewards (bench/protocol.py). TRL times its own blocks with
`trl.extras.profiling.ProfilingContext`, which only reports to wandb/mlflow/trackio; we collect the same
timings in-process by wrapping its `_log_metrics`. Step wall time comes from a TrainerCallback. The first step
(warm-up, allocator) is dropped; figures are medians over the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.method import BASE, DEV_SEED_OFFSET  # noqa: E402
from bench.protocol import Budget, recipes, with_protocol  # noqa: E402
from past.grpo import GRPORecipe, train_grpo  # noqa: E402
from past.synthetic import make_domains  # noqa: E402

VARIANTS: dict[str, dict] = {
    "protocol budget (4 prompts x 4, beta 0.001)": {},
    "beta 0 (no reference model)": {"beta": 0.0},
    "8 prompts x 4": {"prompts_per_step": 8},
    "8 prompts x 4, beta 0": {"prompts_per_step": 8, "beta": 0.0},
    "8 prompts x 4 in 2 backward slices": {"prompts_per_step": 8, "grad_accum": 2},
    "8 prompts x 4 in 2 backward slices, beta 0": {"prompts_per_step": 8, "grad_accum": 2, "beta": 0.0},
    "8 prompts x 4, LoRA r64": {"prompts_per_step": 8, "use_lora": True},
    "8 prompts x 4, LoRA r64, beta 0": {"prompts_per_step": 8, "use_lora": True, "beta": 0.0},
    "8 prompts x 4, LoRA r64, beta 0, 2 backward slices": {"prompts_per_step": 8, "use_lora": True, "beta": 0.0,
                                                           "grad_accum": 2},
    "8 prompts x 4, bf16": {"prompts_per_step": 8, "bf16": True},
    "8 prompts x 4, beta 0, bf16": {"prompts_per_step": 8, "beta": 0.0, "bf16": True},
    "8 prompts x 4, LoRA r64, beta 0, bf16": {"prompts_per_step": 8, "use_lora": True, "beta": 0.0, "bf16": True},
    "8 prompts x 4, LoRA r64, beta 0, bf16, 2 backward slices": {"prompts_per_step": 8, "use_lora": True, "beta": 0.0,
                                                                 "bf16": True, "grad_accum": 2},
    "8 prompts x 4, LoRA r16, beta 0, bf16": {"prompts_per_step": 8, "use_lora": True, "lora_r": 16, "lora_alpha": 32,
                                              "beta": 0.0, "bf16": True},
}


def profile(recipe: GRPORecipe, qa: list[dict], steps: int) -> dict:
    from transformers import TrainerCallback
    from trl.extras import profiling

    blocks: dict[str, list[float]] = defaultdict(list)
    step_s: list[float] = []
    orig = profiling.ProfilingContext._log_metrics

    def capture(self, duration: float) -> None:  # TRL's own block timings, kept in-process
        blocks[self.name.split(".", 1)[-1]].append(duration)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_s.append(time.perf_counter() - self.t0)

    profiling.ProfilingContext._log_metrics = capture
    try:
        with tempfile.TemporaryDirectory() as d:
            train_grpo(BASE, qa, Path(d) / "out", replace(recipe, max_steps=steps), callbacks=[StepTimer()])
    finally:
        profiling.ProfilingContext._log_metrics = orig
    med = lambda xs: statistics.median(xs[1:] if len(xs) > 1 else xs)  # noqa: E731 - drop the warm-up step
    row = {"step_s": med(step_s), "blocks": {k: med(v) for k, v in blocks.items()}}
    inner = [k for k in row["blocks"] if k in ("_prepare_inputs", "compute_loss")]
    row["backward_optimizer_other_s"] = row["step_s"] - sum(row["blocks"][k] for k in inner)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / ".bench" / "grpo-cost")
    ap.add_argument("--only", nargs="+", type=int, help="indices of VARIANTS to run (default: all)")
    args = ap.parse_args()
    b = Budget(grpo_lr=1e-6, grpo_temperature=0.7)
    _, base_recipe = recipes(b, 0)
    source, _ = make_domains(DEV_SEED_OFFSET, b.n_source, b.n_target)  # dev data: no bench seed's questions
    qa = [{"question": with_protocol(r["question"]), "answer": r["answer"]} for r in source.qa["paraphrase"]]
    rows = {}
    for i, (name, change) in enumerate(VARIANTS.items()):
        if args.only and i not in args.only:
            continue
        rows[name] = profile(replace(base_recipe, **change), qa, args.steps) | {"recipe_change": change}
        print(name, json.dumps(rows[name]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    res = {"steps": args.steps, "base_recipe": asdict(base_recipe), "variants": rows,
           "command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d")}
    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    names = sorted({k for r in rows.values() for k in r["blocks"]})
    first = next(iter(rows.values()))["step_s"] if rows else 1.0
    print("| variant | step s | speed-up vs first row | " + " | ".join(names) + " | backward + optimizer + other |")
    print("|---|---:|---:|" + "---:|" * (len(names) + 1))
    for name, r in rows.items():
        print(f"| {name} | {r['step_s']:.2f} | {first / r['step_s']:.2f}× | "
              + " | ".join(f"{r['blocks'].get(k, float('nan')):.2f}" for k in names)
              + f" | {r['backward_optimizer_other_s']:.2f} |")


if __name__ == "__main__":
    main()
