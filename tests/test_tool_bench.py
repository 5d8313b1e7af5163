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


def test_finish_demos_are_whole_episodes_the_simulator_agrees_with(tiny_model_dir: Path, tmp_path: Path) -> None:
    """--source-finish-demos: request -> the task's call -> its real observation -> Finish with the answer; the
    source SFT trains them (a new run key), and --sft-only stops after its in-domain episodes."""
    from past.synthetic_tools import make_tool_domains
    from past.tools import FINISH, parse_action

    source, _ = make_tool_domains(0, 1, 1, 3)
    demos = tools.finish_demos(source, 0.5, seed=0)
    assert len(demos) == round(0.5 * len(source.tasks["train"])) >= 1
    d = demos[0]
    assert [m["role"] for m in d["prompt"]] == ["user", "assistant", "user"]
    assert d["prompt"][2]["content"].startswith("Observation: ") and "error" not in d["prompt"][2]["content"]
    step = parse_action(d["completion"][0]["content"])
    task = next(t for t in source.tasks["train"] if t["request"] in d["prompt"][0]["content"])
    assert step.name == FINISH and step.arguments == {"answer": task["answer"]}
    assert task["answer"] in d["prompt"][2]["content"], "the answer Finish gives is in the observation"
    assert tools.finish_demos(source, 0.5, seed=0) == demos and tools.finish_demos(source, 0.0, seed=0) == []

    res = tools.run(["--seeds", "0", "--base", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--sft-only",
                     "--source-finish-demos", "0.5", *TINY])
    s = res["seeds"][0]
    assert s["steps"]["source_sft"]["demos"] == len(demos) and set(s["in_domain"]) == {"source_sft"}
    assert "source_grpo" not in s["steps"]
