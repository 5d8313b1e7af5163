from __future__ import annotations

from pathlib import Path

from past.corpus import load_corpus, validate
from past.synthetic import DOC_ONLY_ATTRS, make_domains, write_corpus, write_heldout


def test_domains_are_disjoint_and_deterministic() -> None:
    s, t = make_domains(seed=1)
    assert not set(s.products) & set(t.products)
    s2, t2 = make_domains(seed=1)
    assert s.products == s2.products and t.qa == t2.qa
    assert make_domains(seed=2)[0].products != s.products


def test_doc_only_facts_are_in_documents_but_never_in_training_qa() -> None:
    _, t = make_domains(seed=0)
    train_q = {r["question"] for r in t.qa["train"]}
    docs = " ".join(d["text"] for d in t.documents())
    for r in t.qa["doc_only"]:
        assert r["question"] not in train_q and r["answer"] in docs
    assert {r["question"] for r in t.qa["paraphrase"]}.isdisjoint(train_q)
    assert len(t.qa["doc_only"]) == len(t.products) * len(DOC_ONLY_ATTRS)


def test_written_corpus_is_valid_with_rewrites(tmp_path: Path) -> None:
    s, _ = make_domains(seed=0)
    root = write_corpus(s, tmp_path / "src", rewrites=3)
    assert validate(root) == []
    c = load_corpus(root)
    assert len(c.documents) == len(s.products) and len(c.qa) == len(s.qa["train"])
    assert all(d.text.count(d.title) >= 4 for d in c.documents), "article + 3 rewrites name the product"
    held = write_heldout(s, tmp_path / "heldout.jsonl", corpus_id=c.id)
    assert len(held.read_text().splitlines()) == sum(len(s.qa[k]) for k in ("paraphrase", "doc_only", "two_fact"))


def test_split_domain_gives_disjoint_domains_with_all_qa_kinds() -> None:
    from past.synthetic import split_domain

    s, _ = make_domains(seed=0, n_source=9)
    a, b = split_domain(s, 6)
    assert len(a.products) == 6 and len(b.products) == 3 and not set(a.products) & set(b.products)
    assert {p: s.products[p] for p in b.products} == b.products
    assert all(len(b.qa[k]) > 0 for k in ("train", "paraphrase", "doc_only", "two_fact"))
    assert all(r["id"].startswith("dev-target-") for r in b.qa["paraphrase"])
    assert make_domains(seed=0, n_source=9)[0].qa == s.qa, "make_domain output unchanged by the refactor"


def test_two_fact_questions_name_the_wrong_product_as_distractor() -> None:
    s, _ = make_domains(seed=0)
    for r in s.qa["two_fact"]:
        price = {p: int(s.products[p]["price"].split()[0]) for p in (r["answer"], r["distractor"])}
        assert r["answer"] != r["distractor"] and price[r["answer"]] > price[r["distractor"]]
        assert r["answer"] in r["question"] and r["distractor"] in r["question"]
