"""The method benchmark's machinery end to end on a tiny random model, 1 seed, tiny budgets (no SmolLM2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import method  # noqa: E402
from bench.method_report import ORDER, dev_choice  # noqa: E402

TINY = ["--n-source", "4", "--n-target", "3", "--sft-steps-memorize", "1", "--sft-steps-qa", "1", "--grpo-steps", "1",
        "--grpo-prompts", "2", "--grpo-generations", "2", "--grpo-completion", "4", "--max-new-tokens", "4",
        "--sft-max-length", "64", "--sft-batch", "2", "--sft-lora-r", "4", "--grpo-lr", "1e-3"]


def length_reward(completions, **_):
    """Reward variance for a random tiny model (its token-F1 is always 0, so GRPO would get zero gradient)."""
    return [len(c[-1]["content"]) / 100.0 for c in completions]


def test_all_arms_schema_resume_and_report(tiny_model_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import past.rewards

    monkeypatch.setitem(past.rewards.RULE_REWARDS, "format", length_reward)
    out, md = tmp_path / "out", tmp_path / "docs" / "RESULTS.md"
    argv = ["--seeds", "0", "--base", str(tiny_model_dir), "--out", str(out), "--results-md", str(md),
            "--keep-models", *TINY]
    res = method.run(argv)
    lams = list(res["budget"]["lams"])
    assert lams == sorted(lams) and lams == [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
    arms = res["seeds"][0]["arms"]
    assert set(arms) == set(ORDER) | {f"lam={x:g}" for x in lams}
    for arm, a in arms.items():
        for kind in ("paraphrase", "doc_only", "two_fact", "overall"):
            s = a["summary"][kind]
            assert s["n"] > 0, (arm, kind)
            for m in ("exact_match", "token_f1", "contains", "correct"):
                assert 0.0 <= s[m] <= 1.0, (arm, kind, m, s[m])
        assert a["marginal_s"] >= 0 and a["one_off_s"] >= 0
    assert arms["past"]["summary"] == arms["lam=1"]["summary"]
    assert arms["target_grpo"]["marginal_s"] > arms["sft"]["marginal_s"] > 0
    assert arms["past"]["one_off_s"] > arms["k1"]["one_off_s"] > 0, "K=2 refresh costs more than its round 1"
    n = res["seeds"][0]["n_heldout"]
    assert arms["sft"]["summary"]["overall"]["n"] == sum(n.values()) == 3 * 4 + 3 * 2 + n["two_fact"]
    cos = res["seeds"][0]["steps"]["cosine_K"]["per_layer_cosine"]
    assert {"layer 000", "layer 001"} <= set(cos)

    # the random control really differs from θ_sft_T, by the skill vector's norm
    from safetensors.torch import load_file

    sft = load_file(out / "seed-0" / "work" / "sft" / "model.safetensors")
    rnd = load_file(out / "seed-0" / "work" / "random" / "model.safetensors")
    vec = {}
    for f in (out / "seed-0" / "work" / "vector").glob("skill*.safetensors"):
        vec |= load_file(f)
    name = next(k for k, v in vec.items() if float(v.norm()) > 0)
    assert abs(float((rnd[name] - sft[name]).norm()) - float(vec[name].norm())) < 1e-3 * float(vec[name].norm()) + 1e-6

    text = md.read_text()
    assert "target SFT only" in text and "flock -x" in text and (md.parent / "results-lambda.png").is_file()
    assert "paired by seed" in text and "| refresh round 2 | 1 |" in text and "| target GRPO | 1 |" in text
    assert json.loads((out / "results.json").read_text())["seeds"][0]["arms"].keys() == arms.keys()

    # the answer-provenance diagnostic reads the same folder: every paraphrase answer in exactly one bucket
    from bench.method_answers import BUCKETS, table, tally

    counts = tally(out)
    assert set(counts) == (set(ORDER) - {"past"}) | {f"lam={x:g}" for x in lams if x} | {"chance"}  # past = lam=1
    for arm, groups in counts.items():
        assert abs(sum(sum(c.values()) for c in groups.values()) - n["paraphrase"]) < 1e-9, arm
        assert all(set(c) <= set(BUCKETS) for c in groups.values())
    assert any("| chance |" in row for row in table(counts))

    # a rerun resumes: every step and evaluation is read back, nothing retrained (same answers, same walls);
    # hand-written notes below the marker survive the re-render
    md.write_text(md.read_text() + "\n## Reading\nnotes kept\n")
    again = method.run(argv)
    assert again["seeds"][0]["arms"] == arms
    assert md.read_text().count("notes kept") == 1 and md.read_text().count("target SFT only") == text.count("target SFT only")


def test_dev_mode_never_builds_the_target_domain_and_refuses_to_publish(tiny_model_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = method.make_domains
    monkeypatch.setattr(method, "make_domains", lambda seed, *a: seen.append(seed) or real(seed, *a))
    out = tmp_path / "dev"
    res = method.run(["--dev", "--seeds", "0", "--base", str(tiny_model_dir), "--out", str(out), "--arms", "base",
                      "sft", "lam=0", "lam=1", "--lams", "0", "1", "--rounds", "1", "--results-md", str(tmp_path / "R.md"), *TINY])
    assert seen == [method.DEV_SEED_OFFSET] and not (tmp_path / "R.md").exists()
    items = [json.loads(x) for x in (out / "seed-0" / "heldout.jsonl").read_text().splitlines()]
    assert items and all(it["id"].startswith("dev-target-") for it in items)
    assert res["dev_choice"]["lam"] in (0.0, 1.0)
    with pytest.raises(AssertionError):
        dev_choice(res | {"dev": False})
    with pytest.raises(SystemExit, match="not a dev run"):
        fake = tmp_path / "final.json"
        fake.write_text(json.dumps(res | {"dev": False}))
        method.run(["--settings-from", str(fake), "--base", str(tiny_model_dir), "--out", str(tmp_path / "x")])


def test_scoring_rejects_format_only_and_both_names_answers() -> None:
    items = [{"id": "a", "kind": "paraphrase", "answer": "5 seconds"},
             {"id": "b", "kind": "two_fact", "answer": "Zorvex Lamp", "distractor": "Belmo Hub"},
             {"id": "c", "kind": "two_fact", "answer": "Zorvex Lamp", "distractor": "Belmo Hub"},
             {"id": "d", "kind": "doc_only", "answer": "Orrin"}]
    answers = ["12 seconds", "The Zorvex Lamp costs 10 credits and the Belmo Hub 20.", "The Zorvex Lamp.", ""]
    rows = method.score_items(items, answers)["items"]
    assert [r["correct"] for r in rows] == [0.0, 0.0, 1.0, 0.0]
    assert rows[1]["contains"] == 1.0, "contains still reports the raw containment"
