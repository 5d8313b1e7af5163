"""What a reviewer finds in the MLflow store, checked: `past review NAME` and the last step of `make demo`.

For the latest version of a registered model and the current skill vector, each check reads only what the MLflow
client returns (no PaST side files except the card beside the weights), so a pass means the MLflow UI shows it:
- the adapt run carries both SFT stages' loss curves as step metrics (more than one step each);
- the skill vector's refresh run has one nested run per round, each with a GRPO reward curve and the cosine plot;
- `models:/NAME@champion` (else `@challenger`) loads with MLflow's own pyfunc loader;
- the model card beside the weights is the card rendered from the gate report logged on the run (same numbers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from past.registry import CHALLENGER, CHAMPION, SKILL_MODEL, Registry


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str


def review(settings, name: str, load_model: bool = True) -> list[Finding]:
    """Every check above, one Finding each (a check that cannot run is a failed Finding, never an exception)."""
    reg = Registry(settings)
    out: list[Finding] = []
    out += _adapt_checks(reg, name, load_model)
    out += _skill_checks(reg)
    return out


def gate_summary(settings, name: str) -> list[str]:
    """The latest version's gate verdict and scores, and the champion, as MLflow records them (summary lines)."""
    reg = Registry(settings)
    lines = []
    latest = max(reg.client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version), default=None)
    if latest is not None and latest.run_id:
        m = reg.client.get_run(latest.run_id).data.metrics
        lines.append(f"gate of v{latest.version}: {latest.tags.get('gate', '?')} - {latest.tags.get('gate_reason', '')}")
        lines.append(f"  compared with: {latest.tags.get('compared_with', 'none')} (champion_* below = its scores)")
        lines += [f"  {k:<36} {m[k]:.3f}" for k in sorted(m)
                  if k.startswith(("candidate_", "champion_", "new_diff")) and k.endswith(("_accuracy", "_f1", "_lower",
                                                                                           "_upper", "diff"))]
    mv = reg.champion(name)
    return lines + [f"champion: {name} v{mv.version}" if mv is not None else "champion: none yet"]


def as_dicts(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]


def _steps(reg: Registry, run_id: str, key: str) -> int:
    return len(reg.client.get_metric_history(run_id, key))


def _adapt_checks(reg: Registry, name: str, load_model: bool) -> list[Finding]:
    from mlflow.exceptions import MlflowException

    try:
        rows = reg.history(name)
    except MlflowException:
        return [Finding(f"registered model {name}", False, "not in this store")]
    if not rows:
        return [Finding(f"registered model {name}", False, "has no versions")]
    v = rows[-1]["version"]
    mv = reg.version(name, v)
    out = []
    if not mv.run_id:
        return [Finding(f"{name} v{v}: adapt run", False, "the version has no run")]
    for stage in ("memorize", "qa"):
        n = _steps(reg, mv.run_id, f"sft_{stage}_loss")
        out.append(Finding(f"{name} v{v}: SFT {stage} loss curve", n > 1, f"{n} steps"))
    out.append(_card_check(reg, name, v, mv))
    if load_model:
        out.append(_load_check(reg, name))
    return out


def _card_check(reg: Registry, name: str, version: str, mv) -> Finding:
    import mlflow.artifacts

    from past.model_card import CARD, render

    what = f"{name} v{version}: model card = gate report"
    path = reg.local_path(mv) / CARD
    if not path.is_file():
        return Finding(what, False, f"no {CARD} in {path.parent}")
    run = reg.client.get_run(mv.run_id)
    try:
        report = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/gate/gate-report.json")
    except Exception as e:  # noqa: BLE001 - a missing artifact is the finding
        return Finding(what, False, f"no gate/gate-report.json on run {mv.run_id}: {e}")
    params = run.data.params
    expected = render(name, str(version), dict(mv.tags), dict(params), report["decision"])
    same = path.read_text() == expected
    acc = report["decision"].get("metrics", {}).get("candidate_new_accuracy")
    return Finding(what, same, f"new-corpus accuracy {acc:.3f}" if same and acc is not None else
                   ("identical" if same else f"{path} differs from the card rendered from the run's gate report"))


def _load_check(reg: Registry, name: str) -> Finding:
    import mlflow

    alias = CHAMPION if reg.champion(name) is not None else CHALLENGER
    uri = f"models:/{name}@{alias}"
    # the loader reads the registry and the tracking store through mlflow's globals: point both at this store
    # (the defaults would create ./mlflow.db in the working directory), and put them back afterwards
    prev = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(reg.uri)
    mlflow.set_registry_uri(reg.uri)
    try:
        model = mlflow.pyfunc.load_model(uri)
        inputs = [c.name for c in model.metadata.get_input_schema().inputs]
        return Finding(f"{uri} loads with mlflow.pyfunc", inputs == ["messages"], f"inputs {inputs}")
    except Exception as e:  # noqa: BLE001 - any loader failure is the finding
        return Finding(f"{uri} loads with mlflow.pyfunc", False, f"{type(e).__name__}: {e}"[:300])
    finally:
        mlflow.set_tracking_uri(prev[0])
        mlflow.set_registry_uri(prev[1])


def _skill_checks(reg: Registry) -> list[Finding]:
    cur = reg.current_skill_vector()
    if cur is None:
        return [Finding("skill vector", False, f"no `current` version of {SKILL_MODEL}")]
    version, _ = cur
    mv = reg.client.get_model_version(SKILL_MODEL, version)
    what = f"skill vector v{version}: refresh run"
    if not mv.run_id:
        return [Finding(what, False, "registered without a refresh run")]
    parent = reg.client.get_run(mv.run_id)
    rounds = reg.client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    out = [Finding(what + " with nested rounds", len(rounds) >= 1, f"{len(rounds)} round run(s)")]
    for r in sorted(rounds, key=lambda r: r.info.run_name or ""):
        n = _steps(reg, r.info.run_id, "grpo_reward")
        figs = [Path(a.path).name for a in reg.client.list_artifacts(r.info.run_id, "orthogonality")]
        out.append(Finding(f"skill vector v{version}: {r.info.run_name} reward curve", n > 1, f"{n} steps"))
        out.append(Finding(f"skill vector v{version}: {r.info.run_name} cosine figure", "cosine.png" in figs,
                           ", ".join(figs) or "no orthogonality/ artifacts"))
    return out
