"""A model card (Hugging Face format: YAML metadata, then Markdown) for every gated candidate.

Written by `Registry.conclude` once the gate has decided, as `README.md` in the candidate folder (next to
the weights, outside the checksum manifest: the weights a version points at are never touched) and as the
run's artifact `model-card/README.md`. Everything in it comes from the registry version, its run and the
gate report, so what a downstream reader sees is what the gate measured: the numbers are the report's.
"""

from __future__ import annotations

import json
from typing import Any

CARD = "README.md"

_ROWS = [  # (metric prefix, what it is) - the gate's new / retention / general slices
    ("new", "held-out questions of this corpus"),
    ("retention", "held-out questions of earlier promoted corpora"),
    ("general", "general prompts (forgetting check)"),
]


def _yaml(meta: dict[str, Any]) -> str:
    """Flat YAML front matter: scalars as JSON strings (valid YAML), lists as block lists."""
    out = []
    for k, v in meta.items():
        if isinstance(v, list):
            out.append(f"{k}:")
            out += [f"- {json.dumps(x)}" for x in v]
        else:
            out.append(f"{k}: {json.dumps(v)}")
    return "\n".join(out)


def _fmt(m: dict[str, float], key: str) -> str:
    return f"{m[key]:.3f}" if key in m else "—"


def render(name: str, version: str, tags: dict[str, str], params: dict[str, str], decision: dict) -> str:
    """The card for version `version` of `name` from its version tags, its run's params and the gate decision
    (`GateReport.to_dict()["decision"]`)."""
    m, passed = decision.get("metrics", {}), bool(decision.get("passed"))
    base = params.get("base_model", "")
    meta = {"library_name": "transformers", "base_model": base, "pipeline_tag": "text-generation",
            "tags": ["past", "parametric-skill-transfer", f"corpus:{tags.get('corpus_id', '')[:16]}"],
            "model_name": f"{name}/{version}"}
    lines = [
        "---", _yaml(meta), "---", "",
        f"# {name} version {version}", "",
        "Adapted by the PaST orchestrator: two-stage SFT on a new corpus (memorize the documents, then QA), "
        "plus a skill vector learned by GRPO on a source domain (θ = θ_sft + λ·v), gated against the champion.", "",
        "| | |", "|---|---|",
        f"| base model | `{base}` |",
        f"| corpus | `{params.get('corpus_name', '')}` (id `{tags.get('corpus_id', '')}`) |",
        f"| skill vector | {tags.get('skill_vector_version') or 'none'} |",
        f"| λ | {tags.get('lambda') or '—'} |",
        f"| teacher | {params.get('teacher', '—')} |",
        f"| gate items | {params.get('gate_items_source', '—')} |",
        "",
        "## SFT recipe", "",
    ]
    recipe = {k.removeprefix("sft_recipe."): v for k, v in sorted(params.items()) if k.startswith("sft_recipe.")}
    lines += [f"- `{k}` = {v}" for k, v in recipe.items()] or ["- (not recorded)"]
    lines += ["", "## Gate", "",
              f"**{'PASSED' if passed else 'FAILED'}** — {decision.get('reason', '')}", "",
              f"Compared with: `{decision.get('compared_with') or 'no champion'}`. "
              f"Eval set hash `{decision.get('eval_hash', '')[:16]}`.", "",
              "| slice | candidate | interval | champion | paired diff (interval) |", "|---|---|---|---|---|"]
    for kind, what in _ROWS:
        c = f"candidate_{kind}_accuracy"
        if c not in m:
            continue
        interval = (f"[{_fmt(m, c + '_lower')}, {_fmt(m, c + '_upper')}]" if c + "_lower" in m else "—")
        diff = (f"{m[kind + '_diff']:+.3f} [{m[kind + '_diff_lower']:+.3f}, {m[kind + '_diff_upper']:+.3f}]"
                if f"{kind}_diff_lower" in m else "—")
        lines.append(f"| {kind}: {what} | {_fmt(m, c)} | {interval} | {_fmt(m, f'champion_{kind}_accuracy')} | {diff} |")
    if "new_items" in m:
        lines += ["", f"{int(m['new_items'])} new-corpus items."]
    lines += ["", "Per-item answers: the run's artifact `gate/items.json` in MLflow.", ""]
    return "\n".join(lines)
