"""Self-synthesized rehearsal: shipped prompts disjoint from the gate's, base-model answers cached by content."""

from __future__ import annotations

import json
from pathlib import Path

from past.evaluation import general_prompts
from past.replay import replay_pairs, replay_prompts
from past.scoring import normalize


def test_replay_prompts_share_no_item_with_the_gate() -> None:
    gate = {normalize(g.question) for g in general_prompts()}
    mine = [normalize(p) for p in replay_prompts()]
    assert len(mine) >= 32 and len(set(mine)) == len(mine)
    assert not gate & set(mine)


def test_replay_prompts_are_append_only() -> None:
    """Stage-2 run keys name the number of rehearsal prompts, not their text: the first 48 (the default, the
    whole file until the thirteenth session) must never change."""
    import hashlib

    assert hashlib.sha256(json.dumps(replay_prompts()[:48]).encode()).hexdigest()[:16] == "92b1cb90e9335ea3"


def test_replay_pairs_are_the_base_models_answers_cached(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    pairs = replay_pairs(tiny_model_dir, 4, 8, tmp_path)
    assert 0 < len(pairs) <= 4 and all(p["prompt"] in replay_prompts()[:4] and p["answer"] for p in pairs)
    files = list(tmp_path.glob("replay-*.jsonl"))
    assert len(files) == 1 and [json.loads(x) for x in files[0].read_text().splitlines()] == pairs
    import past.recall

    monkeypatch.setattr(past.recall, "answers", lambda *a, **k: (_ for _ in ()).throw(AssertionError("regenerated")))
    assert replay_pairs(tiny_model_dir, 4, 8, tmp_path) == pairs  # cache hit: no generation
