"""The built-in extractive teacher, teacher selection, and `teach_corpus` (what adapt calls)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from past.config import load_settings
from past.corpus import Document, load_corpus
from past.errors import PastError
from past.qa import QAGenConfig, text_chunks
from past.scoring import normalize
from past.synthetic import make_domains, write_corpus
from past.teacher import completion_pair, extractive_generate, resolve_kind, sentences, teach_corpus


def test_completion_pairs_ask_for_the_value_only() -> None:
    assert completion_pair("The Zorvex Router costs 450 credits.", "Zorvex Router") == \
        ("The Zorvex Router costs", "450 credits")
    assert completion_pair("The Nilpha Speaker is assembled in the city of Calyx.", "Nilpha Speaker") == \
        ("The Nilpha Speaker is assembled in the city of", "Calyx"), "the template words are not the answer"
    assert completion_pair("It was directed by Stanley Kubrick in London.", "Film")[1] == "Stanley Kubrick"
    assert completion_pair("The status light of the Lamp glows teal.", "Lamp") is None, "no value: no question"
    assert completion_pair("Too short here.") is None


def test_sentences_skip_headings_and_duplicates() -> None:
    text = "# Title\n\nOne fact is here today. One fact is here today.\n## Part\nAnother fact sits in this line!"
    assert sentences(text) == ["One fact is here today.", "Another fact sits in this line!"]


def test_extractive_answers_come_from_the_document(tmp_path: Path) -> None:
    _, target = make_domains(0, n_source=2, n_target=4)
    corpus = load_corpus(write_corpus(target, tmp_path / "c", rewrites=3, qa_kinds=()))
    r = extractive_generate(corpus.documents, QAGenConfig(n_qa=6, n_implications=4))
    assert r.stats.qa == len(r.qa) == 24 and r.stats.implications == 16
    for p in r.qa:
        doc = corpus.doc(p.doc_id)
        assert normalize(p.answer) in normalize(doc.text), (p.answer, doc.id)
        assert doc.title in p.question
    assert len({p.question for p in r.qa}) == len(r.qa), "no duplicate questions"
    again = extractive_generate(corpus.documents, QAGenConfig(n_qa=6, n_implications=4))
    assert [p.id for p in again.qa] == [p.id for p in r.qa], "deterministic"


def test_long_documents_are_asked_about_piece_by_piece() -> None:
    text = "\n\n".join(f"Paragraph {i} says that unit {i} weighs {i + 3} kilograms in total." for i in range(300))
    chunks = text_chunks(text, 2000)
    assert len(chunks) > 5 and all(len(c) <= 2000 for c in chunks)
    assert "".join(c.replace("\n", "") for c in chunks) == text.replace("\n", ""), "no text dropped"
    doc = Document("big", "Big", text, "big.md")
    r = extractive_generate([doc], QAGenConfig(n_qa=2, max_doc_chars=2000))
    assert len(r.qa) == 2 * len(chunks)
    assert any("299" in p.answer or "302" in p.answer for p in r.qa), "the tail of the document is asked about"


def test_teacher_selection(monkeypatch) -> None:
    assert resolve_kind(load_settings()) == "extractive"
    assert resolve_kind(load_settings(teacher_base_url="http://127.0.0.1:1/v1", teacher_model="m")) == "endpoint"
    assert resolve_kind(load_settings(teacher="self")) == "self"
    with pytest.raises(PastError, match="teacher"):
        resolve_kind(load_settings(teacher="oracle"))


def test_teach_corpus_writes_once_and_skips_corpora_with_enough_qa(tmp_path: Path) -> None:
    _, target = make_domains(1, n_source=2, n_target=3)
    docs_only = load_corpus(write_corpus(target, tmp_path / "docs", rewrites=1, qa_kinds=()))
    s = load_settings()
    rec = teach_corpus(s, docs_only, tmp_path / "teacher")
    assert rec["generated"] and rec["teacher"] == "extractive" and rec["qa"] == 3 * s.teacher_n_qa
    out = Path(rec["path"])
    assert {p.name for p in out.iterdir()} == {"qa.jsonl", "implications.jsonl", "stats.json", "teacher.json"}
    assert json.loads((out / "stats.json").read_text())["qa"] == rec["qa"]
    assert teach_corpus(s, docs_only, tmp_path / "teacher")["cached"] is True
    with_qa = load_corpus(write_corpus(target, tmp_path / "qa", rewrites=1))
    assert not teach_corpus(load_settings(teacher_min_qa=5), with_qa, tmp_path / "teacher")["generated"]
    assert teach_corpus(load_settings(teacher_min_qa=0), docs_only, tmp_path / "t2")["generated"] is False
