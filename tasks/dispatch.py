"""Dispatch tasks: start an adapt deployment run per corpus (deduplicated by an idempotency key), and find
corpora whose run ended without an outcome so the watcher can hand them out again."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.deployments import run_deployment
from prefect.events import emit_event

from past import inbox
from tasks.common import retry_transient, settings


def idempotency_key(model_name: str, corpus_id: str, attempt: int = 1) -> str:
    """One key per (model, corpus, attempt): the server refuses a second run of the same attempt."""
    return f"adapt-{model_name}-{corpus_id}" + (f"-attempt{attempt}" if attempt > 1 else "")


@task(retries=3, retry_condition_fn=retry_transient, retry_delay_seconds=[2, 10, 30])
def submit_adapt(deployment: str, corpus_id: str, model_name: str, attempt: int = 1) -> str:
    """run_deployment without waiting; the server refuses a second run with the same idempotency key."""
    run = run_deployment(name=deployment, parameters={"corpus": corpus_id, "model_name": model_name},
                         timeout=0, as_subflow=False, idempotency_key=idempotency_key(model_name, corpus_id, attempt))
    return str(run.id)


LOCAL_POOL = "past-local"  # the process pool `past up` starts on this machine (deployments/prefect.yaml)


def _read_runs(run_ids: list[str]) -> dict:
    """flow_run_id -> the server's FlowRun (None: the API has no such run, e.g. a reset Prefect database)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    out: dict = {}
    with get_client(sync_client=True) as client:
        for rid in run_ids:
            try:
                out[rid] = client.read_flow_run(UUID(rid))
            except ObjectNotFound:
                out[rid] = None
    return out


def _orphaned(run) -> bool:
    """A PENDING or RUNNING run of this machine's process pool whose process is gone.

    A SIGKILLed worker takes its flow runs with it and nobody is left to tell the server, which would show them
    running forever (and strand a corpus the run had not yet marked `running`)."""
    state = run.state.type.value if run.state else None
    pid = run.infrastructure_pid
    return (state in ("PENDING", "RUNNING") and run.work_pool_name == LOCAL_POOL and bool(pid) and pid.isdigit()
            and not inbox.pid_alive(int(pid)))


def _mark_crashed(run) -> None:
    """Set an orphaned run Crashed, so the Prefect UI shows what happened (and its corpus can be resubmitted)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Crashed(message=f"process {run.infrastructure_pid} is gone (worker or "
                                                          "machine killed); found by the watcher"), force=True)


def _run_states(runs: dict) -> dict[str, str | None]:
    """flow_run_id -> state type name, orphaned runs counted as CRASHED."""
    return {rid: None if run is None else "CRASHED" if _orphaned(run)
            else (run.state.type.value if run.state else None) for rid, run in runs.items()}


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5)
def recover_stranded(max_attempts: int | None = None) -> list[dict]:
    """Corpora whose adapt run crashed, failed or vanished without an outcome: the ones to submit again.

    Those that used up `adapt_max_attempts` are marked failed and announced with the event `past.corpus.failed`
    (point a Prefect automation at it to notify someone); cancelled runs mark their corpus `cancelled`.
    """
    s = settings()
    home = Path(s.home)
    limit = s.adapt_max_attempts if max_attempts is None else max_attempts
    records = [r for r in inbox.all_ledger(home) if r.get("status") in inbox.UNFINISHED and r.get("flow_run_id")]
    runs = _read_runs([r["flow_run_id"] for r in records])
    log = get_run_logger()
    for run in [r for r in runs.values() if r is not None and _orphaned(r)]:
        log.warning(f"flow run {run.id}: process {run.infrastructure_pid} is gone; marking it Crashed")
        _mark_crashed(run)
    plan = inbox.recovery_plan(records, _run_states(runs), limit)
    for rec in plan.cancelled:
        inbox.update_ledger(home, rec["corpus_id"], status="cancelled", reason="its adapt run was cancelled")
        log.warning(f"corpus {rec['corpus_id'][:16]}: adapt run {rec['flow_run_id']} was cancelled; "
                    "`past backfill` runs it again")
    for rec in plan.give_up:
        why = f"adapt run crashed {rec.get('attempts', 1)} time(s) without an outcome (last run {rec['flow_run_id']})"
        inbox.update_ledger(home, rec["corpus_id"], status="failed", error=why)
        log.error(f"corpus {rec['corpus_id'][:16]}: {why}; marked failed")
        emit_event(event="past.corpus.failed", resource={"prefect.resource.id": f"past.corpus.{rec['corpus_id']}",
                                                          "prefect.resource.name": str(rec.get("name") or "")},
                   payload={"reason": why, "corpus_id": rec["corpus_id"], "flow_run_id": rec["flow_run_id"]})
    for rec in plan.resubmit:
        log.warning(f"corpus {rec['corpus_id'][:16]}: adapt run {rec['flow_run_id']} ended without an outcome; "
                    f"submitting attempt {int(rec.get('attempts', 1)) + 1} of {limit}")
    return [{"corpus_id": r["corpus_id"], "path": r.get("path"), "name": r.get("name"),
             "attempt": int(r.get("attempts", 1)) + 1} for r in plan.resubmit]
