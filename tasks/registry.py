"""Registry tasks: one MLflow run per adaptation, the candidate as a model version, promotion on a pass."""

from __future__ import annotations

import logging

from prefect import task

from past.evaluation import GateReport
from past.registry import Registry
from tasks.common import REGISTRY_FIELDS, cached, require, retry_transient, settings


@task(cache_policy=cached(*REGISTRY_FIELDS), persist_result=True, retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5)
def open_adaptation_run(corpus_id: str, model_name: str, params: dict) -> str:
    """The MLflow run that collects this adaptation's params, metrics and reports (one per corpus)."""
    return Registry(settings()).start_run(corpus_id, {"model_name": model_name, **params})


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5)
def log_to_run(run_id: str, metrics: dict[str, float] | None = None, files: list[str] | None = None,
               curves: dict[str, list[float]] | None = None) -> None:
    """Metrics, training curves (as step metrics) and report files onto the adaptation's run."""
    reg = Registry(settings())
    if metrics:
        reg.log_metrics(run_id, metrics)
    if curves:
        reg.log_curves(run_id, curves)
    if files:
        reg.log_artifacts(run_id, files)


@task(cache_policy=cached(*REGISTRY_FIELDS), persist_result=True, retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5)
def register_candidate(model_name: str, candidate: dict, run_id: str, corpus_id: str, skill_version: str,
                       lam: float | None) -> str:
    """A new model version pointing at the candidate folder in place (verified, never copied)."""
    return Registry(settings()).register_candidate(model_name, require(candidate), run_id, corpus_id,
                                                   skill_version=skill_version, lam=lam)


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5)
def conclude(model_name: str, version: str, run_id: str, gate: dict) -> dict:
    """Record the gate on run and version; move `champion` only on a pass (compare-and-set)."""
    reg = Registry(settings())
    outcome = reg.conclude(model_name, version, run_id, GateReport.read(gate["report"]))
    reg.end_run(run_id, "FINISHED")
    return {"version": outcome.version, "promoted": outcome.promoted, "reason": outcome.reason}


@task(cache_policy=cached(*REGISTRY_FIELDS), persist_result=True, retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5)
def record_refresh(source_corpus_id: str, params: dict, records: list[dict]) -> str:
    """The refresh's MLflow run, one nested run per round (reward curves, orthogonality, cosine plot)."""
    return Registry(settings()).record_refresh(source_corpus_id, params, records)


def mlflow_links(model_name: str, version: str, run_id: str) -> dict[str, str]:
    """MLflow UI links to the adaptation's run and model version (for Prefect artifacts)."""
    from past.notify import mlflow_run_url, mlflow_version_url

    s = settings()
    exp = Registry(s).client.get_run(run_id).info.experiment_id
    return {"run": mlflow_run_url(s.mlflow_ui_url, exp, run_id),
            "version": mlflow_version_url(s.mlflow_ui_url, model_name, version)}


def fail_run(run_id: str, error: BaseException) -> None:
    """End the adaptation's MLflow run FAILED with the error as a tag (a plain call, not a task: it must run
    while the flow is already failing). A registry that is itself down is logged, not raised over the error."""
    try:
        Registry(settings()).fail_run(run_id, f"{type(error).__name__}: {error}")
    except Exception as e:  # noqa: BLE001
        logging.getLogger("past").warning(f"could not mark MLflow run {run_id} FAILED: {e}")


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5)
def champion_corpus(model_name: str) -> str | None:
    """The corpus id the current champion of `model_name` was adapted on (None without a champion)."""
    mv = Registry(settings()).champion(model_name)
    return None if mv is None else mv.tags.get("corpus_id")
