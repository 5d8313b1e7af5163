"""Fictional tool domains (past.synthetic_tools): valid tool corpora, disjoint source/target, seeded."""

from __future__ import annotations

from pathlib import Path

from past.corpus import load_corpus
from past.synthetic_tools import make_tool_domains, write_tool_corpus
from past.tools import Simulator, ToolSpec


def test_tool_domains_write_valid_corpora_with_disjoint_apis_and_products(tmp_path: Path) -> None:
    src, tgt = make_tool_domains(seed=3)
    for d in (src, tgt):
        c = load_corpus(write_tool_corpus(d, tmp_path / d.name))  # validation: every task's call finds its answer
        assert len(c.tool_tasks) == len(d.tasks["train"]) == 2 * 3 * 4 and len(c.documents) == 2 * 3
        sim = Simulator(ToolSpec.model_validate(d.spec()))
        for t in d.tasks["heldout"]:
            assert t["answer"] in str(sim.call(t["tool"], t["arguments"]))
        assert {t["tool"] for t in d.tasks["heldout"]} == {t["tool"] for t in d.tasks["train"]}
        assert all(t["tool"] not in t["request"] for t in d.tasks["train"])  # the request never names the API
    assert not {t["tool"] for t in src.tasks["train"]} & {t["tool"] for t in tgt.tasks["train"]}
    assert not set(src.facts) & set(tgt.facts) and not set(src.families) & set(tgt.families)
    again, _ = make_tool_domains(seed=3)
    assert again.tasks == src.tasks and make_tool_domains(seed=4)[0].tasks != src.tasks
