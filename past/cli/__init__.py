"""`past` command line. Each command group lives in its own module with a `register(subparsers)` function;
heavy imports (torch, transformers) happen inside the handlers so `past --help` stays instant.

Expected failures (`PastError`) print one clear `error:` line and exit 2; success exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from past import __version__
from past.errors import PastError

# One module per command group, registered in this order in `past --help`.
COMMAND_MODULES = [
    "past.cli.doctor",
    "past.cli.config",
    "past.cli.model",
    "past.cli.skill",
    "past.cli.corpus",
    "past.cli.sft",
    "past.cli.registry",
    "past.cli.adapt",
    "past.cli.up",
    "past.cli.serve",
    "past.cli.smoke",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="past", description="PaST orchestrator: knowledge by SFT, skills by a grafted RL skill vector.",
    )
    parser.add_argument("--version", action="version", version=f"past {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PastError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
