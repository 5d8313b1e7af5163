"""The Prefect flows end to end, under Prefect's test harness, with real MLflow (SQLite) and tiny models.

One test serves the candidate with a real vLLM CPU server; the others point the gate at a small
OpenAI-compatible stdlib server (PAST_SERVE_URL) so that crash/re-run, watch and backfill stay fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from past.config import load_settings
from past.inbox import read_ledger
from past.registry import Registry, folder_sha256
from past.skill import extract
from tests.fake_openai import FakeOpenAI
from tests.test_notify import Receiver


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=180):
        yield


def write_corpus(root: Path, tag: str, n_docs: int = 3) -> Path:
    root.mkdir(parents=True)
    qa = []
    for i in range(n_docs):
        (root / f"d{i}.md").write_text(f"# {tag} device {i}\nThe {tag} device {i} costs {i + 10} credits.\n")
        qa.append({"question": f"How much does the {tag} device {i} cost?", "answer": f"{i + 10} credits",
                   "doc_id": f"d{i}"})
    (root / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))
    return root


@pytest.fixture()
def env(monkeypatch, tiny_model_dir: Path) -> None:
    for k, v in {"PAST_BASE_MODEL": str(tiny_model_dir), "PAST_GATE_MIN_ACCURACY": "0",
                 "PAST_GATE_RETENTION_TOLERANCE": "1", "PAST_SFT__EPOCHS_MEMORIZE": "1", "PAST_SFT__EPOCHS_QA": "1",
                 "PAST_GATE_MAX_TOKENS": "8", "PAST_GATE_MIN_NEW_ITEMS": "1", "PAST_GATE_MARGIN": "-1",
                 "PAST_SFT_MIN_TRAIN_RECALL": "0", "PAST_SFT__MIN_STEPS_QA": "2",
                 # rehearsal stays in the path, small: 48 base-model answers per tiny SFT cost minutes per suite
                 # (rehearsal itself is tested in tests/test_replay.py)
                 "PAST_SFT__REPLAY_EXAMPLES": "2"}.items():
        monkeypatch.setenv(k, v)


@pytest.fixture()
def vector(make_tiny, tmp_path: Path) -> Path:
    """A real skill vector between two tiny checkpoints (as a refresh would produce)."""
    out = tmp_path / "vector"
    extract(make_tiny("rl", seed=1), make_tiny("sft", seed=0), out, progress=False)
    return out


def vllm_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-fa", "vllm.entrypoints.openai.api_server"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


@pytest.mark.vllm
def test_adapt_end_to_end_real_vllm_and_mlflow(harness, env, vector, serve_python, monkeypatch, tmp_path) -> None:
    from flows.adapt import adapt

    monkeypatch.setenv("PAST_SERVE_PYTHON", str(serve_python))
    s = load_settings()
    reg = Registry(s)
    vversion = reg.register_skill_vector(vector)
    corpus = write_corpus(tmp_path / "corpus", "zorvex")

    t0 = time.monotonic()
    out = adapt(str(corpus))
    assert out["promoted"] is True and out["version"] == "1", out
    assert out["skill_vector"] == vversion and out["lambda"] == 1.0
    mv = reg.champion("support-bot")
    assert mv is not None and str(mv.version) == "1"
    assert mv.tags["gate"] == "passed" and mv.tags["skill_vector_version"] == vversion
    # no champion yet: the first candidate was compared with the base model, served by vLLM the same way
    assert mv.tags["compared_with"].startswith("base:") and "champion_general_accuracy" in out["gate"]
    run = reg.client.get_run(out["mlflow_run_id"])
    assert run.data.params["skill_vector_version"] == vversion and "sft_qa_loss_last" in run.data.metrics
    for stage, steps in (("memorize", 1), ("qa", 2)):  # training curves as step metrics (≥ 1 and ≥ 2 steps here)
        hist = reg.client.get_metric_history(run.info.run_id, f"sft_{stage}_loss")
        assert len(hist) >= steps and sorted(m.step for m in hist) == list(range(len(hist))), hist
    assert read_ledger(s.home, out["corpus_id"])["status"] == "promoted"
    assert (Path(out["candidate"]) / "past-model.json").exists()
    card = (Path(out["candidate"]) / "README.md").read_text()  # the model card, with the gate's numbers
    assert f"| {out['gate']['candidate_new_accuracy']:.3f} |" in card and f"| skill vector | {vversion} |" in card
    assert reg.alias("support-bot", "challenger").version == 1
    from prefect.artifacts import Artifact

    link = Artifact.get(f"adapt-support-bot-{out['corpus_id'][:12]}-mlflow")
    assert link is not None and link.data.endswith("/#/models/support-bot/versions/1)")  # [text](url)
    assert not vllm_processes(), "the candidate's vLLM server is shut down"
    from past.review import review

    found = {f.check: f for f in review(s, "support-bot")}  # what a reviewer finds, through MLflow alone
    assert found["support-bot v1: SFT qa loss curve"].ok
    assert found["support-bot v1: model card = gate report"].ok, found
    assert found["models:/support-bot@champion loads with mlflow.pyfunc"].ok, found
    assert not found[f"skill vector v{vversion}: refresh run"].ok  # registered by hand here, no refresh run
    (Path(out["candidate"]) / "README.md").write_text(card.replace("| skill vector |", "| skill vector (edited) |"))
    assert not {f.check: f for f in review(s, "support-bot", load_model=False)}[
        "support-bot v1: model card = gate report"].ok, "an edited card no longer matches the gate report"
    (Path(out["candidate"]) / "README.md").write_text(card)

    t1 = time.monotonic()
    again = adapt(str(corpus))  # finished corpus: the recorded result, nothing redone
    assert again == out and time.monotonic() - t1 < (t1 - t0) / 2
    assert len(reg.client.search_model_versions("name='support-bot'")) == 1


def test_adapt_crash_then_rerun_continues_from_cached_steps(harness, env, vector, monkeypatch, tmp_path) -> None:
    import tasks.gate
    import tasks.training
    from flows.adapt import adapt

    calls = {"memorize": 0}
    real_memorize = tasks.training.run_memorize

    def counting_memorize(*a, **kw):
        calls["memorize"] += 1
        return real_memorize(*a, **kw)

    monkeypatch.setattr(tasks.training, "run_memorize", counting_memorize)
    real_gate = tasks.gate.run_gate
    monkeypatch.setattr(tasks.gate, "run_gate", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("power cut")))
    corpus = write_corpus(tmp_path / "corpus", "quandle")
    with FakeOpenAI() as fake, Receiver() as hook:
        monkeypatch.setenv("PAST_SERVE_URL", fake.url)
        monkeypatch.setenv("PAST_NOTIFY_WEBHOOK_URL", hook.url)
        with pytest.raises(RuntimeError, match="power cut"):
            adapt(str(corpus), skill_vector=str(vector))
        s = load_settings()
        cid = json.loads(next((s.home / "ledger").glob("*.json")).read_text())["corpus_id"]
        assert read_ledger(s.home, cid)["status"] == "failed"
        reg = Registry(s)
        assert reg.champion("support-bot") is None, "a crashed run moves no alias"
        [run] = reg.client.search_runs([reg.experiment_id()])
        assert run.info.status == "FAILED" and "power cut" in run.data.tags["error"], "no run left RUNNING"
        assert [b["past"]["kind"] for b in hook.bodies] == ["failed"] and "power cut" in hook.bodies[0]["text"]

        monkeypatch.setattr(tasks.gate, "run_gate", real_gate)
        out = adapt(str(corpus), skill_vector=str(vector))
    assert out["promoted"] is True
    assert calls["memorize"] == 1, "SFT stage 1 ran once: the re-run reused its cached result"
    assert read_ledger(s.home, cid)["status"] == "promoted"
    assert reg.client.get_run(out["mlflow_run_id"]).info.status == "FINISHED"  # the resumed run ends well
    last = hook.bodies[-1]
    assert last["past"] == {"kind": "promoted", "model_name": "support-bot", "version": out["version"],
                            "corpus": "corpus", "corpus_id": cid}
    assert f"#/models/support-bot/versions/{out['version']}" in last["text"]


def test_adapt_sft_parameter_is_a_typed_form_with_every_recipe_field() -> None:
    """What the Prefect UI shows for a deployment run's `sft` parameter: every SFT recipe field, typed, with its
    help, none required (an empty field comes from the settings)."""
    from dataclasses import fields

    from prefect.utilities.callables import parameter_schema

    from flows.adapt import adapt
    from past.sft import SFTRecipe

    form = parameter_schema(adapt.fn).model_dump_for_openapi()["definitions"]["SFTOverrides"]
    assert set(form["properties"]) == {f.name for f in fields(SFTRecipe)} and not form.get("required")
    assert form["properties"]["lora_r"]["description"] == "LoRA rank."
    assert form["additionalProperties"] is False

    from flows.refresh_skill import refresh_skill
    from past.grpo import GRPORecipe

    form = parameter_schema(refresh_skill.fn).model_dump_for_openapi()["definitions"]["GRPOOverrides"]
    assert set(form["properties"]) == {f.name for f in fields(GRPORecipe)} and not form.get("required")
    assert "KL coefficient" in form["properties"]["beta"]["description"] and form["additionalProperties"] is False


def test_changed_sft_recipe_is_a_new_candidate_after_a_crash_and_after_a_success(harness, env, vector, monkeypatch,
                                                                                tmp_path) -> None:
    """One content key per candidate: the recipe is part of it, so a changed recipe never collides with the
    folders of an earlier (crashed or finished) run, and an unchanged re-run is still a no-op."""
    import tasks.gate
    from flows.adapt import adapt
    from prefect.exceptions import ParameterTypeError

    from past.registry import source_path

    real_gate = tasks.gate.run_gate
    monkeypatch.setattr(tasks.gate, "run_gate", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("power cut")))
    corpus = write_corpus(tmp_path / "corpus", "wimble")
    with FakeOpenAI() as fake:
        monkeypatch.setenv("PAST_SERVE_URL", fake.url)
        with pytest.raises(RuntimeError, match="power cut"):
            adapt(str(corpus), skill_vector=str(vector))
        monkeypatch.setattr(tasks.gate, "run_gate", real_gate)
        monkeypatch.setenv("PAST_SFT__LORA_R", "4")  # changed after the crash
        first = adapt(str(corpus), skill_vector=str(vector))
        assert first["promoted"] is True and first["version"] == "2"  # v1: the crashed run's, never gated
        reg = Registry(load_settings())
        assert reg.client.get_run(first["mlflow_run_id"]).data.params["sft_recipe.lora_r"] == "4"
        assert adapt(str(corpus), skill_vector=str(vector)) == first  # unchanged: the recorded result
        # changed after a success, this time as the flow parameter a deployment run takes (`-p sft=...`)
        with pytest.raises(ParameterTypeError, match="lora_rank"):  # refused by Prefect before the run starts
            adapt(str(corpus), skill_vector=str(vector), sft={"lora_rank": 8})
        second = adapt(str(corpus), skill_vector=str(vector), sft={"lora_r": 8})
    assert second["version"] == "3" and second["candidate"] != first["candidate"]
    assert reg.client.get_run(second["mlflow_run_id"]).data.params["sft_recipe.lora_r"] == "8"
    assert json.loads((Path(second["sft_model"]) / "past-model.json").read_text())["recipe"]["lora_r"] == 8
    for v in ("1", "2"):  # the earlier versions' folders are untouched
        mv = reg.version("support-bot", v)
        assert folder_sha256(source_path(mv.source)) == mv.tags["manifest_sha256"]


def test_watch_two_corpora_at_once_then_backfill_is_idempotent(harness, env, vector, monkeypatch, tmp_path) -> None:
    from flows.backfill import backfill
    from flows.watch import watch

    s = load_settings()
    for name in ("alpha", "beta"):
        c = write_corpus(s.home / "inbox" / name, name)
        old = time.time() - 120
        for p in [c, *c.iterdir()]:
            os.utime(p, (old, old))
    with FakeOpenAI(lambda q: "11 credits") as fake:
        monkeypatch.setenv("PAST_SERVE_URL", fake.url)
        result = watch(settle_s=10, mode="inline", model_name="bot", deployment="unused")
        assert len(result["claims"]) == 2 and len(result["started"]) == 2
        ids = [c["corpus_id"] for c in result["claims"]]
        assert sorted(r["version"] for r in result["started"]) == ["1", "2"]
        for cid in ids:
            assert read_ledger(s.home, cid)["status"] in ("promoted", "rejected")
        assert watch(settle_s=10, mode="inline", model_name="bot", deployment="unused")["started"] == []

        first = backfill(corpora=ids, model_name="bot")
        assert [r["version"] for r in first] == [r["version"] for r in result["started"]]
        reg = Registry(s)
        assert len(reg.client.search_model_versions("name='bot'")) == 2, "backfill re-ran nothing"


def test_past_up_deploys_the_prefect_yaml(tmp_path) -> None:
    """`past up --exit-after-deploy`: real Prefect server, work pools, `prefect deploy --all`, and MLflow as a
    tracking server (`--mlflow-server`; the soak runs the default, the UI over the store)."""
    from past.serving import free_port

    env = {**os.environ, "PAST_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    serve_port = free_port()
    r = subprocess.run([str(Path(os.sys.executable).parent / "past"), "up", "--exit-after-deploy",
                        "--prefect-port", str(free_port()), "--mlflow-port", str(free_port()),
                        "--serve", "support-bot", "--serve-port", str(serve_port), "--mlflow-server"],
                       capture_output=True, text=True, env=env, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "deployed flows" in r.stdout
    assert f"champion of support-bot: http://127.0.0.1:{serve_port}/v1" in r.stdout  # `past serve` in the tree
    assert "(tracking server: flows upload versions to it)" in r.stdout
    import socket

    with pytest.raises(OSError):  # ... and stopped with it
        socket.create_connection(("127.0.0.1", serve_port), timeout=2).close()
    log = (tmp_path / "home" / "logs" / "prefect-server.log").read_text()
    assert "Uvicorn running" in log or "Application startup complete" in log or log


def test_refresh_skill_flow_registers_current_vector_with_lineage(harness, env, monkeypatch, tmp_path) -> None:
    from prefect.exceptions import ParameterTypeError

    from flows.refresh_skill import refresh_skill
    from past.skill import read_vector

    for k, v in {"PAST_GRPO__MAX_STEPS": "2", "PAST_GRPO__NUM_GENERATIONS": "2", "PAST_GRPO__PROMPTS_PER_STEP": "1",
                 "PAST_GRPO__MAX_COMPLETION_LENGTH": "6"}.items():
        monkeypatch.setenv(k, v)
    source = write_corpus(tmp_path / "source", "brivex", n_docs=4)
    out = refresh_skill(str(source), rounds=2)
    assert out["rounds"] == 2 and len(out["reward_first_last"]) == 2
    reg = Registry(load_settings())
    version, path = reg.current_skill_vector()
    assert version == out["skill_vector_version"] and path == Path(out["path"])
    manifest, _ = read_vector(path)
    assert manifest["lineage"]["rounds"] == 2 and len(manifest["lineage"]["partitions"]) == 2
    # the refresh is an MLflow run with one nested run per round: reward curves, gate, cosine plot
    mv = reg.client.get_model_version("past-skill-vector", version)
    parent = reg.client.get_run(mv.run_id)
    assert parent.data.params["grpo.max_steps"] == "2" and parent.data.params["rounds"] == "2"
    rounds = reg.client.search_runs([parent.info.experiment_id],
                                    f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in rounds) == ["round-1", "round-2"]
    for r in rounds:
        assert len(reg.client.get_metric_history(r.info.run_id, "grpo_reward")) == 2
        assert r.data.tags["learning_gate"] in ("passed", "failed") and "orthogonality_mean_abs_layer_cosine" in r.data.metrics
        assert [a.path for a in reg.client.list_artifacts(r.info.run_id, "orthogonality")] == ["orthogonality/cosine.png"]
    from past.cli import main as past_cli
    from past.review import review

    found = [f for f in review(load_settings(), "support-bot") if f.check.startswith("skill vector")]
    assert len(found) == 5 and all(f.ok for f in found), found  # nested rounds, 2 reward curves, 2 cosine plots
    assert past_cli(["review", "support-bot", "--no-load"]) == 1  # no adapted model in this store yet
    again = refresh_skill(str(source), rounds=2)  # cached: nothing retrained, nothing registered twice
    assert again["path"] == out["path"] and again["skill_vector_version"] == out["skill_vector_version"]
    assert len(reg.client.search_model_versions("name='past-skill-vector'")) == 1
    assert len(reg.client.search_runs([parent.info.experiment_id], "attributes.run_name LIKE 'refresh-%'")) == 1
    # a changed GRPO budget is a new vector in a new folder; the registered one is untouched
    sha1 = folder_sha256(path)
    monkeypatch.setenv("PAST_GRPO__MAX_STEPS", "3")
    changed = refresh_skill(str(source), rounds=2)
    assert changed["skill_vector_version"] != version and Path(changed["path"]) != path
    assert read_vector(Path(changed["path"]))[0]["lineage"]["grpo_config"]["max_steps"] == 3
    assert manifest["lineage"]["grpo_config"]["max_steps"] == 2 and folder_sha256(path) == sha1
    assert reg.current_skill_vector()[0] == changed["skill_vector_version"]
    # the same through the flow's typed `grpo` parameter (what a deployment run's form sends): a LoRA policy
    with pytest.raises(ParameterTypeError, match="lora_rank"):
        refresh_skill(str(source), rounds=2, grpo={"lora_rank": 4})
    with pytest.raises(Exception, match="beta"):  # a value the recipe refuses: before any training
        refresh_skill(str(source), rounds=2, grpo={"beta": -1.0})
    lora = refresh_skill(str(source), rounds=2, grpo={"use_lora": True, "lora_r": 4})
    assert lora["skill_vector_version"] not in (version, changed["skill_vector_version"])
    assert read_vector(Path(lora["path"]))[0]["lineage"]["grpo_config"]["lora_r"] == 4
    params = reg.client.get_run(reg.client.get_model_version("past-skill-vector", lora["skill_vector_version"]).run_id).data.params
    assert params["grpo.use_lora"] == "True" and params["grpo.lora_r"] == "4"
    bad = tmp_path / "rl.jsonl"
    bad.write_text('{"question": "How much?", "answer": "10 credits", "doc_id": "d9"}\nnot json\n')
    with pytest.raises(Exception, match="rl.jsonl"):  # checked before any training; nothing registered
        refresh_skill(str(source), rounds=2, rl_questions=str(bad))
    assert len(reg.client.search_model_versions("name='past-skill-vector'")) == 3


def _shape(root: Path, shape: str) -> Path:
    """One documented corpus variant (docs/corpus.md) that validates."""
    from tests.test_chunking import long_document

    root.mkdir(parents=True)
    for i in range(4):
        (root / f"d{i}.md").write_text(f"# {shape} unit {i}\nThe {shape} unit {i} weighs {i + 10} kilograms. "
                                       f"It is serviced in the town of Brisco every {i + 2} weeks.\n")
    if shape == "long":
        (root / "manual.md").write_text(long_document(4))
    qa = [{"question": f"How much does the {shape} unit {i} weigh?", "answer": f"{i + 10} kilograms",
           "doc_id": f"d{i}"} for i in range(4)]
    if shape == "qa-no-doc-id":
        qa = [{k: v for k, v in q.items() if k != "doc_id"} for q in qa]
    if shape != "docs-only" and shape != "long":
        (root / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))
    if shape == "jsonl-docs":
        for p in root.glob("d*.md"):
            p.unlink()
        (root / "docs.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "title": f"unit {i}", "text":
                                         f"The unit {i} weighs {i + 10} kilograms in the depot."}) + "\n" for i in range(4)))
    return root


@pytest.mark.parametrize("shape", ["docs-only", "qa-with-doc-id", "qa-no-doc-id", "jsonl-docs", "long"])
def test_every_valid_corpus_shape_reaches_a_gate_decision(harness, env, shape, monkeypatch, tmp_path) -> None:
    """Docs only (the teacher writes QA), QA with and without doc_id, JSONL documents, a long document."""
    from flows.adapt import adapt

    monkeypatch.setenv("PAST_SFT__MIN_STEPS_QA", "1")
    corpus = _shape(tmp_path / shape, shape)
    with FakeOpenAI(lambda q: "10 kilograms") as fake:
        monkeypatch.setenv("PAST_SERVE_URL", fake.url)
        out = adapt(str(corpus), model_name=f"bot-{shape}")
    assert out["version"] == "1" and isinstance(out["promoted"], bool) and out["reason"], out
    assert "new_items" in out["gate"] and out["gate"]["new_items"] >= 1, out["gate"]
    run = Registry(load_settings()).client.get_run(out["mlflow_run_id"])
    assert run.data.metrics["teacher_generated"] == 1.0  # every shape here ships < teacher_min_qa pairs
    assert run.data.params["teacher"] == "extractive"
    assert run.data.metrics["sft_memorize_coverage"] == 1.0
    if shape == "long":
        assert run.data.metrics["sft_memorize_texts_split"] >= 1


def test_a_tool_corpus_is_adapted_on_first_calls_and_gated_on_episodes(harness, env, monkeypatch, tmp_path) -> None:
    """API documentation + tools.json + tool_tasks.jsonl through `adapt`: stage 2 trains the first call, the
    gate runs each held-out task as an episode against the corpus's simulator (scripted endpoint)."""
    from flows.adapt import adapt
    from tests.test_tools import GATE_SPEC, GATE_TASKS, agent, tool_corpus

    monkeypatch.setenv("PAST_SFT__MIN_STEPS_QA", "1")
    corpus = tool_corpus(tmp_path / "tools", GATE_SPEC, GATE_TASKS)
    with FakeOpenAI(agent(finishes=True)) as fake:
        monkeypatch.setenv("PAST_SERVE_URL", fake.url)
        out = adapt(str(corpus), model_name="bot-tools")
    g = out["gate"]
    assert g["candidate_new_tool_items"] == g["new_items"] >= 1, g  # the corpus's own tasks are the new items
    assert g["candidate_new_tool_pass_rate"] == 1.0 and g["candidate_new_tool_finish_rate"] == 1.0, g
    assert any(p.startswith("Observation: {") for p in fake.prompts)
    s = load_settings()
    held = [json.loads(x) for p in (s.home / "evalsets").glob("*.jsonl") for x in p.read_text().splitlines()]
    assert held and all(r["tool"] == "get_price" and r["answer"].endswith("credits") for r in held), held
    assert list((s.home / "evalsets").glob("*.tools.json")), "the spec is kept for later retention episodes"


def test_archive_in_the_inbox_reaches_a_gate_decision(harness, env, monkeypatch, tmp_path) -> None:
    import tarfile

    from flows.watch import watch

    s = load_settings()
    src = _shape(tmp_path / "src", "docs-only")
    (s.home / "inbox").mkdir(parents=True)
    arc = s.home / "inbox" / "faq.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(src, arcname="faq")
    old = time.time() - 120
    os.utime(arc, (old, old))
    with FakeOpenAI(lambda q: "10 kilograms") as fake:
        monkeypatch.setenv("PAST_SERVE_URL", fake.url)
        result = watch(settle_s=10, mode="inline", model_name="bot-archive", deployment="unused")
    assert len(result["started"]) == 1 and result["started"][0]["version"] == "1"
    assert read_ledger(s.home, result["claims"][0]["corpus_id"])["status"] in ("promoted", "rejected")


def test_docs_only_corpus_with_an_endpoint_teacher(harness, env, monkeypatch, tmp_path) -> None:
    """teacher_base_url set: adapt asks that endpoint for QA + implications (and records what it got)."""
    from flows.adapt import adapt

    def answer(prompt: str) -> str:
        if "Reply with ONE JSON object" in prompt:
            title = prompt.split("Title: ", 1)[1].splitlines()[0]
            return json.dumps({"qa": [{"question": f"What does the {title} weigh?", "answer": "10 kilograms"},
                                      {"question": "", "answer": "dropped"}],
                               "implications": [f"The {title} is heavy."]})
        return "10 kilograms"

    monkeypatch.setenv("PAST_SFT__MIN_STEPS_QA", "1")
    corpus = _shape(tmp_path / "docs", "docs-only")
    with FakeOpenAI(answer) as fake:
        monkeypatch.setenv("PAST_SERVE_URL", fake.url)
        monkeypatch.setenv("PAST_TEACHER_BASE_URL", fake.url)
        monkeypatch.setenv("PAST_TEACHER_MODEL", "teacher")
        out = adapt(str(corpus), model_name="bot-endpoint-teacher")
        teacher_prompts = sum("Reply with ONE JSON object" in p for p in fake.prompts)
    assert teacher_prompts == 4, "one teacher request per document"
    run = Registry(load_settings()).client.get_run(out["mlflow_run_id"])
    assert run.data.params["teacher"] == "endpoint"
    assert run.data.metrics["teacher_qa"] == 4 and run.data.metrics["teacher_dropped_items"] == 4
    assert out["gate"]["new_items"] >= 1 and out["reason"]


def test_retry_transient_in_a_real_flow(harness) -> None:
    """A deterministic error (PastError) fails at once; an OSError is retried (#16: a failed gate was re-asked)."""
    from prefect import flow, task

    from past.errors import PastError
    from tasks.common import retry_transient

    calls = {"past": 0, "os": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def fails(kind: str) -> None:
        calls[kind] += 1
        raise PastError("bad corpus") if kind == "past" else OSError("disk hiccup")

    @flow
    def f(kind: str) -> None:
        fails(kind)

    for kind in ("past", "os"):
        try:
            f(kind)
        except (PastError, OSError):
            pass
    assert calls == {"past": 1, "os": 3}


def test_watch_recovers_a_corpus_whose_run_crashed(harness, tmp_path) -> None:
    """#16: a crashed adapt run left its corpus `submitted` forever. Against a real Prefect API: a crashed run
    is handed out again with the next attempt number; the last allowed attempt marks the corpus failed (and
    emits `past.corpus.failed`, not read back here); a run still going is left alone."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Running

    from past import inbox
    from tasks.dispatch import idempotency_key, recover_stranded

    @flow
    def some_adapt() -> None:  # only its flow runs are needed, with chosen states
        pass

    home = load_settings().home
    with get_client(sync_client=True) as client:
        crashed, alive, crashed2 = (client.create_flow_run(some_adapt) for _ in range(3))
        for run, state in ((crashed, Crashed()), (alive, Running()), (crashed2, Crashed())):
            client.set_flow_run_state(run.id, state, force=True)
    inbox.update_ledger(home, "c-crashed", status="submitted", flow_run_id=str(crashed.id), attempts=1, name="a")
    inbox.update_ledger(home, "c-alive", status="submitted", flow_run_id=str(alive.id), attempts=1)
    inbox.update_ledger(home, "c-last", status="running", flow_run_id=str(crashed2.id), attempts=3)

    @flow
    def recover() -> list[dict]:
        return recover_stranded()

    again = recover()
    assert again == [{"corpus_id": "c-crashed", "path": None, "name": "a", "attempt": 2}]
    assert inbox.read_ledger(home, "c-alive")["status"] == "submitted"
    last = inbox.read_ledger(home, "c-last")
    assert last["status"] == "failed" and "crashed 3 time(s)" in last["error"]
    assert idempotency_key("m", "c", 1) == "adapt-m-c" and idempotency_key("m", "c", 2) == "adapt-m-c-attempt2"


def test_a_run_whose_process_is_gone_is_crashed_and_resubmitted(harness, tmp_path) -> None:
    """#16 soak: a SIGKILLed worker takes its flow runs with it; the server shows them Running forever, and a
    corpus whose run had not yet marked itself `running` was stranded `submitted`. A local-pool run whose
    infrastructure pid is gone is set Crashed by the watcher and its corpus handed out again."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Running

    from past import inbox
    from tasks.dispatch import LOCAL_POOL, recover_stranded

    @flow
    def some_adapt() -> None:
        pass

    gone = subprocess.Popen(["true"])
    gone.wait()
    home = load_settings().home
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=LOCAL_POOL, type="process"))
        except Exception:  # noqa: BLE001 - created by an earlier test of this module's server
            pass
        dep = client.create_deployment(flow_id=client.create_flow(some_adapt), name="soak", work_pool_name=LOCAL_POOL)
        dead, alive = (client.create_flow_run_from_deployment(dep) for _ in range(2))
        for run, pid in ((dead, gone.pid), (alive, os.getpid())):
            client.update_flow_run(run.id, infrastructure_pid=str(pid))
            client.set_flow_run_state(run.id, Running(), force=True)
    inbox.update_ledger(home, "c-dead", status="submitted", flow_run_id=str(dead.id), attempts=1, name="d")
    inbox.update_ledger(home, "c-live", status="submitted", flow_run_id=str(alive.id), attempts=1)

    @flow
    def recover() -> list[dict]:
        return recover_stranded()

    assert recover() == [{"corpus_id": "c-dead", "path": None, "name": "d", "attempt": 2}]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(dead.id).state.type.value == "CRASHED"
        assert client.read_flow_run(alive.id).state.type.value == "RUNNING"


NODE_SCRIPT = """
import pathlib, sys
from prefect import flow, task
from prefect.cache_policies import INPUTS

@task(cache_policy=INPUTS, persist_result=True)
def sft(corpus: str) -> str:
    with open(sys.argv[1], "a") as f:  # counts real executions
        f.write("ran\\n")
    return f"model of {corpus}"

@flow
def adapt(corpus: str) -> str:
    return sft(corpus)

print(adapt("c1"))
"""


def test_kubernetes_jobs_share_task_results_through_past_home(harness, tmp_path: Path) -> None:
    """#15: a rescheduled job on another node (own PREFECT_HOME, own pod file system) finds the cached result of
    a finished task, because the job env puts Prefect's result storage on the shared volume under PAST_HOME."""
    import yaml
    from prefect.settings import PREFECT_API_URL

    root = Path(__file__).resolve().parents[1]
    env = yaml.safe_load((root / "deployments" / "prefect.yaml").read_text())["definitions"]["gpu_pool"]["job_variables"]["env"]
    storage = env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]
    assert storage.startswith(env["PAST_HOME"] + "/"), "Prefect results must live on the shared volume"
    script, counter = tmp_path / "node.py", tmp_path / "executions"
    script.write_text(NODE_SCRIPT)

    def node(name: str, shared: str) -> None:
        e = {**os.environ, "PREFECT_HOME": str(tmp_path / name), "PREFECT_API_URL": PREFECT_API_URL.value(),
             "PREFECT_RESULTS_LOCAL_STORAGE_PATH": shared.replace(env["PAST_HOME"], str(tmp_path / "volume"), 1)}
        r = subprocess.run([sys.executable, str(script), str(counter)], env=e, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0 and "model of c1" in r.stdout, r.stderr[-2000:]

    node("node-a", storage)
    node("node-b", storage)  # another pod: its own Prefect home, the same volume
    assert counter.read_text().count("ran") == 1, "the second node re-ran a task the first had finished"
    node("node-c", env["PAST_HOME"] + "/elsewhere")  # control: results kept apart -> the task runs again
    assert counter.read_text().count("ran") == 2
