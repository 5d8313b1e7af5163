"""Gate plumbing against a small stdlib fake OpenAI server (fault injection), and the decision rules.

The fake server is only for faults a real server will not produce on demand; the real vLLM path is covered
by tests/test_serving_vllm.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from past.config import load_settings
from tests import fake_openai
from past.evaluation import (
    Champion, EvalItem, EvalSetError, ItemResult, build_eval_set, decide, eval_set_hash, general_prompts,
    load_eval_items, run_gate,
)
from past.model_card import render
from past.serving import free_port

QA = [{"id": f"q{i}", "question": f"What is the code word number {i}?", "answer": f"word{i}",
       "doc_id": f"d{i % 3}", "corpus_id": "c1"} for i in range(12)]


class FakeOpenAI(fake_openai.FakeOpenAI):
    """The tests' fake server (tests/fake_openai.py) with switchable behaviour.

    mode: good (answers from `answers`), wrong, garbage (200 + non-JSON), malformed (JSON without choices),
    empty, error500, flaky (first request per question 500s), hang, judge (yes if 'word' in proposed answer)."""

    def __init__(self, mode: str = "good", answers: dict[str, str] | None = None, die_after: int | None = None,
                 models: tuple[str, ...] | None = None):
        self.mode, self.answers = mode, answers or {}
        self.seen: set[str] = set()
        self.release = threading.Event()
        super().__init__(models=models, die_after=die_after)

    def respond(self, body: dict) -> tuple[int, dict | bytes]:
        time.sleep(0.02)  # let requests overlap so concurrency is observable
        q = body["messages"][-1]["content"]
        mode = self.mode
        if mode == "hang":
            self.release.wait(10)
            return 0, b""
        if mode == "error500" or (mode == "flaky" and q not in self.seen):
            self.seen.add(q)
            return 500, {"error": {"message": "boom"}}
        if mode == "garbage":
            return 200, b"<html>not json at all"
        if mode == "malformed":
            return 200, {"id": "x", "object": "chat.completion"}
        if mode == "judge":
            text = "yes" if "Proposed answer: number" in q else "no"
        else:
            text = {"empty": "", "wrong": "no idea"}.get(mode, self.answers.get(q, "no idea"))
        return 200, fake_openai.completion(body["model"], text)

    def stop(self) -> None:
        self.release.set()
        super().stop()


@pytest.fixture()
def qa_file(tmp_path: Path) -> Path:
    p = tmp_path / "heldout.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in QA))
    return p


@pytest.fixture()
def items(qa_file: Path) -> list[EvalItem]:
    return build_eval_set(load_eval_items(qa_file), include_general=False)


@pytest.fixture()
def settings():
    return load_settings(gate_request_timeout_s=0.5, gate_concurrency=4, gate_min_accuracy=0.5, gate_min_new_items=10)


@pytest.fixture()
def servers():
    made: list[FakeOpenAI] = []

    def make(*a, **kw) -> FakeOpenAI:
        made.append(FakeOpenAI(*a, **kw))
        return made[-1]

    yield make
    for s in made:
        s.release.set()
        try:
            s.stop()
        except Exception:
            pass


def right_answers(items) -> dict[str, str]:
    return {i.question: i.answer for i in items}


# --- eval-set loading ------------------------------------------------------------------------------------
def test_load_eval_items_schema(qa_file: Path, tmp_path: Path) -> None:
    got = load_eval_items(qa_file)
    assert len(got) == 12 and got[0] == EvalItem("q0", QA[0]["question"], "word0", "d0", "c1", "new")
    # the split writes doc_id null for QA that named no document (documented): the gate reads it
    p = tmp_path / "eval.jsonl"
    p.write_text(json.dumps(QA[0] | {"doc_id": None}) + "\n")
    assert load_eval_items(p)[0].doc_id == ""


@pytest.mark.parametrize("line,match", [
    ("{not json", r"heldout.jsonl:2: not JSON"),
    ('{"id": "x", "question": "q?"}', r":2: field 'answer'"),
    ('{"id": "x", "question": "q?", "answer": "a", "corpus_id": 3}', r":2: field 'corpus_id'"),
    (json.dumps(QA[0]), r":2: duplicate id 'q0'"),
])
def test_bad_eval_lines_name_file_line_and_field(tmp_path: Path, line: str, match: str) -> None:
    p = tmp_path / "heldout.jsonl"
    p.write_text(json.dumps(QA[0]) + "\n" + line + "\n")
    with pytest.raises(EvalSetError, match=match):
        load_eval_items(p)


def test_general_prompts_and_hash(items) -> None:
    g = general_prompts()
    assert len(g) >= 16 and all(i.kind == "general" for i in g)
    full = build_eval_set(items, include_general=True)
    assert len(full) == len(items) + len(g)
    h = eval_set_hash(full, 64)
    assert h == eval_set_hash(list(full), 64)
    assert h != eval_set_hash(full, 32) and h != eval_set_hash(full[:-1], 64)


def test_eval_set_hash_names_the_scoring_rule(items, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cached champion scores are keyed by the hash: a changed correctness rule or judge prompt must miss."""
    import past.evaluation as ev

    h, hj = eval_set_hash(items, 64), eval_set_hash(items, 64, "judge-m")
    monkeypatch.setattr(ev, "SCORING_RULE", ev.SCORING_RULE + "-changed")
    assert eval_set_hash(items, 64) != h
    monkeypatch.setattr(ev, "JUDGE_PROMPT", ev.JUDGE_PROMPT + " Be strict.")
    assert eval_set_hash(items, 64, "judge-m") not in (hj, eval_set_hash(items, 64))


# --- decision rules -----------------------------------------------------------------------------------------
def results(kind_correct: dict[str, list[bool]], errors: int = 0) -> list[ItemResult]:
    out = []
    for kind, flags in kind_correct.items():
        for i, ok in enumerate(flags):
            out.append(ItemResult(f"{kind}::{i}", kind, "q", "a", "a" if ok else "b", correct=ok,
                                  token_f1=float(ok)))
    for r in out[:errors]:
        r.answer, r.error, r.correct = None, "APITimeoutError: timed out", False
    return out


def test_decide_floor_only_without_champion(settings) -> None:
    # the floor is on the Wilson lower bound, not the point estimate
    d = decide(results({"new": [True] * 15 + [False] * 5}), None, settings)  # 0.75, lower bound 0.53
    assert d.passed, d.reason
    assert d.metrics["candidate_new_accuracy_lower"] == pytest.approx(0.531, abs=1e-3)
    d = decide(results({"new": [True] * 12 + [False] * 8}), None, settings)  # 0.6 ≥ 0.5, but lower bound 0.39
    assert not d.passed and "does not clear the floor 0.500" in d.reason and "n=20" in d.reason


def test_decide_refuses_too_few_new_items(settings) -> None:
    d = decide(results({"new": [True] * 4}), None, settings)  # 4 of 4 right, and still no decision
    assert not d.passed and "only 4 new-corpus items, fewer than gate_min_new_items 10" in d.reason


def test_decide_training_check_is_a_named_failure(settings) -> None:
    s = settings.model_copy(update=dict(sft_min_train_recall=0.5))
    check = {"n": 10, "correct": 2, "accuracy": 0.2, "lower": 0.06, "upper": 0.51}
    d = decide(results({"new": [True] * 20}), None, s, training_check=check)
    assert not d.passed and "SFT did not take: the candidate answered 2 of 10" in d.reason
    assert d.metrics["train_recall"] == 0.2
    assert decide(results({"new": [True] * 20}), None, s, training_check=check | {"correct": 8, "accuracy": 0.8}).passed


def test_decide_margin_retention_general(settings) -> None:
    s = settings.model_copy(update=dict(gate_margin=0.3, gate_retention_tolerance=0.1))
    champ = results({"new": [True] * 5 + [False] * 15, "retention": [True] * 10, "general": [True] * 4})
    better = results({"new": [True] * 20, "retention": [True] * 9 + [False], "general": [True] * 4})
    d = decide(better, champ, s, "m/1", "h")
    assert d.passed, d.reason
    assert d.champion_version == "m/1" and d.metrics["retention_drop"] == pytest.approx(0.1)
    assert d.metrics["new_diff"] == pytest.approx(0.75) and 0.3 < d.metrics["new_diff_lower"] < 0.75
    # retention and general show their intervals too (the card renders them); the rule stays the point drop
    m = d.metrics
    assert m["candidate_retention_accuracy_lower"] < 0.9 < m["candidate_retention_accuracy_upper"]
    assert m["retention_diff"] == pytest.approx(-0.1) and m["retention_diff_lower"] < -0.1 < m["retention_diff_upper"]
    assert m["general_diff"] == 0.0 and m["candidate_general_accuracy_upper"] == pytest.approx(1.0)
    card = render("m", "2", {}, {}, {"passed": True, "metrics": m})
    assert "-0.100 [" in card and "| general" in card
    # better than the champion (0.75 vs 0.25), but the paired lower bound does not clear the margin
    d = decide(results({"new": [True] * 15 + [False] * 5, "retention": [True] * 10, "general": [True] * 4}),
               champ, s.model_copy(update=dict(gate_margin=0.45)))
    assert not d.passed and "paired difference +0.500" in d.reason and "below the margin +0.450" in d.reason
    # a tie with the champion is no evidence of improvement at margin 0; a negative margin tolerates it
    tie = s.model_copy(update=dict(gate_margin=0.0))
    assert not decide(champ, champ, tie).passed
    assert decide(results({"new": [True] * 20}), results({"new": [True] * 20}),
                  s.model_copy(update=dict(gate_margin=-0.2))).passed
    # retention drop beyond tolerance
    d = decide(results({"new": [True] * 20, "retention": [True] * 8 + [False] * 2, "general": [True] * 4}), champ, s)
    assert not d.passed and "retention accuracy dropped 0.200" in d.reason
    # general prompts are protected the same way
    d = decide(results({"new": [True] * 20, "retention": [True] * 10, "general": [True, False, False, True]}),
               champ, s)
    assert not d.passed and "general accuracy dropped" in d.reason


def test_decide_fails_closed_on_errors_and_mismatch(settings) -> None:
    many = results({"new": [True] * 20}, errors=2)  # 10% > 5%
    d = decide(many, None, settings)
    assert not d.passed and "candidate: 2/20 requests failed" in d.reason and "APITimeoutError" in d.reason
    assert decide(results({"new": [True] * 20}, errors=1), None, settings).passed  # 5% is allowed
    d = decide(results({"new": [True] * 10}), results({"new": [True] * 3}), settings)
    assert not d.passed and "same items" in d.reason
    d = decide(results({"retention": [True]}), None, settings)
    assert not d.passed and "no new-corpus items" in d.reason


# --- the gate against a fake endpoint ---------------------------------------------------------------------------
def test_endpoint_that_does_not_serve_the_name_is_refused_before_asking(items, settings, servers) -> None:
    srv = servers("good", right_answers(items), models=("m/1",))
    rep = run_gate(None, items, settings, "m/2", candidate_url=srv.url, log=lambda m: None)
    assert not rep.decision.passed and "does not serve model 'm/2'; it serves ['m/1']" in rep.decision.reason
    assert srv.requests == 0  # refused before the first question
    assert run_gate(None, items, settings, "m/1", candidate_url=srv.url, log=lambda m: None).decision.passed


def test_gate_passes_with_good_answers_and_bounded_concurrency(items, settings, servers, tmp_path) -> None:
    srv = servers("good", right_answers(items))
    rep = run_gate(None, items, settings, "m/2", candidate_url=srv.url, log=lambda m: None)
    assert rep.decision.passed, rep.decision.reason
    assert [r.answer for r in rep.candidate] == [i.answer for i in items]
    assert all(r.exact_match == 1.0 and r.correct for r in rep.candidate)
    assert 1 < srv.max_in_flight <= settings.gate_concurrency
    data = json.loads(rep.write(tmp_path / "out").read_text())
    assert data["decision"]["passed"] and len(data["items"]) == len(items)
    assert data["items"][0]["candidate_answer"] == "word0"


@pytest.mark.parametrize("mode,expect", [
    ("garbage", "requests failed"),
    ("malformed", "malformed response"),
    ("empty", "empty answer"),
    ("error500", "InternalServerError"),
])
def test_garbage_and_errors_fail_closed(items, settings, servers, mode, expect) -> None:
    srv = servers(mode)
    rep = run_gate(None, items, settings, "m/2", candidate_url=srv.url, log=lambda m: None)
    assert not rep.decision.passed
    assert "candidate:" in rep.decision.reason and expect in rep.decision.reason
    assert all(r.correct is False for r in rep.candidate)


def test_server_errors_are_retried_with_backoff(items, settings, servers) -> None:
    srv = servers("flaky", right_answers(items))
    rep = run_gate(None, items, settings, "m/2", candidate_url=srv.url, log=lambda m: None)
    assert rep.decision.passed, rep.decision.reason
    assert all(r.attempts == 2 for r in rep.candidate)
    assert srv.requests == 2 * len(items)


def test_500s_stop_early_and_record_attempts(items, settings, servers) -> None:
    srv = servers("error500")
    rep = run_gate(None, items, settings, "m/2", candidate_url=srv.url, log=lambda m: None)
    tried = [r for r in rep.candidate if not r.error.startswith("aborted")]
    assert tried and all(r.attempts == 3 for r in tried)  # 1 try + 2 retries
    assert len(tried) < len(items)  # the circuit breaker spared the rest


def test_hanging_server_times_out_and_fails_closed(items, settings, servers) -> None:
    srv = servers("hang")
    t0 = time.monotonic()
    rep = run_gate(None, items, settings, "m/2", candidate_url=srv.url, log=lambda m: None)
    assert not rep.decision.passed and "Timeout" in rep.decision.reason
    assert time.monotonic() - t0 < 8


def test_server_dying_mid_eval_fails_closed(items, settings, servers) -> None:
    srv = servers("good", right_answers(items), die_after=5)
    rep = run_gate(None, items, settings, "m/2", candidate_url=srv.url, log=lambda m: None)
    assert not rep.decision.passed
    assert "APIConnectionError" in rep.decision.reason or "requests failed" in rep.decision.reason
    assert sum(r.answer is not None for r in rep.candidate) <= 5


def test_unhealthy_endpoint_fails_closed(items, settings) -> None:
    rep = run_gate(None, items, settings, "m/2", candidate_url=f"http://127.0.0.1:{free_port()}/v1",
                   log=lambda m: None)
    assert not rep.decision.passed and rep.decision.reason.startswith("candidate server failed")
    assert rep.candidate == []


def test_managed_server_that_cannot_start_fails_closed(items, settings, tmp_path) -> None:
    s = settings.model_copy(update=dict(serve_python=Path("/nonexistent/python")))
    (tmp_path / "cand").mkdir()
    rep = run_gate(tmp_path / "cand", items, s, "m/2", log=lambda m: None)
    assert not rep.decision.passed and "candidate server failed" in rep.decision.reason
    assert "not found" in rep.decision.reason


def test_champion_compared_on_same_items_and_cached(items, settings, servers) -> None:
    good = servers("good", right_answers(items))
    champ = servers("wrong")
    ch = Champion("m/1", url=champ.url)
    rep = run_gate(None, items, settings, "m/2", champion=ch, candidate_url=good.url, log=lambda m: None)
    assert rep.decision.passed and rep.decision.champion_version == "m/1"
    assert rep.decision.metrics["champion_new_accuracy"] == 0.0 and rep.timings["champion_cached"] == 0.0
    n = champ.requests
    rep2 = run_gate(None, items, settings, "m/3", champion=ch, candidate_url=good.url, log=lambda m: None)
    assert champ.requests == n and rep2.timings["champion_cached"] == 1.0  # cache hit: champion not re-asked
    assert [r.answer for r in rep2.champion] == [r.answer for r in rep.champion]
    # a different eval set misses the cache
    run_gate(None, items[:-1], settings, "m/4", champion=ch, candidate_url=good.url, log=lambda m: None)
    assert champ.requests > n
    # the champion beating the candidate fails the gate
    rep3 = run_gate(None, items, settings, "m/5", champion=Champion("m/9", url=good.url),
                    candidate_url=champ.url, log=lambda m: None)
    assert not rep3.decision.passed


def test_champion_server_failure_fails_closed(items, settings, servers) -> None:
    good = servers("good", right_answers(items))
    rep = run_gate(None, items, settings, "m/2", champion=Champion("m/1", url=f"http://127.0.0.1:{free_port()}/v1"),
                   candidate_url=good.url, log=lambda m: None)
    assert not rep.decision.passed and rep.decision.reason.startswith("champion server failed")


def test_judge_verdicts_decide_and_are_cached(items, settings, servers) -> None:
    cand = servers("good", {i.question: f"number {i.id} of the codes" for i in items})  # rule says wrong
    judge = servers("judge")
    s = settings.model_copy(update=dict(judge_base_url=judge.url, judge_model="j"))
    rep = run_gate(None, items, s, "m/2", candidate_url=cand.url, log=lambda m: None)
    assert rep.decision.passed, rep.decision.reason
    assert all(r.judge is True and r.correct and r.token_f1 < 0.5 for r in rep.candidate)
    assert judge.requests == len(items)
    # same (question, answer, reference) → one judge call; a broken judge counts as an error
    from past.evaluation import Judge

    j = Judge(judge.url, "j")
    import asyncio

    async def twice():
        return [await j.verdict("q", "number 1", "word1"), await j.verdict("q", "number 1", "word1")]

    before = judge.requests
    assert asyncio.run(twice()) == [True, True] and judge.requests == before + 1
    bad = servers("garbage")
    s2 = settings.model_copy(update=dict(judge_base_url=bad.url, judge_model="j"))
    rep = run_gate(None, items, s2, "m/2", candidate_url=cand.url, log=lambda m: None)
    assert not rep.decision.passed and "judge gave no verdict" in rep.decision.reason


def test_cli_gate_exit_codes(qa_file, servers, tmp_path, capsys, monkeypatch) -> None:
    from past.cli import main

    monkeypatch.setenv("PAST_GATE_MIN_NEW_ITEMS", "10")
    items = load_eval_items(qa_file)
    good, bad = servers("good", right_answers(items)), servers("wrong")
    args = ["gate", "--eval", str(qa_file), "--no-general", "--out", str(tmp_path / "r")]
    assert main([*args, "--url", good.url, "--name", "m"]) == 0
    assert "PASS" in capsys.readouterr().out and (tmp_path / "r" / "gate-report.json").is_file()
    listed = servers("wrong", models=("w",))  # --champion-url finds the name it serves from /v1/models
    assert main([*args, "--url", good.url, "--champion-url", listed.url, "--name", "m"]) == 0
    assert main([*args, "--url", bad.url, "--name", "m"]) == 1
    assert "FAIL: new-corpus accuracy 0.000 (lower 95% bound 0.000, n=12) does not clear the floor" in capsys.readouterr().out
    assert main(["gate", "--eval", str(qa_file)]) == 2  # neither --model nor --url


def test_select_new_items_prefers_the_corpus_own_qa() -> None:
    from past.evaluation import select_new_items

    rows = [{"id": f"h{i}"} for i in range(3)] + [{"id": f"t{i}"} for i in range(5)]
    assert select_new_items(rows, {"h0", "h1", "h2"}, 3) == (rows[:3], "human")
    assert select_new_items(rows, {"h0", "h1", "h2"}, 4) == (rows, "human+teacher")
    assert select_new_items(rows[3:], set(), 4) == (rows[3:], "teacher")


def test_base_model_stands_in_for_a_missing_champion(items, settings, servers) -> None:
    """First candidate: compared with the base model, but promotion stays compare-and-set on "no champion"."""
    good, base = servers("good", right_answers(items)), servers("wrong")
    rep = run_gate(None, items, settings, "m/1", champion=Champion("base:tiny:abc", url=base.url, is_base=True),
                   candidate_url=good.url, log=lambda m: None)
    d = rep.decision
    assert d.passed and d.champion_version is None and d.compared_with == "base:tiny:abc"
    assert d.metrics["champion_new_accuracy"] == 0.0 and d.metrics["new_diff"] == 1.0
    # a candidate worse than its base model on the new corpus is refused
    rep2 = run_gate(None, items, settings, "m/2", champion=Champion("base:other:def", url=good.url, is_base=True),
                    candidate_url=base.url, log=lambda m: None)
    assert not rep2.decision.passed and "paired difference" in rep2.decision.reason


def test_general_ability_lost_against_the_base_is_refused(settings) -> None:
    base = results({"new": [False] * 20, "general": [True] * 15 + [False] * 5})
    forgot = results({"new": [True] * 20, "general": [True] * 1 + [False] * 19})
    d = decide(forgot, base, settings, None, compared_with="base:m")
    assert not d.passed and "general accuracy dropped" in d.reason and d.compared_with == "base:m"


def test_kept_evalsets_feed_retention_of_the_same_model_only(tmp_path: Path) -> None:
    """An adaptation keeps its held-out split; later gates of the same model sample it, seeded; others do not."""
    from past import inbox
    from past.corpus import QAPair, load_corpus, write_splits
    from past.evalsets import evalset_path, keep_evalset, retention_items

    home = tmp_path / "home"
    corpus = load_corpus(Path(__file__).parent / "data" / "facts")
    teacher = [QAPair(id=f"t{i}", question=f"Teacher question {i}?", answer=f"answer {i}", doc_id=d.id)
               for i, d in enumerate(corpus.documents)]
    split = write_splits(corpus, tmp_path / "splits", list(corpus.qa) + teacher, 0.5, seed=0)
    path, source, n = keep_evalset(home, corpus, tmp_path / "splits" / "eval.jsonl", min_items=1)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert path == evalset_path(home, corpus.id) and source == "human" and n == len(kept) > 0
    assert all(not r["id"].startswith("t") for r in kept)  # the corpus's own QA is preferred when there is enough
    _, source_all, n_all = keep_evalset(home, corpus, tmp_path / "splits" / "eval.jsonl", min_items=10_000)
    assert source_all == "human+teacher" and n_all == split["eval"] > n

    assert retention_items(home, "bot", exclude="other", n=5, seed=0) == []  # not promoted yet
    inbox.update_ledger(home, corpus.id, status="promoted", model_name="bot")
    first = retention_items(home, "bot", exclude="other", n=5, seed=0)
    assert len(first) == 5 and all(i.kind == "retention" and i.corpus_id == corpus.id for i in first)
    assert [i.id for i in retention_items(home, "bot", exclude="other", n=5, seed=0)] == [i.id for i in first]
    assert retention_items(home, "other-bot", exclude="other", n=5, seed=0) == []
    assert retention_items(home, "bot", exclude=corpus.id, n=5, seed=0) == []  # never the corpus under test
