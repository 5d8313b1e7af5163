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
    g = p.add_argument_group("GRPO (defaults: grpo_* settings, then past.grpo.GRPORecipe)")
    g.add_argument("--grpo-steps", type=int, default=None, help="optimizer steps per round")
    g.add_argument("--generations", type=int, default=None, help="group size G (completions per question)")
    g.add_argument("--prompts-per-step", type=int, default=None, help="questions per optimizer step")
    g.add_argument("--lr", type=float, default=None, help="GRPO learning rate (full-parameter)")
    g.add_argument("--beta", type=float, default=None, help="KL coefficient against the round's start model")
    g.add_argument("--temperature", type=float, default=None, help="rollout sampling temperature")
    g.add_argument("--completion-length", type=int, default=None, help="max new tokens per completion")
    g.add_argument("--reward-weights", type=str, default=None,
                   help="comma-separated weights of token_f1,exact_match,format (default 1,0.5,0.2)")
    g.add_argument("--grpo-save-steps", type=int, default=None, help="GRPO checkpoint interval (resume points)")
    s = p.add_argument_group("SFT per round (defaults: sft_* settings, then past.sft.SFTRecipe)")
    s.add_argument("--sft-steps-memorize", type=int, default=None, help="cap stage 1 at N steps (else epochs)")
    s.add_argument("--sft-steps-qa", type=int, default=None, help="cap stage 2 at N steps (else epochs)")
    s.add_argument("--sft-epochs-memorize", type=float, default=None, help="stage 1 epochs")
    s.add_argument("--sft-epochs-qa", type=float, default=None, help="stage 2 epochs")
    s.add_argument("--sft-lr", type=float, default=None, help="learning rate of both SFT stages")
    s.add_argument("--sft-batch-size", type=int, default=None, help="SFT batch size")
    s.add_argument("--sft-max-length", type=int, default=None, help="SFT tokens per block / QA example")
    p.set_defaults(func=run_refresh)


def _weights(text: str | None) -> tuple[float, ...] | None:
    from past.errors import PastError

    if text is None:
        return None
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise PastError(f"--reward-weights: expected comma-separated numbers, got {text!r}") from None


def run_refresh(args: argparse.Namespace) -> int:
    from past.cli.corpus import opened_corpus
    from past.config import load_settings
    from past.grpo import GRPORecipe
    from past.models import resolve_model
    from past.refine import refresh_skill
    from past.rewards import judge_reward_from_settings
    from past.sft import SFTRecipe

    st = load_settings()
    rounds = st.grpo_rounds if args.rounds is None else args.rounds
    seed = st.seed if args.seed is None else args.seed

    def pick(option, setting):
        return setting if option is None else option

    grpo = {"max_steps": pick(args.grpo_steps, st.grpo_max_steps),
            "num_generations": pick(args.generations, st.grpo_num_generations),
            "max_completion_length": pick(args.completion_length, st.grpo_max_completion_length), "seed": seed,
            "prompts_per_step": args.prompts_per_step, "learning_rate": args.lr, "beta": args.beta,
            "temperature": args.temperature, "reward_weights": _weights(args.reward_weights),
            "save_steps": args.grpo_save_steps}
    grpo_recipe = GRPORecipe(**{k: v for k, v in grpo.items() if v is not None})  # checked here (GRPOError)
    sft_recipe = SFTRecipe.from_settings(
        st, seed=seed, max_steps_memorize=args.sft_steps_memorize, max_steps_qa=args.sft_steps_qa,
        epochs_memorize=args.sft_epochs_memorize, epochs_qa=args.sft_epochs_qa, lr_memorize=args.sft_lr,
        lr_qa=args.sft_lr, batch_size=args.sft_batch_size, max_length=args.sft_max_length)
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
