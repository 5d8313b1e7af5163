"""`past config`: every setting, its current value, and what it does."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show every setting with its value and help",
                       description="Settings come from defaults < past.toml < PAST_* environment variables.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from past.config import config_file, field_help, load_settings

    s = load_settings()
    print(f"# config file: {config_file() or '(none)'}")
    for name, help_ in field_help().items():
        print(f"{name} = {getattr(s, name)!s}\n    PAST_{name.upper()}: {help_}")
    print(f"# derived: mlflow_uri = {s.mlflow_uri}")
    return 0
