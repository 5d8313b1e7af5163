"""The positive-control benchmark (bench/protocol.py) end to end on a tiny random model: arms, λ chosen on
source data, the learning gate in the report, resume, and the dev probe that stops before any target."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import protocol  # noqa: E402

TINY = ["--n-source", "2", "--n-target", "2", "--sft-steps-memorize", "1", "--sft-steps-qa", "1", "--grpo-steps", "2",
        "--grpo-prompts", "2", "--grpo-generations", "2", "--grpo-completion", "4", "--max-new-tokens", "4",
        "--grpo-lr", "1e-3", "--lams", "0.5", "1"]


def length_reward(completions, **_):
    """Reward variance for a random tiny model (it never writes an envelope, so GRPO would get zero gradient)."""
    return [len(c[-1]["content"]) / 100.0 for c in completions]


def test_protocol_bench_arms_selection_and_resume(tiny_model_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import past.rewards

    monkeypatch.setitem(past.rewards.RULE_REWARDS, "envelope", length_reward)
    out = tmp_path / "out"
    res = protocol.run(["--seeds", "0", "--base", str(tiny_model_dir), "--out", str(out), *TINY])
    s = res["seeds"][0]
    assert set(s["arms"]) == {"base", "sft", "past", "random", "target_grpo", "lam=0.5", "lam=1"}
    assert s["lam"] in (0.5, 1.0) and s["arms"]["past"]["lam"] == s["lam"]
    assert set(s["lam_selection"]) == {"0.5", "1"}  # chosen on the source's questions
    for a in s["arms"].values():
        assert a["n"] > 0 and 0 <= a["accuracy"] <= a["compliance"] <= 1
    g = s["steps"]["source_grpo"]
    assert g["steps"] == 2 and not g["learning"]["passed"] and "needs ≥ 40" in g["learning"]["reason"]
    assert s["steps"]["cosine"]["skill_norm"] > 0, "the length reward moved the weights: v is not zero"
    text = (out / "report.md").read_text()
    assert "| 0 | " in text and "FAIL" in text and "random vector, same per-tensor norm" in text
    assert not (out / "seed-0" / "work").exists(), "model folders of a finished seed are deleted"

    again = protocol.run(["--seeds", "0", "--base", str(tiny_model_dir), "--out", str(out), *TINY])  # resumes
    assert again["seeds"][0]["arms"] == s["arms"]
    protocol.run(["--render", str(out / "results.json"), "--plot", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_choose_lam_prefers_accuracy_then_the_smaller_lam() -> None:
    e = lambda a: {"accuracy": a}  # noqa: E731
    assert protocol.choose_lam({0.5: e(0.2), 1.0: e(0.4), 2.0: e(0.4)}) == 1.0
    assert protocol.choose_lam({0.5: e(0.0), 1.0: e(0.0)}) == 0.5


def test_dev_probe_stops_before_any_target(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "dev"
    res = protocol.run(["--dev", "--in-domain-only", "--seeds", "0", "--base", str(tiny_model_dir), "--out", str(out), *TINY])
    s = res["seeds"][0]
    assert set(s["steps"]) == {"source_sft", "source_grpo", "vector"} and s["dev"]
    assert not list((out / "seed-0" / "steps").glob("sft.json")) and "arms" not in s
    assert json.loads((out / "results.json").read_text())["seeds"][0]["in_domain"]["source_grpo"]["n"] > 0
