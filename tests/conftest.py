"""Shared fixtures: tiny random models with the real SmolLM2 tokenizer, built once per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect keeps its state (results, transaction records) in a throw-away home for the whole test session.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="past-prefect-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own PAST_HOME; no test touches ./.past or the user's past.toml."""
    home = tmp_path / "past-home"
    monkeypatch.setenv("PAST_HOME", str(home))
    monkeypatch.delenv("PAST_CONFIG", raising=False)
    monkeypatch.setenv("PAST_SHA256_CACHE", str(tmp_path / "sha256-stamps"))  # never the user's ~/.cache
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from past.models import packaged_tokenizer

    return packaged_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A ~6.6M-param random Llama (2 layers, hidden 128) sharing SmolLM2's tokenizer. Treat as read-only."""
    from past.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", tokenizer_dir, seed=0)


@pytest.fixture()
def make_tiny(tmp_path: Path, tokenizer_dir: Path):
    """Build a fresh tiny model with a given seed (for tests that need several distinct checkpoints)."""
    from past.models import build_tiny_model

    def _make(name: str, seed: int = 0, **kw) -> Path:
        return build_tiny_model(tmp_path / name, tokenizer_dir, seed=seed, **kw)

    return _make


@pytest.fixture(scope="session")
def serve_python() -> Path:
    """The vLLM serving interpreter; tests marked `vllm` skip only when running outside `make test`."""
    py = Path(os.environ.get("PAST_SERVE_PYTHON", REPO / ".venv-serve" / "bin" / "python"))
    if not py.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{py} missing in CI: `make test` should have built the serving venv")
        pytest.skip(f"{py} missing: run `make serve-env`")
    return py
