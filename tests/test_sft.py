"""Two-stage SFT on a tiny random model: both stages run and learn, answers-only loss, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from past.corpus import load_corpus
from past.models import MANIFEST, verify_model_dir
from past.sft import SFTError, SFTRecipe, last_complete_checkpoint, qa_examples, run_sft

FACTS = Path(__file__).parent / "data" / "facts"


def test_two_stages_run_loss_falls_and_merged_model_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = SFTRecipe(max_steps_memorize=12, max_steps_qa=12, batch_size=4, max_length=128, save_steps=100,
                       lr_memorize=3e-3, lr_qa=3e-3, lora_r=8, lora_alpha=16)
    out = tmp_path / "sft-out"
    m = run_sft(FACTS, out, tiny_model_dir, recipe, runs_dir=tmp_path / "runs", progress=False)
    for stage in ("memorize", "qa"):
        s = m[stage]
        assert s["steps"] == 12 and len(s["loss_curve"]) == 12 and s["tokens"] > 0 and s["wall_s"] > 0
        assert s["loss_last"] < s["loss_first"] - 0.05, (stage, s["loss_curve"])
        assert 0.1 < s["peak_rss_gb"] < 64 and s["tokens_per_s"] > 0  # measured per stage, for manifest + MLflow
    assert m["split"]["train"] == 24 and m["split"]["eval"] == 6
    assert (Path(m["work_dir"]) / "splits" / "eval.jsonl").is_file()

    # a plain model folder: no adapter files, manifest intact, chat template and generation config kept
    assert verify_model_dir(out) == []
    names = {p.name for p in out.iterdir()}
    assert "adapter_config.json" not in names and {"config.json", "generation_config.json"} <= names
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["corpus_id"] == load_corpus(FACTS).id and manifest["metrics"]["qa"]["steps"] == 12
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert tok.chat_template and set(model.state_dict()) == set(base.state_dict())
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert any("q_proj" in k for k in changed)  # LoRA deltas were merged into the dense weights
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of Velmora?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert torch.isfinite(model(**ids).logits).all()

    # the same call again is a no-op that returns the recorded metrics
    t0 = time.perf_counter()
    assert run_sft(FACTS, out, tiny_model_dir, recipe, runs_dir=tmp_path / "runs", progress=False)["run_key"] == m["run_key"]
    assert time.perf_counter() - t0 < 5


def test_stage2_loss_is_on_answer_tokens_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = load_corpus(FACTS).qa[:2]
    trainer = SFTTrainer(model=str(tiny_model_dir), processing_class=tok,
                         train_dataset=Dataset.from_list(qa_examples(pairs)),
                         args=SFTConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, report_to="none",
                                        completion_only_loss=True, max_length=128))
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([row])
    labels = batch["labels"][0]
    trained = tok.decode(labels[labels != -100])
    assert trained.strip() == f"{pairs[0].answer}<|im_end|>"
    full = tok.decode(row["input_ids"])
    assert pairs[0].question in full and full.index(pairs[0].question) < full.index(pairs[0].answer)


def test_resume_after_sigkill(tiny_model_dir: Path, tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "model"
    cmd = [sys.executable, "-m", "past.cli", "sft", str(FACTS), "--out", str(out), "--base", str(tiny_model_dir),
           "--work", str(work), "--max-steps-memorize", "40", "--max-steps-qa", "4", "--save-steps", "4",
           "--batch-size", "2", "--max-length", "128", "--quiet", "--metrics", str(tmp_path / "m.json")]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    ckpts = work / "stage1" / "checkpoints"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            ck = last_complete_checkpoint(ckpts) if ckpts.is_dir() else None
            if ck is not None and int(ck.name.split("-")[1]) >= 8:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the honest crash: no handler runs
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    assert not out.exists() and not (work / "stage1" / "model").exists()
    killed_at = int(last_complete_checkpoint(ckpts).name.split("-")[1])
    assert 8 <= killed_at < 40

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["memorize"]["resumed_from_step"] >= killed_at > 0
    assert m["memorize"]["steps"] == 40 and m["qa"]["steps"] == 4
    assert len(m["memorize"]["loss_curve"]) == 40  # the pre-crash losses came back with the checkpoint
    assert verify_model_dir(out) == []

    # a finished stage is not redone: drop only the published model and run again
    import shutil

    shutil.rmtree(out)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    m2 = json.loads((tmp_path / "m.json").read_text())
    assert m2["memorize"].get("skipped") and m2["qa"].get("skipped") and verify_model_dir(out) == []


def test_no_qa_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    from past.sft import SFTError

    c = tmp_path / "c"
    c.mkdir()
    (c / "a.md").write_text("# A\n\nA is a letter.")
    with pytest.raises(SFTError, match="no QA pairs"):
        run_sft(c, tmp_path / "o", tiny_model_dir, SFTRecipe(), runs_dir=tmp_path / "runs")
    assert not (tmp_path / "o").exists()


def test_packed_documents_do_not_attend_across(tiny_model_dir: Path) -> None:
    """Stage 1 packs documents (TRL bfd, padding-free: position_ids restart per document, no attention mask).
    With SDPA on CPU, transformers turns restarting position_ids into a block-diagonal mask when no cache is
    used - TRL's compute_loss passes use_cache=False - so a document never attends to its block neighbour."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 1000, (1, 7), generator=g), torch.randint(0, 1000, (1, 5), generator=g)
    pos = torch.cat([torch.arange(7), torch.arange(5)])[None]
    with torch.no_grad():
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=pos, use_cache=False).logits[0, 7:]
        alone = model(input_ids=b, use_cache=False).logits[0]
    assert torch.allclose(packed, alone, atol=1e-4)


def test_memorize_texts_adds_implications() -> None:
    from past.sft import memorize_texts

    c = load_corpus(FACTS)
    plain = memorize_texts(c)
    assert len(plain) == 10 and plain[0][2].startswith("# ")
    more = memorize_texts(c, {c.documents[0].id: ["Fact one.", "Fact two."]})
    assert len(more) == 11 and more[1] == (f"{c.documents[0].id}#implications", c.documents[0].title,
                                           f"{c.documents[0].title}\n\nFact one.\nFact two.")


def test_stage_entry_points_with_external_qa(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The per-stage API the Prefect tasks call, on a corpus without qa.jsonl plus QA from a file."""
    import shutil

    from past.corpus import read_qa_jsonl
    from past.sft import run_memorize, run_qa

    corpus = tmp_path / "docs-only"
    shutil.copytree(FACTS, corpus, ignore=shutil.ignore_patterns("qa.jsonl"))
    qa = read_qa_jsonl(FACTS / "qa.jsonl")
    recipe = SFTRecipe(max_steps_memorize=2, max_steps_qa=2, batch_size=4, max_length=128)
    r1 = run_memorize(corpus, tiny_model_dir, recipe, tmp_path / "work", progress=False)
    assert verify_model_dir(r1["model"]) == [] and r1["metrics"]["steps"] == 2
    assert run_memorize(corpus, tiny_model_dir, recipe, tmp_path / "work", progress=False)["metrics"]["skipped"]
    r2 = run_qa(corpus, r1["model"], tiny_model_dir, recipe, tmp_path / "work", tmp_path / "out", qa=qa,
                progress=False)
    rows = [json.loads(x) for x in Path(r2["eval_split"]).read_text().splitlines()]
    assert len(rows) == 6 and {r["corpus_id"] for r in rows} == {load_corpus(corpus).id}
    assert r2["metrics"]["memorize"]["steps"] == 2 and r2["metrics"]["qa"]["steps"] == 2
    assert verify_model_dir(tmp_path / "out") == []


def test_a_stage_logs_progress_and_checkpoints_by_time(tiny_model_dir: Path, tmp_path: Path, caplog) -> None:
    """#16: a 20-minute stage wrote nothing to the run log, and with save_steps=50 a 21-step stage ended with
    no checkpoint. save_every_s=1e-9 means 'a checkpoint after every step' here (save_steps alone: none)."""
    import logging

    from past.sft import train_stage

    rows = [{"text": f"The Velmora bridge {i} is {i} metres long."} for i in range(8)]
    recipe = SFTRecipe(batch_size=2, max_length=64, save_steps=1000, save_total_limit=10, save_every_s=1e-9,
                       lora_r=4, lora_alpha=8)
    with caplog.at_level(logging.INFO, logger="past.sft"):
        m = train_stage("memorize", tiny_model_dir, rows, recipe, tmp_path / "s1", tmp_path / "s1" / "model",
                        epochs=1, lr=1e-3, max_steps=4, packing=False, progress=False, save_model=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "past.sft"]
    assert m["steps"] == 4 and lines[0] == "sft memorize: 4 steps"
    assert any(line.startswith("sft memorize: step 4/4, loss ") and "s/step" in line for line in lines), lines
    ckpts = sorted(p.name for p in (tmp_path / "s1" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"], ckpts
    # checkpoint cadence does not change what is trained: it is not part of the recipe's key
    assert SFTRecipe(save_every_s=0, save_steps=7).key() == SFTRecipe().key()


def test_stage1_key_ignores_stage2_fields() -> None:
    """Changing how stage 2 trains (lr, steps, rehearsal, split) reuses stage 1; a stage-1 field does not."""
    from past.sft import SFTRecipe

    r = SFTRecipe()
    for change in ({"lr_qa": 1e-3}, {"min_steps_qa": 7}, {"replay_examples": 0}, {"split_by": "question"},
                   {"batch_size": 2}):
        assert SFTRecipe(**change).memorize_key() == r.memorize_key(), change
        assert SFTRecipe(**change).key() != r.key(), change
    for change in ({"lr_memorize": 1e-3}, {"batch_size_memorize": 4}, {"epochs_memorize": 9}, {"max_length": 256}):
        assert SFTRecipe(**change).memorize_key() != r.memorize_key(), change
    with pytest.raises(Exception, match="batch_size"):
        SFTRecipe(batch_size_memorize=0)


def test_stage1_micro_batches_make_the_same_update_as_one_forward(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A stage-1 batch of 4 packed blocks run as 4 micro-batches with accumulation (the memory fix: a packed
    batch is one padding-free row, attention over all of it) gives the loss curve and weights of one forward."""
    import torch
    from transformers import AutoTokenizer

    from past.sft import fit_stage, memorize_rows

    rows, _ = memorize_rows(load_corpus(FACTS), AutoTokenizer.from_pretrained(tiny_model_dir), 64, 16)
    assert len(rows) >= 8
    runs = {}
    for micro in (4, 1):
        recipe = SFTRecipe(batch_size_memorize=4, micro_batch_memorize=micro, max_length=64, lr_memorize=3e-3,
                           save_steps=100, save_every_s=0)
        trainer, _, m = fit_stage(name="memorize", model_dir=str(tiny_model_dir), rows=rows, recipe=recipe,
                                  stage_dir=str(tmp_path / f"m{micro}"), epochs=1.0, lr=3e-3, max_steps=3, packing=True,
                                  min_steps=0, batch_size=4, progress=False)
        assert m["steps"] == 3 and m["tokens"] == runs.get(4, m)["tokens"]
        runs[micro] = m | {"weights": {k: v.detach().clone() for k, v in trainer.model.named_parameters()
                                       if v.requires_grad}}
    assert runs[1]["accumulation"] == 4 and "accumulation" not in runs[4]
    assert runs[1]["loss_curve"] == pytest.approx(runs[4]["loss_curve"], rel=1e-4)
    assert runs[1]["loss_curve"][-1] < runs[1]["loss_curve"][0]  # it trained
    for k, w in runs[4]["weights"].items():
        # Adam normalizes each coordinate, so near-zero gradients differing in the last float bits move by up
        # to ~1e-4 here; a step of lr 3e-3 on the wrong data moves by ~3e-3
        assert torch.allclose(runs[1]["weights"][k], w, atol=3e-4), k
    # operational: the same key (an existing stage-1 model is reused); the split always covers the batch exactly
    assert SFTRecipe(micro_batch_memorize=8).key() == SFTRecipe().key()
    assert SFTRecipe(micro_batch_memorize=8).memorize_key() == SFTRecipe().memorize_key()
    from past.sft import _micro_batch
    assert [_micro_batch(8, m) for m in (1, 3, 4, 8, 99)] == [1, 2, 4, 8, 8] and _micro_batch(6, 4) == 3


def test_bf16_stage_trains_under_autocast_against_fp32(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """`bf16=True` on a CPU with bf16 instructions: the forward runs in bf16 under autocast, the loss curve stays
    close to fp32's (the same update, rounded), the merged model is fp32, and the key records it."""
    import torch
    from transformers import AutoTokenizer

    from past.sft import fit_stage, memorize_rows

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no bf16 instructions")
    rows, _ = memorize_rows(load_corpus(FACTS), AutoTokenizer.from_pretrained(tiny_model_dir), 64, 16)
    runs = {}
    for bf16 in (False, True):
        recipe = SFTRecipe(batch_size_memorize=4, max_length=64, save_steps=100, save_every_s=0, bf16=bf16)
        trainer, _, m = fit_stage(name="memorize", model_dir=str(tiny_model_dir), rows=rows, recipe=recipe,
                                  stage_dir=str(tmp_path / f"b{bf16}"), epochs=1.0, lr=3e-3, max_steps=3,
                                  packing=True, min_steps=0, batch_size=4, progress=False)
        head = trainer.model.get_output_embeddings()
        seen = []
        hook = head.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
        with trainer.accelerator.autocast():
            trainer.model(input_ids=torch.tensor([rows[0]["input_ids"][:16]]))
        hook.remove()
        runs[bf16] = (m["loss_curve"], seen[0], {p.dtype for p in trainer.model.parameters()})
    assert runs[False][1] == torch.float32 and runs[True][1] == torch.bfloat16
    assert runs[True][2] == {torch.float32}  # master weights stay fp32
    assert runs[True][0] == pytest.approx(runs[False][0], rel=0.05) and runs[True][0][-1] < runs[True][0][0]
    assert "bf16" not in SFTRecipe().key() and SFTRecipe(bf16=True).memorize_key()["bf16"] is True
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(SFTError, match="no bf16 support"):
        SFTRecipe(bf16=True).mixed_precision()


def test_stage1_under_accelerate_launch_with_two_processes(tiny_model_dir: Path, tmp_path: Path) -> None:
    """#15: `processes=2` trains stage 1 in two DDP processes (gloo on CPU) through `accelerate launch`. Against
    one process at twice the per-device batch (the same effective batch), the loss curve has the same length and
    shape, and the merged model is a valid, verified model folder with the LoRA deltas merged in."""
    import torch
    from transformers import AutoModelForCausalLM

    from past.sft import run_memorize

    common = dict(max_steps_memorize=10, max_length=64, save_steps=100, lr_memorize=3e-3, lora_r=8, lora_alpha=16)
    one = run_memorize(FACTS, tiny_model_dir, SFTRecipe(batch_size_memorize=4, **common), tmp_path / "one",
                       progress=False)
    two = run_memorize(FACTS, tiny_model_dir, SFTRecipe(batch_size_memorize=2, processes=2, **common), tmp_path / "two",
                       progress=False)
    a, b = one["metrics"], two["metrics"]
    assert b["processes"] == 2 and "processes" not in a and a["steps"] == b["steps"] == 10
    assert (tmp_path / "two" / "stage1" / "launched" / "launch.log").is_file()
    for m in (a, b):
        assert m["loss_last"] < m["loss_first"] - 0.05, m["loss_curve"]
    assert abs(a["loss_curve"][0] - b["loss_curve"][0]) < 0.5 and abs(a["loss_last"] - b["loss_last"]) < 1.0, \
        (a["loss_curve"], b["loss_curve"])
    assert one["run_key"] != two["run_key"] and verify_model_dir(two["model"]) == []
    merged = AutoModelForCausalLM.from_pretrained(two["model"], dtype=torch.float32).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    assert set(merged) == set(base) and any(not torch.equal(v, base[k]) for k, v in merged.items() if "q_proj" in k)


def test_a_failed_launch_is_a_clear_error_and_publishes_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    from past.sft import SFTError, run_memorize

    bad = SFTRecipe(max_steps_memorize=2, max_length=64, processes=2, lora_targets="no_such_module")
    with pytest.raises(SFTError, match="accelerate launch.*exited"):
        run_memorize(FACTS, tiny_model_dir, bad, tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "stage1" / "model").exists()


def test_mixed_training_puts_the_training_qa_and_only_it_into_stage1(tiny_model_dir: Path, tmp_path: Path) -> None:
    """mix_qa: stage 1 trains the training side of the QA, split exactly as stage 2 splits it; a held-out
    question never reaches stage 1; the stage-1 key changes with it (a new stage-1 model, not the old one)."""
    from transformers import AutoTokenizer

    from past.corpus import split_qa
    from past.sft import mixed_qa_rows, run_memorize, run_qa

    c = load_corpus(FACTS)
    recipe = SFTRecipe(max_steps_memorize=1, max_steps_qa=1, batch_size=4, max_length=128, mix_qa=True,
                       split_by="question", eval_fraction=0.3, replay_examples=0, check_train_qa=0)
    plain = run_memorize(FACTS, tiny_model_dir, SFTRecipe(max_steps_memorize=1, max_length=128), tmp_path / "w0",
                         progress=False)
    r1 = run_memorize(FACTS, tiny_model_dir, recipe, tmp_path / "work", progress=False)
    train, held = split_qa(list(c.qa), 0.3, 0, "question")
    assert held and r1["metrics"]["mixed_qa"] == len(train) and r1["run_key"] != plain["run_key"]
    r2 = run_qa(FACTS, r1["model"], tiny_model_dir, recipe, tmp_path / "work", tmp_path / "out", progress=False)
    trained = {json.loads(x)["id"] for x in Path(r2["train_split"]).read_text().splitlines()}
    assert trained == {p.id for p in train}  # stage 1 mixed in exactly stage 2's training side
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tok.decode(mixed_qa_rows(tok, train[:1])[0]["input_ids"])
    assert train[0].question in text and train[0].answer in text
    assert not any(p.question in tok.decode(r["input_ids"]) for p in held for r in mixed_qa_rows(tok, train))


def test_stage1_rehearsal_trains_the_base_models_own_answers(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """replay_memorize: stage 1 packs the same rehearsal pairs stage 2 trains (base-model answers to the shipped
    prompts) beside the documents; the stage-1 key changes with it; it is refused without rehearsal pairs."""
    import past.sft
    from past.replay import replay_pairs
    from past.sft import SFTError

    seen: list[list[dict]] = []
    real = past.sft.train_stage
    monkeypatch.setattr(past.sft, "train_stage", lambda stage, base, rows, *a, **k: seen.append(rows) or real(
        stage, base, rows, *a, **k))
    kw = dict(max_steps_memorize=1, max_length=128, replay_examples=3, replay_max_tokens=8)
    plain = past.sft.run_memorize(FACTS, tiny_model_dir, SFTRecipe(**kw), tmp_path / "w0", progress=False)
    r1 = past.sft.run_memorize(FACTS, tiny_model_dir, SFTRecipe(**kw, replay_memorize=True), tmp_path / "w1",
                               progress=False)
    pairs = replay_pairs(tiny_model_dir, 3, 8, tmp_path / "w1" / "replay")
    assert pairs and r1["metrics"]["replay"] == len(pairs) and r1["run_key"] != plain["run_key"]
    assert len(seen[1]) == len(seen[0]) + len(pairs)  # the documents' windows, plus one row per rehearsal pair
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tok.decode(seen[1][-1]["input_ids"])
    assert pairs[-1]["prompt"] in text and pairs[-1]["answer"] in text
    with pytest.raises(SFTError, match="replay_memorize needs replay_examples"):
        SFTRecipe(replay_memorize=True, replay_examples=0)


def test_the_sft_section_sets_each_stage_rate_and_stage1_rehearsal() -> None:
    from past.config import load_settings

    same = SFTRecipe.from_settings(load_settings(env={}, sft={"lr_memorize": 1e-3, "lr_qa": 1e-3}))
    split = SFTRecipe.from_settings(load_settings(env={}, sft={"lr_memorize": 1e-3, "lr_qa": 5e-4,
                                                              "replay_memorize": True}))
    assert (same.lr_memorize, same.lr_qa, same.replay_memorize) == (1e-3, 1e-3, False)
    assert (split.lr_memorize, split.lr_qa, split.replay_memorize) == (1e-3, 5e-4, True)
    assert split.memorize_key() != same.memorize_key() and "replay_memorize" not in same.memorize_key()
    with pytest.raises(ValueError, match="lr_qa 0"):
        load_settings(env={}, sft={"lr_qa": 0})
