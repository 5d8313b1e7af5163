"""Skill refresh (iterative GRPO refinement, K rounds) on the real base model, SmolLM2-135M-Instruct.

    flock -x /tmp/past-cpu.lock .venv/bin/python bench/refresh.py [--json bench/results/refresh.json]

Source domain: `past.synthetic.make_domains(seed)` with `products_per_partition × rounds` products, written
with 3 rewrites per article and the training QA kind only. Then `past.refine.refresh_skill` exactly as
`past skill refresh` runs it: per round, light two-stage LoRA SFT of the base model on the partition, GRPO
(full-parameter, rule rewards: token-F1 + exact match + format; no judge) from θ_sft_k + v_{k-1}, then
v_k = θ_rl_k − θ_sft_k and the orthogonality report of the SFT delta vs v_k.

Prints and saves, per round: the GRPO reward curve and whether the mean reward rose (mean of the first 5
steps vs the last 5), mean |cosine| per layer between θ_sft_k − θ_base and v_k, ‖v_k‖ / ‖θ_sft_k − θ_base‖,
and wall time per phase. Budgets are sized to fit ~15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Import every module the run touches up front: edits to the working tree during a long run cannot leak in.
import past.grpo  # noqa: E402,F401
import past.rewards  # noqa: E402,F401
import past.sft  # noqa: E402,F401
import past.skill  # noqa: E402,F401
from past.grpo import GRPORecipe  # noqa: E402
from past.refine import refresh_skill  # noqa: E402
from past.sft import SFTRecipe  # noqa: E402
from past.synthetic import make_domains, write_corpus  # noqa: E402

BASE = REPO / ".past" / "models" / "smollm2-135m-instruct"


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="K")
    ap.add_argument("--products-per-partition", type=int, default=5, help="source products (documents) per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grpo-steps", type=int, default=16)
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--completion-length", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-5, help="GRPO learning rate (full-parameter)")
    ap.add_argument("--reward-weights", default="1,0.5,0.2", help="token_f1,exact_match,format")
    ap.add_argument("--sft-steps-memorize", type=int, default=4)
    ap.add_argument("--sft-steps-qa", type=int, default=6)
    ap.add_argument("--sft-lr", type=float, default=1e-3, help="LoRA learning rate of both SFT stages")
    ap.add_argument("--base", type=Path, default=BASE, help="base model folder (a tiny model for a smoke run)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the work folder here (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()

    sft = SFTRecipe(max_steps_memorize=args.sft_steps_memorize, max_steps_qa=args.sft_steps_qa, lr_memorize=args.sft_lr,
                    lr_qa=args.sft_lr, batch_size=8, max_length=512, save_steps=10_000, seed=args.seed)
    # save_steps beyond max_steps: a full-parameter GRPO checkpoint (weights + AdamW state, ~1.6 GB) costs more
    # than a step here; resume is tested on tiny models.
    grpo = GRPORecipe(max_steps=args.grpo_steps, prompts_per_step=args.prompts_per_step,
                      num_generations=args.generations, max_completion_length=args.completion_length,
                      learning_rate=args.lr, reward_weights=tuple(float(w) for w in args.reward_weights.split(",")),
                      save_steps=10_000, seed=args.seed)
    source, _ = make_domains(args.seed, n_source=args.products_per_partition * args.rounds)
    with tempfile.TemporaryDirectory(prefix="past-bench-refresh-") as tmp:
        root = args.keep or Path(tmp)
        src = write_corpus(source, root / "source", rewrites=3)
        t0 = time.perf_counter()
        res = refresh_skill(src, root / "vector", args.base, args.rounds, root / "work", sft, grpo, seed=args.seed,
                            log=lambda m: print(f"[{time.perf_counter() - t0:7.1f} s] {m}", flush=True))
        total = time.perf_counter() - t0

    out = {"settings": vars(args) | {k: str(getattr(args, k)) for k in ("base", "keep", "json")}, "total_wall_s": round(total, 1),
           "rounds": []}
    for r in res.rounds:
        curve, o = r["grpo"]["reward_curve"], r["orthogonality"]["summary"]
        first, last = mean(curve[:5]), mean(curve[-5:])
        out["rounds"].append({
            "round": r["round"], "init": r["init"], "reward_curve": curve, "reward_std_curve": r["grpo"]["reward_std_curve"],
            "per_reward_curves": r["grpo"]["per_reward_curves"], "reward_first5": first, "reward_last5": last,
            "reward_rose": last > first, "mean_abs_layer_cosine": o["mean_abs_layer_cosine"],
            "max_abs_layer_cosine": o["max_abs_layer_cosine"], "overall_cosine": o["overall_cosine"],
            "skill_over_sft_norm": o["skill_over_knowledge_norm"], "per_layer_cosine": r["orthogonality"]["per_layer"],
            "sft": r["sft"], "phases_s": r["phases"], "round_wall_s": r["wall_s"]})

    print(f"\nK={args.rounds}, {args.products_per_partition} products/partition, GRPO {args.grpo_steps} steps × "
          f"{args.prompts_per_step} prompts × {args.generations} gens × {args.completion_length} tokens, lr {args.lr:g}")
    print(f"{'round':>5} {'reward first5':>13} {'last5':>7} {'rose':>5} {'mean|cos|':>10} {'‖v‖/‖Δsft‖':>11} "
          f"{'sft s':>6} {'inject s':>8} {'grpo s':>7} {'extract+analyze s':>17}")
    for r in out["rounds"]:
        p = r["phases_s"]
        print(f"{r['round']:>5} {r['reward_first5']:>13.3f} {r['reward_last5']:>7.3f} {str(r['reward_rose']):>5} "
              f"{r['mean_abs_layer_cosine']:>10.4f} {r['skill_over_sft_norm']:>11.3f} {p['sft_s']:>6.0f} "
              f"{p['inject_s']:>8.1f} {p['grpo_s']:>7.0f} {p['extract_analyze_s']:>17.1f}")
        print(f"      reward curve: {' '.join(f'{x:.2f}' for x in r['reward_curve'])}")
    print(f"total wall time {total:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
