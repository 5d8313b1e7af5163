"""Notifications: what a platform team's channel hears when a corpus is promoted, rejected or fails.

One Slack-compatible JSON message (`{"text": ...}`; Slack, Mattermost, Rocket.Chat and most webhook bridges
accept it) is posted to `notify_webhook_url` with httpx, a short timeout, and a few retries on transient
errors (connection errors, timeouts, 5xx, 429). Notifying is best-effort by design: a dead receiver is
reported in the return value and logged by the caller, never raised, so it cannot fail, retry or hold up
an adaptation that already decided. The Prefect-native side (events an automation can route anywhere)
lives in tasks/notify.py; this module knows nothing of Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from past.errors import retry_policy

KINDS = ("promoted", "rejected", "failed")
_ICON = {"promoted": ":white_check_mark:", "rejected": ":no_entry:", "failed": ":x:"}


@dataclass
class Event:
    kind: str  # promoted / rejected / failed
    model_name: str
    corpus: str  # corpus name (or the path / id the run was given)
    corpus_id: str = ""
    version: str = ""
    reason: str = ""  # the gate's reason, or the error of a failed run
    metrics: dict[str, float] = field(default_factory=dict)  # the gate's metrics
    links: dict[str, str] = field(default_factory=dict)  # label -> URL (MLflow version, Prefect run)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown notification kind {self.kind!r}; expected one of {KINDS}")


def mlflow_run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}" if ui_url and run_id else ""


def mlflow_version_url(ui_url: str, model_name: str, version: str) -> str:
    return f"{ui_url.rstrip('/')}/#/models/{model_name}/versions/{version}" if ui_url and version else ""


def message(e: Event) -> dict[str, Any]:
    """The webhook body: one line saying what changed, then the gate's evidence and the links."""
    head = {"promoted": f"{e.model_name} v{e.version} promoted to champion",
            "rejected": f"{e.model_name} v{e.version} rejected; the champion is unchanged",
            "failed": f"adaptation of {e.model_name} failed"}[e.kind]
    lines = [f"{_ICON[e.kind]} *{head}* (corpus `{e.corpus}`{f', {e.corpus_id[:12]}' if e.corpus_id else ''})"]
    m = e.metrics
    if "candidate_new_accuracy" in m:
        iv = (f" [{m['candidate_new_accuracy_lower']:.3f}, {m['candidate_new_accuracy_upper']:.3f}]"
              if "candidate_new_accuracy_lower" in m else "")
        lines.append(f"new-corpus accuracy {m['candidate_new_accuracy']:.3f}{iv} on {int(m.get('new_items', 0))} items")
    if "new_diff" in m:
        lines.append(f"vs incumbent, paired: {m['new_diff']:+.3f} [{m['new_diff_lower']:+.3f}, {m['new_diff_upper']:+.3f}]")
    if e.reason:
        lines.append(("reason: " if e.kind != "failed" else "error: ") + e.reason[:500])
    lines += [f"<{url}|{label}>" for label, url in e.links.items() if url]
    return {"text": "\n".join(lines), "past": {"kind": e.kind, "model_name": e.model_name, "version": e.version,
                                               "corpus": e.corpus, "corpus_id": e.corpus_id}}


def post(url: str, payload: dict, timeout_s: float = 5.0, retries: int = 2, backoff_s: float = 0.5) -> dict[str, Any]:
    """POST `payload` as JSON; returns {"ok", "status"?, "attempts", "error"?}. Never raises. Connection errors,
    timeouts, 5xx and 429 are retried; any other refusal would come back the same."""
    import httpx

    def transient(e: BaseException) -> bool:
        return isinstance(e, httpx.TransportError) or (
            isinstance(e, httpx.HTTPStatusError) and (e.response.status_code >= 500 or e.response.status_code == 429))

    out: dict[str, Any] = {"ok": False, "attempts": 0}
    try:
        for attempt in retry_policy(retries, backoff_s, transient=transient):
            with attempt:
                out["attempts"] += 1
                r = httpx.post(url, json=payload, timeout=timeout_s)
                out["status"] = r.status_code
                r.raise_for_status()
    except httpx.HTTPStatusError as e:
        return out | {"error": f"HTTP {e.response.status_code}: {e.response.text[:200]}"}
    except Exception as e:  # noqa: BLE001 - a dead receiver or a bad URL must not fail the adaptation either
        return out | {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    return out | {"ok": True, "error": None}
