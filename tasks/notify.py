"""Notifications of an adaptation's outcome: a Prefect event (for automations) and the optional webhook."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.events import emit_event

from past.notify import Event, message, mlflow_version_url, post
from tasks.common import settings


def _links(model_name: str, version: str) -> dict[str, str]:
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_UI_URL

    s = settings()
    links = {"MLflow version": mlflow_version_url(s.mlflow_ui_url, model_name, version)}
    ctx = FlowRunContext.get()
    if ctx and ctx.flow_run and PREFECT_UI_URL.value():
        links["Prefect run"] = f"{PREFECT_UI_URL.value().rstrip('/')}/runs/flow-run/{ctx.flow_run.id}"
    return links


def notify(e: Event) -> dict:
    """Emit `past.adapt.<kind>` and post the webhook message (when configured). Never raises: the outcome is
    already recorded in MLflow and the ledger; a lost notification is logged, not retried by the flow."""
    log = get_run_logger()
    try:
        emit_event(event=f"past.adapt.{e.kind}",
                   resource={"prefect.resource.id": f"past.model.{e.model_name}", "prefect.resource.name": e.model_name},
                   related=[{"prefect.resource.id": f"past.corpus.{e.corpus_id or e.corpus}",
                             "prefect.resource.role": "corpus", "prefect.resource.name": e.corpus}],
                   payload=message(e)["past"] | {"reason": e.reason[:500], "links": e.links})
    except Exception as err:  # noqa: BLE001 - events are best-effort like the webhook
        log.warning(f"could not emit past.adapt.{e.kind}: {err}")
    url = settings().notify_webhook_url
    if not url:
        return {"ok": None, "sent": False}
    res = post(url, message(e), timeout_s=settings().notify_timeout_s)
    (log.info if res["ok"] else log.warning)(
        f"webhook {'delivered' if res['ok'] else 'NOT delivered'} ({e.kind}, {res['attempts']} attempt(s))"
        + ("" if res["ok"] else f": {res['error']}"))
    return res | {"sent": True}


def notify_outcome(summary: dict) -> dict:
    """Promoted or rejected: what changed, the gate's evidence, links to the version and the run."""
    return notify(Event("promoted" if summary["promoted"] else "rejected", summary["model_name"],
                        summary["corpus_name"], summary["corpus_id"], str(summary["version"]), summary["reason"],
                        summary.get("gate") or {}, _links(summary["model_name"], str(summary["version"]))))


def notify_failure(model_name: str, corpus: str, corpus_id: str, error: str, version: str = "") -> dict:
    return notify(Event("failed", model_name, corpus, corpus_id, version, error, {}, _links(model_name, version)))
