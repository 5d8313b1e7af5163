"""Real MLflow (SQLite in a temp folder): promotion on pass, rejection on fail, rollback, racing promotions."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from past.config import load_settings
from past.evaluation import EvalItem, GateDecision, GateReport, ItemResult, decide
from past.models import verify_model_dir, write_manifest
from past.registry import (CHAMPION, HISTORY_TAG, PromotionConflict, Registry, RegistryError, folder_sha256, ref,
                           source_path)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reg") / "home"  # one MLflow DB per module: schema creation costs seconds


@pytest.fixture()
def reg(home: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("PAST_HOME", str(home))  # the CLI tests read the same store
    return Registry(load_settings(home=home, gate_min_accuracy=0.5, gate_min_new_items=4))


_counter = iter(range(10_000))


def model_folder(tmp_path: Path, tag: str = "") -> Path:
    d = tmp_path / f"model-{next(_counter)}{tag}"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"\0" * 64 + tag.encode())
    (d / "config.json").write_text("{}")
    write_manifest(d)
    return d


def report(reg: Registry, n_right: int, champion: str | None, n: int = 4) -> GateReport:
    items = [EvalItem(f"q{i}", f"question {i}?", f"a{i}", "d", "c") for i in range(n)]
    res = [ItemResult(it.key, "new", it.question, it.answer, it.answer if i < n_right else "x",
                      correct=i < n_right, token_f1=float(i < n_right)) for i, it in enumerate(items)]
    return GateReport(decide(res, None, reg.settings, champion, "hash"), res, None, items, {"candidate_eval_s": 1.0})


def adapt(reg: Registry, tmp_path: Path, name: str, n_right: int, corpus: str = "c") -> tuple[str, str, GateReport]:
    """What the adapt flow does: run → register → gate against the current champion → conclude."""
    run_id = reg.start_run(corpus, {"base_model": "tiny", "lam": 1.0, "sft": {"epochs": 3, "lora": True}})
    v = reg.register_candidate(name, model_folder(tmp_path), run_id, corpus, skill_version="2", lam=1.0)
    cur = reg.champion(name)
    rep = report(reg, n_right, ref(name, cur.version) if cur else None)
    return run_id, v, rep


def test_pass_moves_champion_and_records_everything(reg: Registry, tmp_path: Path) -> None:
    run_id, v1, rep = adapt(reg, tmp_path, "pass-model", 4)
    out = reg.conclude("pass-model", v1, run_id, rep)
    assert out.promoted and reg.champion("pass-model").version == int(v1)
    assert reg.alias("pass-model", "challenger").version == int(v1)  # the latest gated candidate
    mv = reg.version("pass-model", v1)
    assert mv.tags["gate"] == "passed" and mv.tags["corpus_id"] == "c" and mv.tags["lambda"] == "1.0"
    assert mv.tags["skill_vector_version"] == "2" and len(mv.tags["manifest_sha256"]) == 64
    assert mv.tags["previous_champion"] == "none" and mv.run_id == run_id
    assert (source_path(mv.source) / "model.safetensors").is_file()  # points at the folder, nothing copied
    run = reg.client.get_run(run_id)
    assert run.data.params["sft.epochs"] == "3" and run.data.metrics["candidate_new_accuracy"] == 1.0
    arts = {a.path for a in reg.client.list_artifacts(run_id, "gate")}
    assert {"gate/items.json", "gate/decision.json", "gate/gate-report.json"} <= arts
    local = Path(reg.client.download_artifacts(run_id, "gate/decision.json", str(tmp_path)))
    assert json.loads(local.read_text())["passed"] is True
    # the model card: in the folder (outside the weights' manifest: the version's checksum is unchanged) and
    # on the run, with the gate report's numbers
    card = (source_path(mv.source) / "README.md").read_text()
    assert card.startswith("---\nlibrary_name:") and 'base_model: "tiny"' in card and "**PASSED**" in card
    m = rep.decision.metrics
    assert f"| {m['candidate_new_accuracy']:.3f} | [{m['candidate_new_accuracy_lower']:.3f}, " in card
    assert folder_sha256(source_path(mv.source)) == mv.tags["manifest_sha256"]
    assert verify_model_dir(source_path(mv.source)) == []
    assert reg.client.download_artifacts(run_id, "model-card/README.md", str(tmp_path / "c")).endswith("README.md")
    # the next passing candidate, gated against v1, replaces it
    run2, v2, rep2 = adapt(reg, tmp_path, "pass-model", 4)
    assert rep2.decision.champion_version == ref("pass-model", v1)
    assert reg.conclude("pass-model", v2, run2, rep2).promoted
    assert reg.champion("pass-model").version == int(v2)
    assert reg.champion_history("pass-model") == [v1, v2]
    assert reg.version("pass-model", v2).tags["previous_champion"] == ref("pass-model", v1)


def test_fail_leaves_champion_and_records_why(reg: Registry, tmp_path: Path) -> None:
    run1, v1, rep1 = adapt(reg, tmp_path, "fail-model", 4)
    reg.conclude("fail-model", v1, run1, rep1)
    run2, v2, rep2 = adapt(reg, tmp_path, "fail-model", 1)
    out = reg.conclude("fail-model", v2, run2, rep2)
    assert not out.promoted and "does not clear the floor" in out.reason
    assert reg.champion("fail-model").version == int(v1)
    mv = reg.version("fail-model", v2)
    assert mv.tags["gate"] == "failed" and mv.tags["rejected"] == "true"
    assert "does not clear the floor" in mv.tags["rejected_reason"]
    assert reg.client.get_run(run2).data.tags["gate"] == "failed"
    # a fault (server never started) is a failed decision too: nothing promoted
    run3 = reg.start_run("c")
    v3 = reg.register_candidate("fail-model", model_folder(tmp_path), run3, "c")
    fault = GateReport(GateDecision.failed("candidate server failed: vLLM exited with code 1", ref("fail-model", v1)),
                       [], None, [])
    assert not reg.conclude("fail-model", v3, run3, fault).promoted
    assert reg.champion("fail-model").version == int(v1)
    assert "vLLM exited" in reg.version("fail-model", v3).tags["rejected_reason"]
    # a failed version is not promoted by hand unless forced
    with pytest.raises(RegistryError, match="failed its gate"):
        reg.promote("fail-model", v2)
    reg.promote("fail-model", v2, force=True)
    assert reg.champion("fail-model").version == int(v2) and "rejected" not in reg.version("fail-model", v2).tags


def test_rollback_restores_previous_champion(reg: Registry, tmp_path: Path) -> None:
    vs = []
    for _ in range(3):
        run, v, rep = adapt(reg, tmp_path, "rb-model", 4)
        assert reg.conclude("rb-model", v, run, rep).promoted
        vs.append(v)
    assert reg.rollback("rb-model") == vs[1] and reg.champion("rb-model").version == int(vs[1])
    assert "rolled_back_at" in reg.version("rb-model", vs[2]).tags
    assert reg.rollback("rb-model") == vs[0]
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback("rb-model")
    assert reg.champion("rb-model").version == int(vs[0])
    assert json.loads(reg.client.get_registered_model("rb-model").tags[HISTORY_TAG]) == [vs[0]]


def test_stale_gate_cannot_promote(reg: Registry, tmp_path: Path) -> None:
    run1, v1, rep1 = adapt(reg, tmp_path, "cas-model", 4)
    run2, v2, rep2 = adapt(reg, tmp_path, "cas-model", 4)  # both gated while there was no champion
    assert reg.conclude("cas-model", v1, run1, rep1).promoted
    out = reg.conclude("cas-model", v2, run2, rep2)
    assert not out.promoted and "re-gate" in out.reason
    assert reg.champion("cas-model").version == int(v1)
    with pytest.raises(PromotionConflict):
        reg.promote("cas-model", v2, expected=None)


def test_racing_promotions_leave_a_consistent_alias(reg: Registry, tmp_path: Path) -> None:
    name = "race-model"
    run0, v0, rep0 = adapt(reg, tmp_path, name, 4)
    reg.conclude(name, v0, run0, rep0)
    contenders = [adapt(reg, tmp_path, name, 4) for _ in range(4)]  # all gated against v0
    barrier = threading.Barrier(len(contenders))
    outcomes, errors = {}, []

    def go(run_id: str, v: str, rep: GateReport) -> None:
        try:
            r = Registry(reg.settings)  # own client, as a separate flow run would have
            barrier.wait()
            outcomes[v] = r.conclude(name, v, run_id, rep)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go, args=c) for c in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    winners = [v for v, o in outcomes.items() if o.promoted]
    assert len(winners) == 1 and len(outcomes) == 4
    assert reg.champion(name).version == int(winners[0])
    assert reg.champion_history(name) == [v0, winners[0]]
    for v, o in outcomes.items():
        if v != winners[0]:
            assert "re-gate" in o.reason and reg.version(name, v).tags["rejected"] == "true"


def test_skill_vectors_are_versioned_with_current_alias(reg: Registry, tmp_path: Path) -> None:
    a, b = model_folder(tmp_path, "a"), model_folder(tmp_path, "b")
    va = reg.register_skill_vector(a, tags={"rounds": 2})
    vb = reg.register_skill_vector(b, tags={"rounds": 2})
    assert reg.current_skill_vector() == (vb, b.resolve()) and va != vb
    mv = reg.version("past-skill-vector", vb)
    assert len(mv.tags["sha256"]) == 64 and mv.tags["rounds"] == "2"
    assert reg.version("past-skill-vector", va).tags["sha256"] != mv.tags["sha256"]


def test_register_refuses_damaged_folder(reg: Registry, tmp_path: Path) -> None:
    d = model_folder(tmp_path)
    (d / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="refusing to register"):
        reg.register_candidate("bad-model", d, None, "c")


def test_cli_promote_rollback_history(reg: Registry, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from past.cli import main

    vs = []
    for n_right in (4, 4, 0):
        run, v, rep = adapt(reg, tmp_path, "cli-model", n_right)
        reg.conclude("cli-model", v, run, rep)
        vs.append(v)
    assert main(["history", "cli-model"]) == 0
    out = capsys.readouterr().out
    assert f"{vs[0]} → {vs[1]}" in out and "does not clear the floor" in out
    assert main(["rollback", "cli-model"]) == 0 and reg.champion("cli-model").version == int(vs[0])
    assert main(["promote", "cli-model", vs[2]]) == 2  # failed its gate: refused, one error line
    assert "failed its gate" in capsys.readouterr().err
    assert main(["promote", "cli-model", vs[1]]) == 0 and reg.champion("cli-model").version == int(vs[1])
    assert main(["history", "cli-model", "--json"]) == 0
    data = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert data["champion_history"] == [vs[0], vs[1]]
    assert reg.alias("cli-model", CHAMPION).version == int(vs[1])


def test_folder_sha256_hashes_the_manifest_of_models_and_skill_vectors(tmp_path: Path) -> None:
    from past import registry, skill
    from past.models import sha256_file

    assert registry.VECTOR_MANIFEST == skill.MANIFEST
    d = model_folder(tmp_path)
    assert folder_sha256(d) == sha256_file(d / "past-model.json")
    v = tmp_path / "vec"
    v.mkdir()
    (v / "skill.json").write_text("{}")
    (v / "shard.safetensors").write_bytes(b"x" * 10)
    assert folder_sha256(v) == sha256_file(v / "skill.json")


def test_a_registered_candidate_loads_with_mlflows_own_loader(reg: Registry, make_tiny) -> None:
    """`models:/NAME@champion` through mlflow.pyfunc.load_model: the MLmodel beside the weights (no second copy
    of them in the artifact store), a chat signature, and a real reply from the tiny model."""
    import mlflow
    import pandas as pd

    from past.mlflow_model import MLMODEL

    folder = make_tiny("loadable", seed=3)
    manifest_before = folder_sha256(folder)
    v = reg.register_candidate("loadable-bot", folder, None, "c-load")
    assert (folder / MLMODEL).is_file() and verify_model_dir(folder) == []
    assert folder_sha256(folder) == manifest_before  # the MLmodel sits outside the weights' checksum manifest
    reg.client.set_registered_model_alias("loadable-bot", CHAMPION, v)
    mlflow.set_registry_uri(reg.uri)
    try:
        model = mlflow.pyfunc.load_model("models:/loadable-bot@champion")
    finally:
        mlflow.set_registry_uri("")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["messages"]
    out = model.predict(pd.DataFrame({"messages": [[{"role": "user", "content": "What is 2 + 2?"}],
                                                   [{"role": "user", "content": "Name a colour."}]]}),
                        params={"max_new_tokens": 4})
    assert len(out) == 2 and all(isinstance(o, str) for o in out)


RACER = r"""
import sys, time
from pathlib import Path
from past.config import load_settings
from past.registry import PromotionConflict, Registry
import past.registry as R
home, uri, name, version, start, guard = sys.argv[1:7]
if guard == "off":  # the control: no lease (and each process has its own home, so its own file lock)
    import contextlib
    import past.lease
    past.lease.mlflow_lease = lambda client: contextlib.nullcontext()
read = R.Registry.champion
def slow_champion(self, n):  # widen the read -> write window so an unguarded race really interleaves
    out = read(self, n)
    time.sleep(0.5)
    return out
R.Registry.champion = slow_champion
reg = Registry(load_settings(home=Path(home), mlflow_tracking_uri=uri))
time.sleep(max(0.0, float(start) - time.time()))
try:
    reg.promote(name, version, expected=None, reason="race")
    print("WON")
except PromotionConflict as e:
    print("LOST", e)
"""


def _race(tmp_path: Path, guard: str) -> tuple[list[str], str]:
    """Two processes with separate homes (no shared lock file), one MLflow store, promoting v1 and v2 at once."""
    import subprocess
    import sys
    import time

    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    reg = Registry(load_settings(home=tmp_path / "setup", mlflow_tracking_uri=uri))
    name = f"race-{guard}"
    versions = [reg.register_candidate(name, model_folder(tmp_path), None, "c", skill_version="1", lam=1.0)
                for _ in range(2)]
    start = str(time.time() + 8)  # both are imported and connected by then
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / f"host{i}"), uri, name, v, start, guard],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i, v in enumerate(versions)]
    outs = [p.communicate(timeout=120) for p in procs]
    champ = reg.champion(name)
    return [o[0].split()[0] if p.returncode == 0 else f"ERROR {o[1][-300:]}" for p, o in zip(procs, outs)], \
        str(champ.version) if champ else ""


def test_two_hosts_racing_to_promote_through_mlflow_alone_one_wins(tmp_path: Path) -> None:
    from past.lease import LOCK_NAME

    results, champ = _race(tmp_path, "on")
    assert sorted(results) == ["LOST", "WON"], results
    assert champ == str(results.index("WON") + 1)  # versions 1 and 2 raced in that order
    reg = Registry(load_settings(home=tmp_path / "setup", mlflow_tracking_uri=f"sqlite:///{tmp_path / 'shared.db'}"))
    assert reg.champion_history("race-on") == [champ]
    assert LOCK_NAME not in {m.name for m in reg.client.search_registered_models()}, "the lease is released"


def test_without_the_lease_the_same_race_lets_both_win(tmp_path: Path) -> None:
    """The control that shows the test above can fail: with the lease removed, neither process sees the other's
    promotion; both go on to write the alias (both 'win', or one dies on the store's unique alias row)."""
    results, _ = _race(tmp_path, "off")
    assert "LOST" not in results and results.count("WON") >= 1, results


def test_a_dead_holders_lease_is_broken_after_its_ttl_and_a_live_one_times_out(tmp_path: Path) -> None:
    from past.lease import LOCK_NAME, LeaseTimeout, mlflow_lease

    reg = Registry(load_settings(home=tmp_path / "h"))
    reg.client.create_registered_model(LOCK_NAME, tags={"past.lease.owner": "dead-host:1:x"})  # a holder that died
    with pytest.raises(LeaseTimeout, match="still held"):
        with mlflow_lease(reg.client, ttl_s=60, timeout_s=0.5):
            pass
    import time

    time.sleep(1.2)
    with mlflow_lease(reg.client, ttl_s=1.0, timeout_s=10) as token:
        assert reg.client.get_registered_model(LOCK_NAME).tags["past.lease.owner"] == token
    assert LOCK_NAME not in {m.name for m in reg.client.search_registered_models()}
