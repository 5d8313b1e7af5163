"""The typed-config helpers: a field with a help string, for dataclasses (TRL's `field(metadata={"help": ...})`)
and for pydantic models (`Field(description=...)`).

The SFT and GRPO recipes and the benches' budgets declare fields with `opt`, Settings with `setting`, so
`past config`, argparse flags and docs read the same help text."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors TRL's metadata key
    return field(default=default, metadata={"help": help})


def setting(default: Any, help: str) -> Any:  # noqa: A002
    from pydantic import Field

    return Field(default, description=help)
