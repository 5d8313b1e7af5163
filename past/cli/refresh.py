"""`past skill refresh SOURCE_CORPUS --rounds K --out DIR`: iterative skill refinement by GRPO (docs/skill-refresh.md).

Registered under `past skill` by `past/cli/skill.py`. Defaults come from settings (grpo_*, sft_*, seed, and the
judge endpoint: `judge_base_url` empty = rule rewards only), then these options. Re-running the same command
resumes: finished rounds are skipped, an interrupted GRPO run continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register_refresh(ssub: argparse._SubParsersAction) -> None:
    from past.fields import add_recipe_args
    from past.grpo import GRPORecipe
    from past.sft import SFTRecipe

    p = ssub.add_parser(
        "refresh", help="learn a skill vector by GRPO over K disjoint partitions of a source corpus",
        description="v_0 = 0; for round k = 1..K: two-stage SFT of the base model on partition D_k gives θ_sft_k, "
        "GRPO from θ_sft_k + v_{k-1} on D_k's RL questions (--rl-qa) or training QA gives θ_rl_k, v_k = θ_rl_k − θ_sft_k. Writes v_K with "
        "its lineage (partitions, reward curves, GRPO config, orthogonality report) to --out. Re-running the "
        "same command resumes where it stopped.")
    p.add_argument("source", type=Path, metavar="SOURCE_CORPUS", help="source corpus folder or archive (with QA)")
    p.add_argument("--rounds", "-k", type=int, default=None, help="K, rounds = partitions (default: grpo_rounds setting)")
    p.add_argument("--out", type=Path, required=True, help="new skill-vector folder (must not exist)")
    p.add_argument("--work", type=Path, default=None,
                   help="work folder for partitions, round models and checkpoints (default: <out>.work); "
                   "keep it to resume, delete it once the vector is published")
    p.add_argument("--base", default=None, help="base model name or folder (default: base_model setting)")
    p.add_argument("--seed", type=int, default=None, help="seed of partitions, splits and training (default: seed setting)")
    p.add_argument("--rl-qa", type=Path, default=None, metavar="JSONL",
                   help="questions about the source documents for GRPO (question, answer, doc_id), e.g. other phrasings "
                   "of the QA facts that SFT never trains on; default: each partition's training QA")
    p.add_argument("--no-judge", action="store_true", help="rule rewards only, even if judge_base_url is set")
    p.add_argument("--json", type=Path, default=None, help="also write the per-round records to this JSON file")
    # every recipe field is an option (the older short names kept as aliases)
    add_recipe_args(p.add_argument_group("GRPO recipe (defaults: grpo_* settings, then past.grpo.GRPORecipe)"),
                    GRPORecipe, "grpo-", aliases={
                        "max_steps": ("--grpo-steps",), "num_generations": ("--generations",), "beta": ("--beta",),
                        "prompts_per_step": ("--prompts-per-step",), "learning_rate": ("--lr",),
                        "temperature": ("--temperature",), "max_completion_length": ("--completion-length",),
                        "reward_weights": ("--reward-weights",)})
    s = p.add_argument_group("SFT recipe per round (defaults: sft_* settings, then past.sft.SFTRecipe)")
    add_recipe_args(s, SFTRecipe, "sft-", aliases={"max_steps_memorize": ("--sft-steps-memorize",),
                                                  "max_steps_qa": ("--sft-steps-qa",)})
    s.add_argument("--sft-lr", type=float, default=None, help="learning rate of both SFT stages")
    p.set_defaults(func=run_refresh)


def run_refresh(args: argparse.Namespace) -> int:
    from past.cli.corpus import opened_corpus
    from past.config import load_settings
    from past.fields import recipe_args
    from past.grpo import GRPORecipe
    from past.models import resolve_model
    from past.refine import refresh_skill
    from past.rewards import judge_reward_from_settings
    from past.sft import SFTRecipe

    st = load_settings()
    rounds = st.grpo_rounds if args.rounds is None else args.rounds
    seed = st.seed if args.seed is None else args.seed

    grpo_recipe = GRPORecipe.from_settings(st, **({"seed": seed} | recipe_args(args, GRPORecipe, "grpo-")))
    lr = {"lr_memorize": args.sft_lr, "lr_qa": args.sft_lr} if args.sft_lr is not None else {}
    sft_recipe = SFTRecipe.from_settings(st, **({"seed": seed} | lr | recipe_args(args, SFTRecipe, "sft-")))
    judge = None if args.no_judge else judge_reward_from_settings(st)
    base = resolve_model(args.base or st.base_model, st.models_dir)
    work = args.work or args.out.with_name(args.out.name + ".work")
    print(f"refresh: K={rounds}, GRPO {grpo_recipe.max_steps} steps × {grpo_recipe.prompts_per_step} prompts × "
          f"{grpo_recipe.num_generations} generations, lr {grpo_recipe.learning_rate:g}; judge: "
          f"{'off (rule rewards only)' if judge is None else st.judge_model + ' at ' + st.judge_base_url}; "
          f"work folder {work}", flush=True)

    def log(msg: str) -> None:
        print(f"refresh: {msg}", flush=True)

    with opened_corpus(args.source) as root:
        res = refresh_skill(root, args.out, base, rounds, work, sft_recipe, grpo_recipe, judge=judge, seed=seed,
                            log=log, rl_qa=args.rl_qa)
    if args.json:
        args.json.write_text(json.dumps({"vector": str(res.vector_dir), "wall_s": res.wall_s,
                                         "rounds": res.rounds}, indent=2) + "\n")
    for r in res.rounds:
        j = r["grpo"]["judge"]
        extra = f", judge fallbacks {int(j.get('fallbacks', 0))}/{int(j.get('samples', 0))}" if j else ""
        print(f"round {r['round']}: {r['grpo']['steps']} GRPO steps, reward {r['grpo']['reward_curve'][:1]} -> "
              f"{r['grpo']['reward_curve'][-1:]}, mean |cos| per layer "
              f"{r['orthogonality']['summary']['mean_abs_layer_cosine']:.4f}{extra}")
    print(f"skill vector v_{rounds}: {res.vector_dir} ({res.wall_s:.0f} s)")
    return 0
