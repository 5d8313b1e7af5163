"""watch: poll the inbox on a schedule; claim each complete corpus exactly once; start one adapt per corpus.

    claim arrivals (atomic rename; bad ones -> quarantine; same content twice -> duplicates, not re-run)
    recover corpora whose adapt run ended without an outcome (crashed worker, killed process): submit them
        again, at most `adapt_max_attempts` runs in all, then mark them failed and emit `past.corpus.failed`
    for each claimed corpus not yet handed out (or orphaned by a killed run):
        submit `adapt` - as a deployment run (idempotency key = corpus id + attempt) or inline

No corpus is lost or run twice: claims are atomic renames recorded in a ledger; a killed watcher's
half-claims are finished by the next pass; `adapt` is itself idempotent per corpus.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from tasks.corpus import claim_new_corpora, mark_corpus
from tasks.dispatch import recover_stranded, submit_adapt


@flow(name="watch")
def watch(settle_s: float = 10.0, model_name: str = "support-bot", mode: str = "deployment",
          deployment: str = "adapt/adapt") -> dict:
    """One inbox pass. mode: `deployment` (run_deployment, returns at once) or `inline` (adapt runs here)."""
    found = claim_new_corpora(settle_s)
    retry = recover_stranded() if mode != "inline" else []  # inline runs are recovered by pid (the ledger)
    started = []
    for item in found["to_submit"] + retry:
        if mode == "inline":
            from flows.adapt import adapt

            result = adapt(item["corpus_id"], model_name=model_name)
            started.append({"corpus_id": item["corpus_id"], "version": result["version"],
                            "promoted": result["promoted"], "result": result})
        else:
            attempt = item.get("attempt", 1)
            run_id = submit_adapt(deployment, item["corpus_id"], model_name, attempt)
            mark_corpus(item["corpus_id"], "submitted", model_name=model_name, flow_run_id=run_id, attempts=attempt)
            started.append({"corpus_id": item["corpus_id"], "flow_run_id": run_id, "attempt": attempt})
    if found["claims"]:
        create_table_artifact(key="watch-claims", table=[{k: str(v) for k, v in c.items()} for c in found["claims"]],
                              description="Corpora claimed from the inbox in this pass")
    return {"claims": found["claims"], "started": started}
