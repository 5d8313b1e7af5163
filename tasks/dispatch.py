"""Dispatch task: start an adapt deployment run for a corpus, deduplicated by an idempotency key."""

from __future__ import annotations

from prefect import task
from prefect.deployments import run_deployment


@task(retries=3, retry_delay_seconds=[2, 10, 30])
def submit_adapt(deployment: str, corpus_id: str, model_name: str) -> str:
    """run_deployment without waiting; the server refuses a second run with the same idempotency key."""
    run = run_deployment(name=deployment, parameters={"corpus": corpus_id, "model_name": model_name},
                         timeout=0, as_subflow=False, idempotency_key=f"adapt-{model_name}-{corpus_id}")
    return str(run.id)
