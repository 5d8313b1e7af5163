"""Iterative skill refinement (K=2) on tiny models: real SFT, real GRPO, real vector arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import past.refine as refine
from past.corpus import load_corpus, read_qa_jsonl
from past.grpo import GRPORecipe
from past.refine import RefreshError, partition_corpus, refresh_skill
from past.sft import SFTRecipe
from past.skill import read_vector


def length_reward(completions, **_):
    return [len(c[-1]["content"]) / 100.0 for c in completions]


def make_source(root: Path, n_docs: int = 4) -> Path:
    root.mkdir(parents=True)
    qa = []
    for i in range(n_docs):
        (root / f"doc{i}.md").write_text(f"# Gadget {i}\nThe gadget {i} costs {10 + i} credits and is blue.\n")
        qa += [{"question": f"How much does gadget {i} cost?", "answer": f"{10 + i} credits", "doc_id": f"doc{i}"},
               {"question": f"What colour is gadget {i}?", "answer": "blue", "doc_id": f"doc{i}"}]
    (root / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))
    return root


SFT = SFTRecipe(max_steps_memorize=2, max_steps_qa=2, batch_size=2, max_length=64, save_steps=1, lora_r=4, lora_alpha=8)
GRPO = GRPORecipe(max_steps=2, prompts_per_step=1, num_generations=2, max_completion_length=6, save_steps=1,
                  learning_rate=1e-3)


def test_partitions_are_disjoint_deterministic_and_complete(tmp_path: Path) -> None:
    corpus = load_corpus(make_source(tmp_path / "src", 5))
    parts = partition_corpus(corpus, 2, tmp_path / "p", seed=3)
    docs = [{d.id for d in load_corpus(p).documents} for p in parts]
    assert docs[0].isdisjoint(docs[1]) and docs[0] | docs[1] == {d.id for d in corpus.documents}
    assert abs(len(docs[0]) - len(docs[1])) <= 1
    again = partition_corpus(corpus, 2, tmp_path / "p2", seed=3)
    assert [load_corpus(p).id for p in parts] == [load_corpus(p).id for p in again]
    with pytest.raises(RefreshError, match="cannot make"):
        partition_corpus(corpus, 6, tmp_path / "p3")


def rl_questions(path: Path, n_docs: int = 4, doc_ids: list[str] | None = None) -> Path:
    rows = [{"question": f"What is the price of gadget {i}?", "answer": f"{10 + i} credits", "doc_id": d}
            for i, d in enumerate(doc_ids or [f"doc{i}" for i in range(n_docs)])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rl_questions_follow_their_documents_and_bad_ones_write_nothing(tmp_path: Path) -> None:
    from past.refine import rl_qa_file

    corpus = load_corpus(make_source(tmp_path / "src", 5))
    rl = read_qa_jsonl(rl_questions(tmp_path / "rl.jsonl", 5))
    parts = partition_corpus(corpus, 2, tmp_path / "p", seed=3, rl_qa=rl)
    for p in parts:
        docs = {d.id for d in load_corpus(p).documents}
        rows = read_qa_jsonl(rl_qa_file(p))
        assert rows and {q.doc_id for q in rows} <= docs, "an RL question goes with its document"
    assert sum(len(read_qa_jsonl(rl_qa_file(p))) for p in parts) == 5
    with pytest.raises(RefreshError, match="does not have"):
        partition_corpus(corpus, 2, tmp_path / "q", rl_qa=read_qa_jsonl(rl_questions(tmp_path / "bad.jsonl", doc_ids=["nope"])))
    with pytest.raises(RefreshError, match="no RL questions"):  # all on one document: one partition gets none
        partition_corpus(corpus, 2, tmp_path / "q", rl_qa=read_qa_jsonl(rl_questions(tmp_path / "one.jsonl", doc_ids=["doc0"])))
    assert not (tmp_path / "q").exists(), "checked before anything is written"
    partition_corpus(corpus, 2, tmp_path / "p", seed=3)  # re-partitioned without RL questions: none left behind
    assert not any(rl_qa_file(p).exists() for p in parts)


def test_refresh_k2_round2_starts_from_sft2_plus_v1_and_records_lineage(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    work, out = tmp_path / "work", tmp_path / "vector"
    res = refresh_skill(src, out, tiny_model_dir, 2, work, SFT, GRPO, extra_rewards=[length_reward], log=lambda m: None)
    assert [r["round"] for r in res.rounds] == [1, 2]
    assert res.rounds[0]["init"] == "sft" and res.rounds[1]["init"] == "sft+v_prev"

    # Round 2's GRPO started from θ_sft_2 + v_1, tensor by tensor.
    sft2 = load_file(work / "round-2" / "sft" / "model.safetensors")
    init2 = load_file(work / "round-2" / "init" / "model.safetensors")
    read_vector(work / "round-1" / "vector")  # manifest and shards consistent
    v1 = {}
    for f in sorted((work / "round-1" / "vector").glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            v1.update({k: h.get_tensor(k) for k in h.keys()})
    assert v1 and any(t.abs().max() > 0 for t in v1.values()), "v_1 must be non-zero for the check to mean anything"
    for name, w in sft2.items():
        expected = w.float() + v1[name].float() if name in v1 else w.float()
        assert torch.allclose(init2[name].float(), expected, atol=1e-6), name

    m = json.loads((out / "skill.json").read_text())
    lin = m["lineage"]
    assert lin["rounds"] == 2 and len(lin["partitions"]) == 2 and lin["source_corpus_ids"] == [load_corpus(src).id]
    assert set(lin["reward_curves"]) == {"round-1", "round-2"} and all(len(c) == 2 for c in lin["reward_curves"].values())
    assert lin["grpo_config"]["num_generations"] == 2 and lin["base_model"]["manifest_sha256"]
    assert set(lin["orthogonality"]) == {"round-1", "round-2"}
    assert set(lin["learning"]) == {"round-1", "round-2"} and all(v in (True, False) for v in lin["learning"].values())


def test_refresh_resumes_and_skips_finished_rounds(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    src = make_source(tmp_path / "src")
    work, out = tmp_path / "work", tmp_path / "vector"
    real_grpo = refine.train_grpo
    calls = {"n": 0}

    def crashing_grpo(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed during round 2")
        return real_grpo(*a, **kw)

    monkeypatch.setattr(refine, "train_grpo", crashing_grpo)
    with pytest.raises(RuntimeError, match="round 2"):
        refresh_skill(src, out, tiny_model_dir, 2, work, SFT, GRPO, extra_rewards=[length_reward], log=lambda m: None)
    assert (work / "round-1" / "round.json").exists() and not (work / "round-2" / "round.json").exists()
    assert not out.exists(), "no vector is published by a failed refresh"
    r1_mtime = (work / "round-1" / "rl" / "model.safetensors").stat().st_mtime_ns

    messages: list[str] = []
    monkeypatch.setattr(refine, "train_grpo", real_grpo)
    res = refresh_skill(src, out, tiny_model_dir, 2, work, SFT, GRPO, extra_rewards=[length_reward],
                        log=messages.append)
    assert any("round 1: already done" in m for m in messages)
    assert (work / "round-1" / "rl" / "model.safetensors").stat().st_mtime_ns == r1_mtime
    assert len(res.rounds) == 2 and (out / "skill.json").exists()
    with pytest.raises(RefreshError, match="already exists"):
        refresh_skill(src, out, tiny_model_dir, 2, work, SFT, GRPO)


def test_round_records_orthogonality_and_phases(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    part = partition_corpus(load_corpus(src), 1, tmp_path / "p")[0]
    rec = refine.run_round(1, part, tiny_model_dir, None, tmp_path / "work", SFT, GRPO, extra_rewards=[length_reward],
                           log=lambda m: None)
    o = rec["orthogonality"]["summary"]
    assert 0.0 <= o["mean_abs_layer_cosine"] <= o["max_abs_layer_cosine"] <= 1.0
    assert {"layer 000", "layer 001"} <= set(rec["orthogonality"]["per_layer"]) and o["skill_over_knowledge_norm"] > 0
    assert set(rec["phases"]) == {"sft_s", "inject_s", "grpo_s", "extract_analyze_s"}
    assert rec["grpo"]["questions"] == "train split"

    part = partition_corpus(load_corpus(src), 1, tmp_path / "p2", rl_qa=read_qa_jsonl(rl_questions(tmp_path / "rl.jsonl")))[0]
    rec = refine.run_round(1, part, tiny_model_dir, None, tmp_path / "work2", SFT, GRPO, extra_rewards=[length_reward],
                           log=lambda m: None)
    assert rec["grpo"]["questions"] == "rl_qa" and rec["grpo"]["n_questions"] == 4

    # resuming that round with other RL questions is refused, not silently reused
    part = partition_corpus(load_corpus(src), 1, tmp_path / "p2", rl_qa=read_qa_jsonl(rl_questions(tmp_path / "rl2.jsonl", 3)))[0]
    with pytest.raises(RefreshError, match="other GRPO questions"):
        refine.run_round(1, part, tiny_model_dir, None, tmp_path / "work2", SFT, GRPO, log=lambda m: None)


def test_cli_refresh_runs_rounds_and_fails_cleanly(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from past.cli import main

    src = make_source(tmp_path / "src")
    out = tmp_path / "vec"
    budgets = ["--base", str(tiny_model_dir), "--grpo-steps", "1", "--generations", "2", "--prompts-per-step", "1",
               "--completion-length", "4", "--sft-steps-memorize", "1", "--sft-steps-qa", "1", "--no-judge"]
    rl = rl_questions(tmp_path / "rl.jsonl")
    assert main(["skill", "refresh", str(src), "--rounds", "2", "--out", str(out), "--rl-qa", str(rl), *budgets]) == 0
    text = capsys.readouterr().out
    assert "round 1: done" in text and "round 2: done" in text and f"skill vector v_2: {out}" in text
    assert "(rl_qa)" in text, "GRPO trained on the given RL questions"
    assert json.loads((out / "skill.json").read_text())["lineage"]["rounds"] == 2
    assert main(["skill", "refresh", str(src), "--rounds", "2", "--out", str(out), *budgets]) == 2
    assert main(["skill", "refresh", str(src), "--rounds", "9", "--out", str(tmp_path / "v9"), *budgets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "cannot make 9 disjoint partitions" in err[-1]
    assert not (tmp_path / "v9").exists()
    (tmp_path / "bad.jsonl").write_text('{"question": "no answer"}\n')
    assert main(["skill", "refresh", str(src), "--out", str(tmp_path / "vb"), "--rl-qa", str(tmp_path / "bad.jsonl"),
                 *budgets]) == 2
    assert "answer" in capsys.readouterr().err and not (tmp_path / "vb").exists()


def test_a_tool_corpus_partitions_by_api_and_its_round_plays_episodes(tiny_model_dir: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """Tool corpus: APIs (their tasks and their documentation pages) are dealt to partitions, each carrying
    the whole spec; the round's GRPO plays whole episodes through the tool rollout with episode rewards."""
    import past.rewards
    from past.synthetic_tools import make_tool_domains, write_tool_corpus

    src, _ = make_tool_domains(seed=0, n_services=1, n_families=2, n_products=2)
    corpus = load_corpus(write_tool_corpus(src, tmp_path / "tools"))
    parts = [load_corpus(p) for p in partition_corpus(corpus, 2, tmp_path / "p")]
    apis = [{t.tool for t in p.tool_tasks} for p in parts]
    assert all(len(a) == 1 for a in apis) and not apis[0] & apis[1]
    assert all(p.tools is not None and len(p.tools.tools) == 2 for p in parts)  # the whole simulator
    for p, a in zip(parts, apis):
        assert [d.id for d in p.documents] == sorted(a)  # each API's page went with its tasks
    with pytest.raises(RefreshError, match="cannot make 3"):
        partition_corpus(corpus, 3, tmp_path / "p3")

    monkeypatch.setitem(past.rewards.RULE_REWARDS, "episode", length_reward)  # variance for a random model
    sft = SFTRecipe(max_steps_memorize=1, max_steps_qa=1, batch_size=2, max_length=128, save_steps=1, lora_r=4,
                    lora_alpha=8, eval_fraction=0.5, split_by="question")
    rec = refine.run_round(1, partition_corpus(corpus, 2, tmp_path / "p")[0], tiny_model_dir, None,
                           tmp_path / "work", sft, GRPO, log=lambda m: None)
    g = rec["grpo"]
    assert g["questions"] == "tool episodes" and g["rewards"] == ["episode", "episode_pass", "episode_finish"]
    assert g["max_completion_length"] == 48 and "episode_finish_reward" in g["per_reward_curves"]
    assert rec["orthogonality"]["summary"]["skill_over_knowledge_norm"] > 0


def test_a_refresh_round_trains_grpo_in_two_launched_processes(tiny_model_dir: Path, tmp_path: Path) -> None:
    """#15: a round whose GRPO recipe has processes=2 runs its RL under `accelerate launch` (the judge rebuilt in
    each process) and yields a non-zero skill vector with its orthogonality report, like an in-process round."""
    import dataclasses
    import zlib

    from past.rewards import JudgeReward
    from tests.fake_openai import FakeOpenAI

    part = partition_corpus(load_corpus(make_source(tmp_path / "src")), 1, tmp_path / "p")[0]
    with FakeOpenAI(lambda p: "Yes." if zlib.crc32(p.encode()) % 2 else "No.", models=("judge",)) as fake:
        rec = refine.run_round(1, part, tiny_model_dir, None, tmp_path / "work", SFT,
                               dataclasses.replace(GRPO, processes=2), judge=JudgeReward(fake.url, "judge"),
                               log=lambda m: None)
        assert fake.requests > 0
    assert rec["grpo"]["processes"] == 2 and rec["grpo"]["steps"] == 2 and len(rec["grpo"]["reward_curve"]) == 2
    assert "judge_reward" in rec["grpo"]["per_reward_curves"]
    assert rec["orthogonality"]["summary"]["skill_over_knowledge_norm"] > 0  # the policy moved under DDP
