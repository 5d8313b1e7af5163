"""Gate task: serve the candidate (and the champion) behind an OpenAI-compatible endpoint and decide."""

from __future__ import annotations

import random
from pathlib import Path

from prefect import task

from past import inbox
from past.champion_serve import prefer_served
from past.evaluation import Champion, build_eval_set, load_eval_items, run_gate
from past.registry import Registry
from tasks.common import ACCELERATOR_TAG, require, retry_transient, settings


def evalset_path(home: Path, corpus_id: str) -> Path:
    """Where a corpus's held-out split is kept, so later gates can test retention on it."""
    return Path(home) / "evalsets" / f"{corpus_id}.jsonl"


def tool_spec_path(home: Path, corpus_id: str) -> Path:
    """A tool corpus's spec beside its held-out split: the simulator its gate episodes run against."""
    return Path(home) / "evalsets" / f"{corpus_id}.tools.json"


def tool_specs(home: Path, items: list) -> dict:
    """corpus id → ToolSpec for every corpus whose tool items are in `items` (missing specs stay missing: the
    gate then records those items as errors and fails closed)."""
    from past.tools import ToolSpec

    out = {}
    for cid in sorted({i.corpus_id for i in items if i.tool}):
        if (p := tool_spec_path(home, cid)).is_file():
            out[cid] = ToolSpec.model_validate_json(p.read_text())
    return out


def retention_items(home: Path, model_name: str, exclude: str, n: int, seed: int) -> list:
    """A seeded sample of held-out questions from corpora this model was already promoted on."""
    pool = []
    for rec in inbox.all_ledger(Path(home)):
        cid = rec["corpus_id"]
        if rec.get("status") == "promoted" and rec.get("model_name") == model_name and cid != exclude:
            path = evalset_path(home, cid)
            if path.exists():
                pool += load_eval_items(path, kind="retention")
    random.Random(seed).shuffle(pool)
    return pool[:n]


def base_as_champion(s) -> Champion:
    """The base model as the first candidate's incumbent, named by its weights (so its cached scores are too)."""
    from past.models import model_id, resolve_model

    path = resolve_model(s.base_model, s.models_dir)
    return Champion(f"base:{path.name}:{model_id(path)[:12]}", path, is_base=True)


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
