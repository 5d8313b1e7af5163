"""Gate task: serve the candidate (and the champion) behind an OpenAI-compatible endpoint and decide."""

from __future__ import annotations

from prefect import task

from past.champion_serve import prefer_served
from past.evalsets import base_as_champion, evalset_path, retention_items, tool_specs
from past.evaluation import build_eval_set, load_eval_items, run_gate
from past.registry import Registry
from tasks.common import ACCELERATOR_TAG, require, retry_transient, settings


# The gate's vLLM servers take the same slot as training: on one machine a 3 GB server must not start on the
# cores another corpus is training on (`past up` limits the tag to 1).
@task(retries=1, retry_condition_fn=retry_transient, retry_delay_seconds=10, tags=[ACCELERATOR_TAG])
def serve_and_gate(candidate: dict, corpus_id: str, model_name: str, served_name: str, out_dir: str,
                   training_check: dict | None = None) -> dict:
    """Held-out QA of the new corpus + retention sample + general prompts, candidate vs champion; fail closed."""
    s = settings()
    new = load_eval_items(evalset_path(s.home, corpus_id), kind="new")
    items = build_eval_set(new, retention_items(s.home, model_name, corpus_id, s.gate_retention_items, s.seed))
    champion = prefer_served(Registry(s).champion_ref(model_name), s.home, model_name)  # a `past serve` answers
    if champion is None and s.gate_base_as_champion and not s.serve_url:  # an external endpoint serves no base
        champion = base_as_champion(s)
    report = run_gate(require(candidate), items, s, served_name=served_name, champion=champion,
                      training_check=training_check, tools=tool_specs(s.home, items))
    path = report.write(out_dir)
    d = report.decision
    return {"report": str(path), "passed": d.passed, "reason": d.reason, "metrics": d.metrics,
            "champion": d.champion_version, "items": len(items)}
