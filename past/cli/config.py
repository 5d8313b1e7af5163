"""`past config`: every setting, its current value, and what it does."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show every setting with its value and help",
                       description="Settings come from defaults < past.toml < PAST_* environment variables.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from past.config import config_file, field_help, load_settings
    from past.grpo import GRPORecipe
    from past.sft import SFTRecipe

    s = load_settings()
    print(f"# config file: {config_file() or '(none)'}")
    for name, help_ in field_help().items():
        recipe = {"sft": SFTRecipe, "grpo": GRPORecipe}.get(name)
        if recipe is None:
            print(f"{name} = {getattr(s, name)!s}\n    PAST_{name.upper()}: {help_}")
            continue
        print(f"# [{name}]: {help_}")  # each recipe field: its value here (set, or the default), its help
        given = {"seed": s.seed} | getattr(s, name).model_dump(exclude_none=True)  # as `from_settings` builds it
        for f in fields(recipe):
            value = given.get(f.name, f.default)
            print(f"[{name}] {f.name} = {value!s}\n    PAST_{name.upper()}__{f.name.upper()}: {f.metadata['help']}")
    print(f"# derived: mlflow_uri = {s.mlflow_uri}")
    return 0
