"""`past sft CORPUS --out DIR`: two-stage SFT (memorize, then QA); every recipe field is an option."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from past.fields import add_recipe_args
    from past.sft import SFTRecipe

    p = sub.add_parser("sft", help="two-stage knowledge SFT of the base model on a corpus",
                       description="Stage 1 memorizes the documents (packed causal LM), stage 2 trains on the "
                       "train side of the QA split (loss on answers only). LoRA by default, merged at the end. "
                       "Re-running the same command resumes from the last checkpoint. Recipe fields come from "
                       "the settings (the [sft] section of past.toml, PAST_SFT__<FIELD>; seed), then these options.")
    p.add_argument("corpus", type=Path, help="corpus folder or archive")
    p.add_argument("--out", type=Path, required=True, help="output model folder (merged, with manifest)")
    p.add_argument("--base", default=None, help="base model name or folder (default: base_model setting)")
    p.add_argument("--work", type=Path, default=None,
                   help="work folder for splits and checkpoints (default: <home>/runs/sft-<corpus>-<run key>)")
    p.add_argument("--qa", type=Path, default=None, help="QA file (from generate-qa) when the corpus has none")
    p.add_argument("--implications", type=Path, default=None,
                   help="implications.jsonl (from generate-qa) added to stage 1")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds another run's model")
    p.add_argument("--metrics", type=Path, default=None, help="also write the returned metrics to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_recipe_args(p.add_argument_group("recipe (docs/corpus.md)"), SFTRecipe)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from past.cli.corpus import opened_corpus
    from past.config import load_settings
    from past.corpus import read_qa_jsonl
    from past.fields import recipe_args
    from past.models import resolve_model
    from past.qa import read_implications
    from past.sft import SFTRecipe, run_sft

    s = load_settings()
    recipe = SFTRecipe.from_settings(s, **recipe_args(args, SFTRecipe))
    base = resolve_model(args.base or s.base_model, s.models_dir)
    qa = read_qa_jsonl(args.qa) if args.qa else None
    impl = read_implications(args.implications) if args.implications else None
    with opened_corpus(args.corpus) as root:
        metrics = run_sft(root, args.out, base, recipe, work_dir=args.work, qa=qa, implications=impl,
                          runs_dir=s.runs_dir, overwrite=args.overwrite, progress=not args.quiet)
    if args.metrics:
        args.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    short = {k: {m: metrics[k].get(m) for m in ("steps", "resumed_from_step", "loss_first", "loss_last",
                                                  "tokens", "wall_s", "skipped")}
             for k in ("memorize", "qa") if k in metrics}
    print(json.dumps({"out": str(args.out), "work_dir": metrics["work_dir"], **short}, indent=2))
    return 0
