"""The one typed-config helper: a dataclass field with a help string (TRL's `field(metadata={"help": ...})`).

Settings, the SFT and GRPO recipes and the benches' budgets all declare fields with it, so `past config
show`, argparse flags and docs read the same help text."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors TRL's metadata key
    return field(default=default, metadata={"help": help})
