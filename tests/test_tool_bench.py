"""The tool-use benchmark (bench/tools.py) end to end on a tiny random model: arms, λ chosen on source
episodes, whole-episode GRPO, the learning gate in the report, resume."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import tools  # noqa: E402

TINY = ["--n-services", "1", "--n-families", "1", "--n-products", "3", "--sft-steps-memorize", "1",
        "--sft-steps-qa", "1", "--grpo-steps", "2", "--grpo-prompts", "2", "--grpo-generations", "2",
        "--grpo-completion", "4", "--eval-completion", "4", "--max-turns", "2", "--grpo-lr", "1e-3",
        "--lams", "0.5", "1"]


def length_reward(completions, **_):
    """Reward variance for a random tiny model (it never writes a call, so every episode scores the same)."""
    return [len(c[-1]["content"]) / 100.0 for c in completions]


def test_tool_bench_arms_selection_and_resume(tiny_model_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import past.rewards

    monkeypatch.setitem(past.rewards.RULE_REWARDS, "episode", length_reward)
    out = tmp_path / "out"
    res = tools.run(["--seeds", "0", "--base", str(tiny_model_dir), "--out", str(out), *TINY])
    s = res["seeds"][0]
    assert set(s["arms"]) == {"base", "sft", "past", "random", "target_grpo", "lam=0.5", "lam=1"}
    assert s["lam"] in (0.5, 1.0) and s["arms"]["past"]["lam"] == s["lam"]
    assert set(s["lam_selection"]) == {"0.5", "1"}
    for a in s["arms"].values():
        assert a["n"] == 3 and 0 <= a["pass"] <= a["finish"] <= 1 and a["examples"]
    g = s["steps"]["source_grpo"]
    assert g["steps"] == 2 and not g["learning"]["passed"]
    assert "episode_pass_reward" in g["per_reward_curves"]
    assert s["steps"]["cosine"]["skill_norm"] > 0, "the length reward moved the weights: v is not zero"
    text = (out / "report.md").read_text()
    assert "| 0 | " in text and "FAIL" in text and "random vector, same per-tensor norm" in text
    assert not (out / "seed-0" / "work").exists(), "model folders of a finished seed are deleted"
    again = tools.run(["--seeds", "0", "--base", str(tiny_model_dir), "--out", str(out), *TINY])  # resumes
    assert again["seeds"][0]["arms"] == s["arms"]


def test_choose_lam_prefers_pass_then_finish_then_the_smaller_lam() -> None:
    e = lambda p, f: {"pass": p, "finish": f}  # noqa: E731
    assert tools.choose_lam({0.5: e(0.1, 0.2), 1.0: e(0.1, 0.5), 2.0: e(0.0, 0.9)}) == 1.0
    assert tools.choose_lam({0.5: e(0.0, 0.0), 1.0: e(0.0, 0.0)}) == 0.5
