from __future__ import annotations

from pathlib import Path

import pytest

from past.config import ConfigError, Settings, field_help, load_settings


def test_every_field_is_documented() -> None:
    helps = field_help()
    assert helps and all(len(h) > 15 for h in helps.values()), [k for k, h in helps.items() if len(h) <= 15]


def test_precedence_defaults_toml_env_overrides(tmp_path: Path) -> None:
    (tmp_path / "past.toml").write_text("[past]\nlam = 0.5\ngate_margin = 0.1\n[sft]\nuse_lora = false\nlora_r = 4\n")
    s = load_settings(env={"PAST_GATE_MARGIN": "0.2", "PAST_HOME": str(tmp_path / "h"), "PAST_SFT__LORA_R": "8"})
    assert s.lam == 0.5 and s.gate_margin == 0.2 and s.sft.use_lora is False and s.sft.lora_r == 8
    assert s.home == tmp_path / "h" and s.inbox == tmp_path / "h" / "inbox"
    assert load_settings(env={}, lam=2.0).lam == 2.0
    assert load_settings(env={}).mlflow_uri.startswith("sqlite:///")


@pytest.mark.parametrize(
    "env, match",
    [
        ({"PAST_LAM": "nan"}, "lam"),
        ({"PAST_LAM": "1e9"}, "lam"),
        ({"PAST_LAM": "abc"}, "lam"),
        ({"PAST_SFT__USE_LORA": "maybe"}, "sft.use_lora.*boolean"),
        ({"PAST_SFT__LORAR": "8"}, "sft.lorar"),
        ({"PAST_SFT__LORA_R": "0"}, "setting 'sft'.*lora_r 0"),
        ({"PAST_GRPO__LR_SCHEDULER_TYPE": "cosine_wobble"}, "grpo.lr_scheduler_type"),
        ({"PAST_GRPO__NUM_GENERATIONS": "1"}, "setting 'grpo'.*num_generations 1"),
        # settings that became recipe fields: an error naming the new place, never silently ignored
        ({"PAST_SFT_LORA_R": "8"}, r"sft_lora_r is now sft.lora_r.*PAST_SFT__<FIELD>"),
        ({"PAST_TRAIN_BF16": "true"}, "train_bf16 is now sft.bf16 and grpo.bf16"),
        ({"PAST_GATE_MIN_ACCURACY": "1.5"}, "gate_min_accuracy"),
        ({"PAST_GRPO_ROUNDS": "0"}, "grpo_rounds"),
        ({"PAST_CONFIG": "/nonexistent/past.toml"}, "not a file"),
    ],
)
def test_bad_settings_raise_clear_errors(env: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_settings(env=env)


def test_unknown_or_malformed_toml(tmp_path: Path) -> None:
    (tmp_path / "past.toml").write_text("lamda = 1.0\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(env={})
    (tmp_path / "past.toml").write_text("lam = [\n")
    with pytest.raises(ConfigError, match="past.toml"):
        load_settings(env={})


def test_settings_defaults_are_embedded() -> None:
    s = Settings()
    assert s.base_model == "smollm2-135m-instruct" and s.lam == 1.0 and s.home == Path(".past")


def test_recipe_sections_reach_the_recipes_and_old_names_in_a_file_are_refused(tmp_path: Path) -> None:
    from past.grpo import GRPORecipe
    from past.sft import SFTRecipe

    (tmp_path / "past.toml").write_text("seed = 3\n[sft]\nlr_memorize = 1e-3\nlr_qa = 5e-4\n[grpo]\nmax_steps = 7\n"
                                        "use_lora = true\nlr_scheduler_type = 'constant'\n")
    s = load_settings(env={"PAST_CONFIG": str(tmp_path / "past.toml")})
    sft, grpo = SFTRecipe.from_settings(s), GRPORecipe.from_settings(s, max_steps=9)
    assert (sft.lr_memorize, sft.lr_qa, sft.seed, sft.lora_r) == (1e-3, 5e-4, 3, 16)  # unset fields: recipe defaults
    assert (grpo.max_steps, grpo.use_lora, grpo.lr_scheduler_type, grpo.seed) == (9, True, "constant", 3)
    (tmp_path / "past.toml").write_text("[past]\nsft_learning_rate = 1e-3\n")
    with pytest.raises(ConfigError, match="sft_learning_rate is now sft.lr_memorize and sft.lr_qa"):
        load_settings(env={"PAST_CONFIG": str(tmp_path / "past.toml")})
    (tmp_path / "past.toml").unlink()
    with pytest.raises(ConfigError, match="grpo_max_steps is now grpo.max_steps"):
        load_settings(env={}, grpo_max_steps=3)


def test_the_lr_scheduler_names_are_transformers_own() -> None:
    import typing

    from transformers.trainer_utils import SchedulerType

    from past.fields import LRScheduler

    assert set(typing.get_args(LRScheduler)) == {t.value for t in SchedulerType}
