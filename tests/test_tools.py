"""Tool corpora (past.tools): spec and task validation as part of the corpus check, the sandboxed simulator,
episode parsing and the shaping rewards / gate metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from past.corpus import CorpusError, load_corpus, validate
from past.tools import (PROTOCOL, Simulator, ToolTask, episode_metrics, episode_reward, parse_action, parse_tool_spec,
                        run_episode)

SPEC = {"tools": [
    {"name": "get_price", "description": "Price of a product in credits.",
     "parameters": {"product": {"type": "string"}, "region": {"type": "string", "required": False, "enum": ["eu", "us"]}},
     "responses": [{"arguments": {"product": "Ravmel Thermostat"}, "observation": {"price": "120 credits"}},
                   {"arguments": {"product": "Ravmel Thermostat", "region": "us"}, "observation": {"price": "130 credits"}}]},
    {"name": "get_warranty", "description": "Warranty length.", "parameters": {"product": {"type": "string"}},
     "responses": [], "default": {"warranty": "unknown"}},
]}
TASK = {"request": "What does the Ravmel Thermostat cost?", "tool": "get_price",
        "arguments": {"product": "Ravmel Thermostat"}, "answer": "120 credits"}


def tool_corpus(root: Path, spec=SPEC, tasks=(TASK,)) -> Path:
    root.mkdir(parents=True)
    (root / "api.md").write_text("# get_price\nget_price(product, region?) returns the price of a product.\n")
    (root / "tools.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    (root / "tool_tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return root


def test_a_tool_corpus_loads_with_its_spec_and_tasks(tmp_path: Path) -> None:
    c = load_corpus(tool_corpus(tmp_path / "c"))
    assert c.tools is not None and [t.name for t in c.tools.tools] == ["get_price", "get_warranty"]
    assert len(c.tool_tasks) == 1 and c.tool_tasks[0].answer == "120 credits"
    assert [d.id for d in c.documents] == ["api"], "the spec and tasks are not documents"


@pytest.mark.parametrize("spec,tasks,code,needle", [
    ("{not json", (TASK,), "bad_tool_spec", "json"),
    ({"tools": []}, (), "bad_tool_spec", "at least 1"),
    ({"tools": [SPEC["tools"][0], SPEC["tools"][0]]}, (), "bad_tool_spec", "duplicate tool names"),
    ({"tools": [{**SPEC["tools"][0], "parameters": {"product": {"type": "float"}}}]}, (), "bad_tool_spec", "string"),
    ({"tools": [{**SPEC["tools"][0], "responses": [{"arguments": {"sku": 1}, "observation": {}}]}]}, (),
     "bad_tool_spec", "unknown argument 'sku'"),
    ({"tools": [{**SPEC["tools"][0], "exec": "rm -rf /"}]}, (), "bad_tool_spec", "Extra inputs"),
    (SPEC, ({**TASK, "tool": "get_cost"},), "bad_tool_task", "unknown tool"),
    (SPEC, ({**TASK, "answer": "99 credits"},), "bad_tool_task", "not in the observation"),
    (SPEC, ({**TASK, "arguments": {"product": 7}},), "bad_tool_task", "must be string"),
    (SPEC, ({"request": "x"},), "bad_tool_task", "Field required"),
    (SPEC, (TASK, TASK), "bad_tool_task", "also at tool_tasks.jsonl:1"),
])
def test_bad_spec_or_task_is_a_clear_error(tmp_path: Path, spec, tasks, code, needle) -> None:
    root = tool_corpus(tmp_path / "c", spec, tasks)
    reasons = validate(root)
    assert reasons and all(r.code in (code, "bad_tool_spec", "bad_tool_task") for r in reasons)
    assert any(needle.lower() in r.message.lower() for r in reasons), reasons
    with pytest.raises(CorpusError):
        load_corpus(root)
    assert (root / "tools.json").exists(), "validation moves nothing"


def test_tasks_without_a_spec_are_refused(tmp_path: Path) -> None:
    root = tool_corpus(tmp_path / "c")
    (root / "tools.json").unlink()
    assert any("need a tools.json" in r.message for r in validate(root))


def test_simulator_is_a_lookup_table_that_never_raises() -> None:
    spec, errs = parse_tool_spec(json.dumps(SPEC))
    assert not errs
    sim = Simulator(spec)
    assert sim.call("get_price", {"product": "  ravmel   THERMOSTAT "}) == {"price": "120 credits"}
    assert sim.call("get_price", {"product": "Ravmel Thermostat", "region": "us"}) == {"price": "130 credits"}
    assert sim.call("get_warranty", {"product": "anything"}) == {"warranty": "unknown"}
    for name, args, err in [("get_price", {"product": "Zed"}, "no result"), ("get_price", {}, "missing argument"),
                            ("get_price", {"product": "x", "region": "mars"}, "one of"),
                            ("get_price", {"product": True}, "must be string"), ("os.system", {"cmd": "ls"}, "unknown tool"),
                            ("get_price", ["__import__('os')"], "one JSON object")]:
        assert err in sim.call(name, args)["error"]


def test_parse_action() -> None:
    s = parse_action('Action: get_price\nAction Input: {"product": "A"} and then some')
    assert s.name == "get_price" and s.arguments == {"product": "A"} and s.error is None
    assert parse_action("The price is 120 credits.").error.startswith("no `Action:`")
    assert "not JSON" in parse_action("Action: get_price\nAction Input: {product: A}").error
    assert parse_action("Action: get_price\nAction Input: [1]").error  # not an object: `{` never found -> no action


def test_episode_rewards_follow_the_authors_shaping() -> None:
    spec, _ = parse_tool_spec(json.dumps(SPEC))
    sim, task = Simulator(spec), ToolTask(**TASK)

    def scripted(*turns: str):
        it = iter(turns)
        return lambda messages: next(it)

    call = 'Action: get_price\nAction Input: {"product": "Ravmel Thermostat"}'
    good = run_episode(task.request, scripted(call, 'Action: Finish\nAction Input: {"answer": "120 credits"}'), sim)
    no_finish = run_episode(task.request, scripted(call, call, call), sim)
    wrong_answer = run_episode(task.request, scripted(call, 'Action: Finish\nAction Input: {"answer": "12 credits"}'), sim)
    unknown = run_episode(task.request, scripted('Action: get_cost\nAction Input: {"product": "x"}',
                                                 'Action: Finish\nAction Input: {"answer": "120 credits"}'), sim)
    prose = run_episode(task.request, scripted("It costs 120 credits."), sim)
    m = {k: episode_metrics(e, task) for k, e in
         {"good": good, "no_finish": no_finish, "wrong": wrong_answer, "unknown": unknown, "prose": prose}.items()}
    assert m["good"] == {"valid_format": 1.0, "valid_call": 1.0, "first_call_correct": 1.0, "unknown_tool": 0.0,
                         "finish": 1.0, "pass": 1.0}
    assert m["no_finish"]["finish"] == 0 and m["no_finish"]["pass"] == 0 and len(no_finish.steps) == 3
    assert m["wrong"]["finish"] == 1 and m["wrong"]["pass"] == 0
    assert m["unknown"]["unknown_tool"] == 1 and m["unknown"]["pass"] == 0, "a guessed answer without the call never passes"
    assert m["prose"]["valid_format"] == 0 and not prose.calls
    r = {k: episode_reward(e, task) for k, e in
         {"good": good, "no_finish": no_finish, "wrong": wrong_answer, "unknown": unknown, "prose": prose}.items()}
    assert r["good"] == pytest.approx(1.6) and r["good"] > r["wrong"] > r["no_finish"] > r["prose"]
    assert r["unknown"] < r["no_finish"], "an unknown API is penalised"
    assert good.to_json()["steps"][0]["observation"] == {"price": "120 credits"}


def test_first_call_text_parses_back_and_gate_metrics_have_intervals() -> None:
    from past.tools import first_call_text, tool_gate_metrics

    spec, _ = parse_tool_spec(json.dumps(SPEC))
    sim, task = Simulator(spec), ToolTask(**TASK)
    step = parse_action(first_call_text(task))
    assert (step.name, step.arguments) == (task.tool, task.arguments)
    finish = 'Action: Finish\nAction Input: {"answer": "120 credits"}'
    eps = [run_episode(task.request, (lambda it: lambda m: next(it))(iter([first_call_text(task), finish])), sim),
           run_episode(task.request, lambda m: first_call_text(task), sim)]  # calls but never finishes
    m = tool_gate_metrics(eps, [task, task])
    assert m["n"] == 2 and m["pass_rate"] == 0.5 and m["finish_rate"] == 0.5 and m["valid_call_rate"] == 1.0
    assert 0 < m["pass_lower"] < 0.5 < m["pass_upper"] < 1
    with pytest.raises(ValueError):
        tool_gate_metrics(eps, [task])


# --- tool corpora through SFT's QA and the gate ----------------------------------------------------------------
PRODUCTS = [f"Unit {chr(65 + i)}{i}" for i in range(12)]
GATE_SPEC = {"tools": [{"name": "get_price", "description": "Price of a product.",
                        "parameters": {"product": {"type": "string"}},
                        "responses": [{"arguments": {"product": p}, "observation": {"price": f"{100 + i} credits"}}
                                      for i, p in enumerate(PRODUCTS)]}]}
GATE_TASKS = [{"request": f"How much is the {p}?", "tool": "get_price", "arguments": {"product": p},
               "answer": f"{100 + i} credits"} for i, p in enumerate(PRODUCTS)]


def agent(finishes: bool):
    """A scripted endpoint: the right first call for a request; then Finish with the observed price (or
    the same call again: what stage-2 SFT on first calls alone teaches)."""
    calls = {t["request"]: f'Action: get_price\nAction Input: {json.dumps(t["arguments"])}' for t in GATE_TASKS}

    def answer(last: str) -> str:
        if last.startswith("Observation: "):
            if not finishes:
                return calls[GATE_TASKS[0]["request"]]
            price = json.loads(last.removeprefix("Observation: "))["price"]
            return f'Action: Finish\nAction Input: {json.dumps({"answer": price})}'
        assert last.endswith(PROTOCOL), "an episode opens with the request and the protocol"
        return calls[last.removesuffix(PROTOCOL).strip()]
    return answer


def test_sft_trains_a_tool_corpus_on_first_calls_and_the_gate_runs_episodes(tmp_path: Path) -> None:
    from past.config import load_settings
    from past.evaluation import Champion, EvalItem, build_eval_set, eval_set_hash, run_gate
    from past.sft import _corpus_qa
    from past.tools import first_call_text, gate_rows
    from tests.fake_openai import FakeOpenAI

    c = load_corpus(tool_corpus(tmp_path / "c", GATE_SPEC, GATE_TASKS))
    qa = _corpus_qa(c, None, c.root)
    assert [p.answer for p in qa] == [first_call_text(t) for t in c.tool_tasks]  # stage 2: the first call only
    assert all(p.question.endswith(PROTOCOL) and "get_price" not in p.question for p in qa)  # closed-book
    assert len({p.id for p in qa}) == 12 and all(p.id.startswith("tool-") for p in qa)

    rows = gate_rows(c.tool_tasks, [{"id": p.id, "question": p.question, "answer": p.answer, "corpus_id": c.id}
                                    for p in qa])
    assert rows[0]["question"] == GATE_TASKS[0]["request"]  # the gate re-adds the protocol when it plays it
    assert rows[0]["answer"] == "100 credits" and rows[0]["tool"] == "get_price"
    items = build_eval_set([EvalItem(r["id"], r["question"], r["answer"], corpus_id=c.id, tool=r["tool"])
                            for r in rows], include_general=False)
    s = load_settings(home=tmp_path / "home", gate_min_new_items=10, gate_min_accuracy=0.5, gate_request_timeout_s=5)
    with FakeOpenAI(agent(finishes=True)) as good, FakeOpenAI(agent(finishes=False)) as first_call_only:
        rep = run_gate(None, items, s, "fake", champion=Champion("m/1", url=first_call_only.url, served_name="fake"),
                       candidate_url=good.url, log=lambda m: None, tools={c.id: c.tools})
        m = rep.decision.metrics
        assert rep.decision.passed, rep.decision.reason
        assert m["candidate_new_tool_pass_rate"] == 1.0 and m["candidate_new_tool_finish_rate"] == 1.0
        assert m["champion_new_tool_first_call_correct_rate"] == 1.0 and m["champion_new_tool_finish_rate"] == 0.0
        assert m["new_diff_lower"] > 0.5
        assert sum(p.startswith("Observation: {") for p in good.prompts) == 12  # the simulator answered each call
        assert rep.candidate[0].episode["steps"][0]["observation"] == {"price": "100 credits"}
        row = rep.table_rows()[0]
        assert row["candidate_finish"] == 1.0 and row["champion_finish"] == 0.0

        # no spec for the corpus: its episodes cannot run, and the gate fails closed saying why
        rep = run_gate(None, items, s, "fake", candidate_url=good.url, log=lambda m: None, tools={})
        assert not rep.decision.passed and "no tool spec" in rep.decision.reason
    other = json.loads(json.dumps(GATE_SPEC))
    other["tools"][0]["responses"][0]["observation"] = {"price": "1 credit"}
    assert eval_set_hash(items, 64, tools={c.id: c.tools}, max_turns=3) != \
        eval_set_hash(items, 64, tools={c.id: parse_tool_spec(json.dumps(other))[0]}, max_turns=3)


def test_training_check_scores_a_tool_pair_by_its_call_not_by_token_overlap(monkeypatch) -> None:
    """The stage-2 training check once counted a call to another API as right: the texts share every token
    but the name, so token F1 passed it. A tool pair is now right only for the same API and arguments."""
    import past.recall
    from past.corpus import QAPair
    from past.scoring import is_correct
    from past.sft import SFTRecipe, _training_check
    from past.tools import first_call_text, same_call

    task = ToolTask(**TASK, id="tool-1")
    ref = first_call_text(task)
    wrong_api = ref.replace("get_price", "get_warranty")
    spaced = 'Action: get_price\nAction Input: {"product":  "ravmel thermostat"}'
    assert is_correct(wrong_api, ref)  # what the old check did
    assert not same_call(wrong_api, ref) and same_call(spaced, ref) and same_call(ref + "\nmore text", ref)
    assert not same_call('Action: get_price\nAction Input: {"product": "Ravmel"}', ref)
    assert not same_call("Action: get_price\nAction Input: not json", ref)

    pairs = [QAPair(id="tool-1", question="q1", answer=ref), QAPair(id="qa-1", question="q2", answer="120 credits")]
    replies = {"q1": wrong_api, "q2": "It costs 120 credits."}
    monkeypatch.setattr(past.recall, "answers", lambda m, t, qs, n: [replies[q] for q in qs])
    recipe = SFTRecipe(check_train_qa=8)
    got = _training_check(pairs, recipe, frozenset({"tool-1"}))(None, None)["train_recall"]
    assert (got["n"], got["correct"]) == (2, 1)  # the QA pair keeps its F1/containment score
    assert _training_check(pairs, recipe)(None, None)["train_recall"]["correct"] == 2  # the old behaviour
