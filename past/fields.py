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


def overrides_model(recipe: type, name: str) -> type:
    """A recipe dataclass's fields, each optional, as a pydantic model that refuses unknown fields: a flow's typed
    recipe parameter. Prefect renders it as a form with every field's help and validates it before a run starts."""
    import typing
    from dataclasses import fields

    from pydantic import ConfigDict, Field, create_model

    hints = typing.get_type_hints(recipe)
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=(
        f"{recipe.__name__} fields to change for one run; a field left empty comes from the settings."),
        **{f.name: (hints[f.name] | None, Field(None, description=f.metadata.get("help", ""))) for f in fields(recipe)})
