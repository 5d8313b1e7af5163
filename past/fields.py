"""The typed-config helpers: a field with a help string, for dataclasses (TRL's `field(metadata={"help": ...})`)
and for pydantic models (`Field(description=...)`).

The SFT and GRPO recipes and the benches' budgets declare fields with `opt`, Settings with `setting`, so
`past config`, argparse flags and docs read the same help text."""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal


def opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors TRL's metadata key
    return field(default=default, metadata={"help": help})


def setting(default: Any, help: str) -> Any:  # noqa: A002
    from pydantic import Field

    return Field(default, description=help)


def recipe_dataclass(cls: type) -> type:
    """A recipe class: still a dataclass (`asdict`, `replace`, `fields` as before), but a pydantic one, so every
    field is checked against its type where the recipe is built - from Python, JSON (a flow parameter, a
    manifest), the CLI or the settings - before the class's own `__post_init__` checks run."""
    from pydantic import ConfigDict
    from pydantic.dataclasses import dataclass

    return dataclass(config=ConfigDict(extra="forbid"))(cls)


# transformers' `SchedulerType` names, as a type: a recipe refuses an unknown schedule where it is built without
# importing transformers (5 s on a CPU node, for every `load_settings`), and the Prefect UI offers a choice.
# tests/test_config.py checks the list against the installed transformers.
LRScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                      "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                      "warmup_stable_decay", "greedy"]

BF16_HELP = ("Mixed precision: bf16 autocast over fp32 master weights. None = on GPUs that support it, fp32 on CPU "
             "(the earlier behaviour); True = also on a CPU with bf16 instructions (avx512_bf16/AMX: ~2x faster steps "
             "there, docs/BENCHMARKS.md); False = fp32.")


def resolve_bf16(requested: bool | None, error: type[Exception] = ValueError) -> bool:
    """A recipe's `bf16` on this machine (None: a CUDA device that supports it). `error` where asked for and
    unsupported: TRL would otherwise fail deep inside the trainer, or run it in emulation."""
    import torch

    cuda = torch.cuda.is_available()
    if requested is None:
        return cuda and torch.cuda.is_bf16_supported()
    if requested and not (torch.cuda.is_bf16_supported() if cuda else torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        raise error("bf16 = true, but this machine has no bf16 support (CPU: avx512_bf16 or AMX); use fp32")
    return requested


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


def add_recipe_args(group, recipe: type, prefix: str = "", aliases: dict[str, tuple[str, ...]] | None = None) -> None:
    """One command-line option per recipe field, `--<prefix><field-name>`, typed and with the field's help; default
    None (= the settings decide). Tuple fields take several values, space- or comma-separated."""
    import argparse
    import typing
    from dataclasses import fields

    hints = typing.get_type_hints(recipe)
    for f in fields(recipe):
        names = ("--" + prefix + f.name.replace("_", "-"), *(aliases or {}).get(f.name, ()))
        kind, dest, help_ = hints[f.name], (prefix + f.name).replace("-", "_"), f.metadata.get("help", "")
        if kind is bool or kind == (bool | None):
            group.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(*names, dest=dest, nargs="+", default=None, help=f"{help_} (default {' '.join(map(str, f.default))})")
        else:
            group.add_argument(*names, dest=dest, type=kind, default=None, help=f"{help_} (default {f.default})")


def recipe_args(args, recipe: type, prefix: str = "") -> dict:
    """The recipe fields given on the command line (`add_recipe_args`), typed; a field not given is absent."""
    import typing
    from dataclasses import fields

    from past.errors import PastError

    hints, out = typing.get_type_hints(recipe), {}
    for f in fields(recipe):
        value = getattr(args, (prefix + f.name).replace("-", "_"))
        if value is not None and typing.get_origin(hints[f.name]) is tuple:
            cast = typing.get_args(hints[f.name])[0]
            try:
                value = tuple(cast(v) for token in value for v in token.split(",") if v)
            except ValueError:
                raise PastError(f"--{prefix}{f.name.replace('_', '-')}: expected {cast.__name__} values, got {value}") from None
        if value is not None:
            out[f.name] = value
    return out


def build_recipe(recipe: type, base: dict, overrides: dict, error: type) -> Any:
    """`recipe(**base)` with a run's overrides on top (None = not given): an unknown field, or a value of the
    wrong type reaching a check in `__post_init__`, is an `error` naming it, before anything trains."""
    from dataclasses import fields

    known = sorted(f.name for f in fields(recipe))
    unknown = sorted(set(overrides) - set(known))
    if unknown:  # e.g. a deployment run's recipe parameter with a misspelt field
        raise error(f"unknown {recipe.__name__} field(s) {unknown}; known: {known}")
    from pydantic import ValidationError

    try:
        return recipe(**(base | {k: v for k, v in overrides.items() if v is not None}))
    except (TypeError, ValidationError) as e:
        raise error(f"bad {recipe.__name__} value: {e}") from None
