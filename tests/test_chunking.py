"""Stage-1 windows: a document 10× longer than max_length loses no token, and each window knows its document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from past.chunking import coverage, windows


def long_document(n_sections: int = 12) -> str:
    parts = ["# Orrin Field Manual"]
    for s in range(n_sections):
        parts.append(f"## Section {s}: the {['pump', 'valve', 'relay', 'gauge'][s % 4]}")
        parts += [f"Unit {s}-{i} of the Orrin line is rated for {s * 10 + i} bar and ships with part code "
                  f"OR-{s:02d}{i:02d}." for i in range(12)]
    return "\n\n".join(parts)


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_long_document_every_token_in_some_window(tok) -> None:
    text, max_length, overlap = long_document(), 128, 16
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 10 * max_length
    wins = windows(tok, "manual", "Orrin Field Manual", text, max_length, overlap)
    assert all(len(w.input_ids) <= max_length for w in wins)
    seen = set()
    for w in wins:
        seen.update(range(w.start, w.end))
        body = w.input_ids[len(w.input_ids) - 1 - (w.end - w.start):-1]
        assert body == ids[w.start:w.end], "each window carries its tokens verbatim"
        assert w.input_ids[-1] == tok.eos_token_id
    assert seen == set(range(len(ids))), f"tokens never trained: {sorted(set(range(len(ids))) - seen)[:10]}"
    assert coverage(wins, len(ids)) == 1.0
    assert all(a.end - b.start == overlap for a, b in zip(wins, wins[1:])), "consecutive windows overlap"
    # every window after the first is anchored: title, and the section heading in force where it starts
    for w in wins[1:]:
        head = tok.decode(w.input_ids[:12])
        assert head.startswith("Orrin Field Manual - Section"), head


def test_short_text_is_one_window_and_gaps_lower_coverage(tok) -> None:
    wins = windows(tok, "d", "T", "A short text.", 64, 8)
    assert len(wins) == 1 and wins[0].start == 0
    assert coverage(wins, wins[0].end) == 1.0
    assert coverage([wins[0]], wins[0].end * 2) == 0.5


def test_stage1_trains_every_window_of_a_long_document(tiny_model_dir: Path, tmp_path: Path) -> None:
    """run_memorize on a corpus with a document 10× max_length: coverage 1.0 recorded, nothing truncated."""
    from past.sft import SFTRecipe, run_memorize

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manual.md").write_text(long_document())
    (corpus / "short.md").write_text("# Note\nThe Orrin line is serviced in Calyx.\n")
    recipe = SFTRecipe(max_steps_memorize=1, batch_size=2, max_length=128, chunk_overlap=16, save_steps=100)
    r = run_memorize(corpus, tiny_model_dir, recipe, tmp_path / "work", progress=False)
    m = r["metrics"]
    assert m["coverage"] == 1.0 and m["texts_split"] == 1 and m["windows"] > 11
    assert json.loads((tmp_path / "work" / "stage1" / "metrics.json").read_text())["coverage"] == 1.0


def test_recipe_rejects_bad_chunking() -> None:
    from past.sft import SFTError, SFTRecipe

    with pytest.raises(SFTError, match="chunk_overlap"):
        SFTRecipe(max_length=128, chunk_overlap=-1)
    with pytest.raises(SFTError, match="min_steps_qa"):
        SFTRecipe(min_steps_qa=-1)
