"""`past skill extract|inject|analyze`: build, graft and inspect skill vectors (see docs/skill-vectors.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _override(text: str) -> tuple[str, float]:
    glob, sep, lam = text.rpartition("=")
    try:
        if not sep or not glob:
            raise ValueError
        return glob, float(lam)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GLOB=LAMBDA, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("skill", help="extract, inject and analyze skill vectors (v = θ_rl − θ_sft)")
    ssub = p.add_subparsers(dest="skill_command", metavar="ACTION", required=True)

    ex = ssub.add_parser("extract", help="write the skill vector v = θ_rl − θ_sft to a new folder",
                         description="Streams both models tensor by tensor (fp32 arithmetic) into safetensors "
                         "shards plus a skill.json manifest. --rl may also be a PEFT LoRA adapter over --sft.")
    ex.add_argument("--rl", type=Path, required=True, help="RL-tuned model folder, or a LoRA adapter over --sft")
    ex.add_argument("--sft", type=Path, required=True, help="the SFT model the RL run started from")
    ex.add_argument("--out", type=Path, required=True, help="new skill-vector folder (must not exist)")
    ex.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="storage dtype of the vector (float32 keeps it exact; bfloat16 halves its size)")
    ex.add_argument("--shard-gb", type=float, default=4.0, help="maximum shard size in GB")
    ex.set_defaults(func=run_extract)

    inj = ssub.add_parser("inject", help="write θ_final = θ_sft_T + λ·v as a complete model folder",
                          description="Tensors absent from the vector or filtered out are copied bit for bit; "
                          "the output has config, tokenizer, generation config and a past-model.json manifest.")
    inj.add_argument("--model", type=Path, required=True, help="target SFT model folder (θ_sft_T)")
    inj.add_argument("--vector", type=Path, required=True, help="skill-vector folder")
    inj.add_argument("--lam", type=float, default=None, help="λ (default: the `lam` setting, 1.0)")
    inj.add_argument("--out", type=Path, required=True, help="new model folder (must not exist)")
    inj.add_argument("--include", action="append", default=None,
                     help="glob of tensor names to graft (repeatable; default: the `skill_include` setting)")
    inj.add_argument("--exclude", action="append", default=None,
                     help="glob of tensor names never grafted, e.g. '*embed_tokens*' (repeatable; default: "
                     "the `skill_exclude` setting)")
    inj.add_argument("--lam-for", action="append", default=[], type=_override, metavar="GLOB=LAMBDA",
                     help="per-module λ, e.g. '*mlp*=0.5' (repeatable; the first matching glob wins)")
    inj.add_argument("--shard-gb", type=float, default=4.0, help="maximum shard size in GB")
    inj.set_defaults(func=run_inject)

    an = ssub.add_parser("analyze", help="orthogonality report: cosine(θ_tuned − θ_base, v) per tensor and layer",
                         description="Writes report.json, report.md and cosine.png to a new folder.")
    an.add_argument("--vector", type=Path, required=True, help="skill-vector folder")
    an.add_argument("--base", type=Path, required=True, help="base model folder")
    an.add_argument("--tuned", type=Path, required=True, help="knowledge-tuned (SFT) model folder")
    an.add_argument("--out", type=Path, required=True, help="new report folder (must not exist)")
    an.set_defaults(func=run_analyze)
    from past.cli.refresh import register_refresh; register_refresh(ssub)  # noqa: E702 - `past skill refresh`


def run_extract(args: argparse.Namespace) -> int:
    from past.skill import extract

    m = extract(args.rl, args.sft, args.out, dtype=args.dtype, max_shard_bytes=int(args.shard_gb * 1e9))
    print(f"{args.out}: {len(m['tensors'])} tensors, {m['storage_dtype']}, ‖v‖ = {m['norm']:.4g}")
    return 0


def run_inject(args: argparse.Namespace) -> int:
    from past.config import load_settings
    from past.skill import inject

    s = load_settings()
    lam = s.lam if args.lam is None else args.lam
    include = args.include or s.globs(s.skill_include) or ["*"]
    exclude = args.exclude if args.exclude is not None else s.globs(s.skill_exclude)
    print(inject(args.model, args.vector, args.out, lam=lam, include=include, exclude=exclude,
                 overrides=args.lam_for, max_shard_bytes=int(args.shard_gb * 1e9)))
    return 0


def run_analyze(args: argparse.Namespace) -> int:
    from past.skill import analyze

    r = analyze(args.vector, args.base, args.tuned, args.out)
    print(f"{args.out}: overall cosine {r['overall']['cosine']}, report.md and cosine.png written")
    return 0
