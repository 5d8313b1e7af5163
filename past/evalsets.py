"""The held-out sets each adaptation leaves behind, and what later gates take from them.

After SFT, a corpus's held-out split is kept at `<home>/evalsets/<corpus_id>.jsonl` (a tool corpus also keeps
its tool spec beside it, `<corpus_id>.tools.json`: the simulator its episodes run against). The gate asks it
as the new-corpus slice now; every later gate of the same model samples the kept sets of corpora it was
promoted on as the retention slice. Before a model has a champion, the base model stands in for one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from past import inbox
from past.corpus import Corpus, atomic_write
from past.evaluation import Champion, load_eval_items, select_new_items


def evalset_path(home: Path, corpus_id: str) -> Path:
    """Where a corpus's held-out split is kept, so later gates can test retention on it."""
    return Path(home) / "evalsets" / f"{corpus_id}.jsonl"


def tool_spec_path(home: Path, corpus_id: str) -> Path:
    """A tool corpus's spec beside its held-out split: the simulator its gate episodes run against."""
    return Path(home) / "evalsets" / f"{corpus_id}.tools.json"


def keep_evalset(home: Path, corpus: Corpus, eval_split: Path, min_items: int) -> tuple[Path, str, int]:
    """Keep the gate's new-corpus items from SFT's held-out split (`select_new_items`: the corpus's own QA when
    there is enough of it); a tool task's row becomes its episode. Returns (path, which items, how many)."""
    from past.tools import gate_rows

    split = [json.loads(line) for line in Path(eval_split).read_text().splitlines() if line.strip()]
    rows, source = select_new_items(gate_rows(corpus.tool_tasks, split),
                                    {p.id for p in corpus.qa} | {t.id for t in corpus.tool_tasks}, min_items)
    keep = evalset_path(home, corpus.id)
    keep.parent.mkdir(parents=True, exist_ok=True)
    if corpus.tools is not None:  # the gate's simulator for this corpus's episodes, now and in later retention checks
        atomic_write(tool_spec_path(home, corpus.id), corpus.tools.model_dump_json(indent=1))
    atomic_write(keep, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return keep, source, len(rows)


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


def base_as_champion(settings) -> Champion:
    """The base model as the first candidate's incumbent, named by its weights (so its cached scores are too)."""
    from past.models import model_id, resolve_model

    path = resolve_model(settings.base_model, settings.models_dir)
    return Champion(f"base:{path.name}:{model_id(path)[:12]}", path, is_base=True)
