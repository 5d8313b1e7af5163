from __future__ import annotations

from pathlib import Path

import pytest

from past.config import ConfigError, Settings, field_help, load_settings


def test_every_field_is_documented() -> None:
    helps = field_help()
    assert helps and all(len(h) > 15 for h in helps.values()), [k for k, h in helps.items() if len(h) <= 15]


def test_precedence_defaults_toml_env_overrides(tmp_path: Path) -> None:
    (tmp_path / "past.toml").write_text("[past]\nlam = 0.5\ngate_margin = 0.1\nsft_use_lora = false\n")
    s = load_settings(env={"PAST_GATE_MARGIN": "0.2", "PAST_HOME": str(tmp_path / "h")})
    assert s.lam == 0.5 and s.gate_margin == 0.2 and s.sft_use_lora is False
    assert s.home == tmp_path / "h" and s.inbox == tmp_path / "h" / "inbox"
    assert load_settings(env={}, lam=2.0).lam == 2.0
    assert load_settings(env={}).mlflow_uri.startswith("sqlite:///")


@pytest.mark.parametrize(
    "env, match",
    [
        ({"PAST_LAM": "nan"}, "lam"),
        ({"PAST_LAM": "1e9"}, "lam"),
        ({"PAST_LAM": "abc"}, "lam"),
        ({"PAST_SFT_USE_LORA": "maybe"}, "boolean"),
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
