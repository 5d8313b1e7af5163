"""Tool corpora: API documentation plus a machine-readable tool spec, a sandboxed simulator, episodes, rewards.

The paper's third setting (ToolBench, closed-book): the model learns an API from its documentation (SFT),
must call it without the prompt listing any API, read the observation, and finish with an answer. We mirror
the first author's pipeline (Stanleytowne/Search-R1: ReAct lines `Action:` / `Action Input:`, a simulated API
server, shaping rewards for format, error-free calls and calling Finish) with one simplification: no
`Thought:` line (at 135M it is noise the reward cannot check).

A tool corpus is a normal corpus folder (its documents are the API documentation) plus:

    tools.json         {"tools": [{"name", "description", "parameters": {arg: {"type", "required"?, "enum"?}},
                                   "responses": [{"arguments": {...}, "observation": {...}}],
                                   "default": {...}?}]}
    tool_tasks.jsonl   {"id"?, "request", "tool", "arguments": {...}, "answer"}  - one user request each,
                       the call that serves it, and the answer (it must appear in the call's observation)

Episode syntax, one per turn of the model (documented in docs/corpus.md):

    Action: <tool name>
    Action Input: <one JSON object>

the simulator replies `Observation: <JSON>`, and the episode ends with `Action: Finish` and
`Action Input: {"answer": "..."}`. The simulator is a lookup table: arguments are type-checked against the
spec and matched exactly (strings compared after trimming and case-folding); nothing the model writes is ever
executed. Unknown tools, bad arguments and unmatched calls are observations with an `error`, not exceptions.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from past.scoring import contains, normalize

# The episode protocol, sent after every request: it names the syntax and Finish, never an API (closed-book:
# which API serves a request must come from the documentation the model was trained on).
PROTOCOL = ("Use the API that serves this request. Reply with one call:\nAction: <API name>\n"
            "Action Input: <JSON object of arguments>\nWhen an Observation answers the request, reply:\n"
            'Action: Finish\nAction Input: {"answer": "<the answer>"}')
TOOLS_FILE = "tools.json"
TOOL_TASKS_FILE = "tool_tasks.jsonl"
FINISH = "Finish"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_PY_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool}


class Parameter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["string", "integer", "number", "boolean"]
    required: bool = True
    enum: list[Any] | None = None
    description: str = ""


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arguments: dict[str, Any]
    observation: dict[str, Any]


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = Field(min_length=1)
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    responses: list[Response] = Field(default_factory=list)
    default: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v) or v == FINISH:
            raise ValueError(f"tool name {v!r} must match {_NAME.pattern} and not be {FINISH!r}")
        return v

    @model_validator(mode="after")
    def _responses_fit(self) -> "Tool":
        for i, r in enumerate(self.responses):
            if problems := check_arguments(self, r.arguments):
                raise ValueError(f"responses[{i}].arguments: {'; '.join(problems)}")
        return self


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tools: list[Tool] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "ToolSpec":
        names = [t.name for t in self.tools]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"duplicate tool names {dup}")
        return self

    def tool(self, name: str) -> Tool | None:
        return next((t for t in self.tools if t.name == name), None)


class ToolTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    request: str = Field(min_length=1)
    tool: str
    arguments: dict[str, Any]
    answer: str = Field(min_length=1)


def check_arguments(tool: Tool, args: dict[str, Any]) -> list[str]:
    """Why `args` is not a valid call of `tool` (empty = valid): unknown, missing, mistyped or off-enum arguments."""
    out = [f"unknown argument {k!r}" for k in args if k not in tool.parameters]
    for name, p in tool.parameters.items():
        if name not in args:
            if p.required:
                out.append(f"missing argument {name!r}")
            continue
        v = args[name]
        if isinstance(v, bool) and p.type != "boolean" or not isinstance(v, _PY_TYPES[p.type]):
            out.append(f"argument {name!r} must be {p.type}, got {type(v).__name__}")
        elif p.enum is not None and v not in p.enum:
            out.append(f"argument {name!r} must be one of {p.enum}")
    return out


def _errors(e: ValidationError, prefix: str) -> list[tuple[str, str]]:
    return [(f"{prefix}{'.'.join(map(str, err['loc']))}" if err["loc"] else prefix.rstrip(":"), err["msg"])
            for err in e.errors()]


def parse_tool_spec(text: str, where: str = TOOLS_FILE) -> tuple[ToolSpec | None, list[tuple[str, str]]]:
    """tools.json text -> (spec, []) or (None, [(where, why), ...]) with every problem found."""
    try:
        return ToolSpec.model_validate_json(text), []
    except ValidationError as e:
        return None, _errors(e, f"{where}:")


def parse_tool_tasks(rows: list[tuple[str, dict]], spec: ToolSpec | None) -> tuple[list[ToolTask], list[tuple[str, str]]]:
    """tool_tasks.jsonl records (where, object) -> tasks; each must name a spec tool, call it validly, and
    have its answer inside that call's simulated observation (else the task could never pass)."""
    tasks, problems, seen = [], [], {}
    sim = Simulator(spec) if spec is not None else None
    for where, obj in rows:
        try:
            t = ToolTask.model_validate(obj)
        except ValidationError as e:
            problems += _errors(e, f"{where}:")
            continue
        t.id = t.id or task_id(t)
        if t.id in seen:
            problems.append((where, f"tool task id {t.id!r} also at {seen[t.id]}"))
            continue
        seen[t.id] = where
        if sim is None:
            problems.append((where, f"tool tasks need a {TOOLS_FILE} beside them"))
            continue
        obs = sim.call(t.tool, t.arguments)
        if "error" in obs:
            problems.append((where, f"the task's own call fails: {obs['error']}"))
        elif not contains(json.dumps(obs, ensure_ascii=False), t.answer):
            problems.append((where, f"answer {t.answer!r} is not in the observation of its call {obs}"))
        else:
            tasks.append(t)
    return tasks, problems


def task_id(t: ToolTask) -> str:
    """Stable id of a task without one: the same request and call always map to the same id."""
    key = json.dumps([t.request.strip(), t.tool, t.arguments, t.answer.strip()], sort_keys=True, ensure_ascii=False)
    return "tool-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def spec_hash(spec: ToolSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode("utf-8")).hexdigest()


# --- the simulator ------------------------------------------------------------------------------------------
def _canon(v: Any) -> Any:
    return " ".join(v.split()).casefold() if isinstance(v, str) else v


class Simulator:
    """A deterministic API server from a spec's response tables. `call` never raises on model input."""

    def __init__(self, spec: ToolSpec) -> None:
        self.spec = spec
        self._table = {t.name: [({k: _canon(v) for k, v in r.arguments.items()}, r.observation) for r in t.responses]
                       for t in spec.tools}

    def call(self, name: str, args: Any) -> dict[str, Any]:
        tool = self.spec.tool(name)
        if tool is None:
            return {"error": f"unknown tool {name!r}"}
        if not isinstance(args, dict):
            return {"error": "Action Input must be one JSON object"}
        if problems := check_arguments(tool, args):
            return {"error": "; ".join(problems)}
        key = {k: _canon(v) for k, v in args.items()}
        for want, obs in self._table[name]:
            if want == key:
                return dict(obs)
        return dict(tool.default) if tool.default is not None else {"error": "no result for these arguments"}


# --- episodes -----------------------------------------------------------------------------------------------
_ACTION = re.compile(r"Action:\s*(?P<name>[^\n]+?)\s*\n\s*Action Input:\s*(?P<input>\{.*)", re.DOTALL)


@dataclass
class Step:
    name: str | None  # None: the turn did not parse
    arguments: dict[str, Any] | None
    observation: dict[str, Any] | None = None
    error: str | None = None  # format error, unknown tool, bad arguments, unmatched call


def parse_action(text: str) -> Step:
    """One model turn -> the action it takes (first `Action:` / `Action Input:` pair; trailing text ignored)."""
    m = _ACTION.search(text)
    if not m:
        return Step(None, None, error="no `Action:` / `Action Input:` lines")
    try:
        args, _ = json.JSONDecoder().raw_decode(m["input"])
    except ValueError as e:
        return Step(m["name"], None, error=f"Action Input is not JSON ({e.msg})")
    if not isinstance(args, dict):
        return Step(m["name"], None, error="Action Input must be one JSON object")
    return Step(m["name"], args)


@dataclass
class Episode:
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None  # the Finish answer; None = never finished

    @property
    def finished(self) -> bool:
        return self.answer is not None

    @property
    def calls(self) -> list[Step]:
        return [s for s in self.steps if s.name not in (None, FINISH)]

    def to_json(self) -> dict:
        return {"answer": self.answer, "steps": [s.__dict__ for s in self.steps]}


def observation_message(obs: dict[str, Any]) -> str:
    return "Observation: " + json.dumps(obs, ensure_ascii=False)


def advance(ep: Episode, messages: list[dict], text: str, sim: Simulator) -> bool:
    """Apply one model turn `text` to the episode: parse it, call the simulator, append the turn and its
    observation to `messages`. Returns whether the episode goes on (False at Finish or an unparseable turn)."""
    step = parse_action(text)
    ep.steps.append(step)
    if step.name is None or step.arguments is None:
        return False
    if step.name == FINISH:
        ans = step.arguments.get("answer")
        ep.answer = str(ans) if ans is not None else ""
        return False
    step.observation = sim.call(step.name, step.arguments)
    step.error = step.observation.get("error")
    messages += [{"role": "assistant", "content": text}, {"role": "user", "content": observation_message(step.observation)}]
    return True


def episode_prompt(request: str) -> str:
    """The first user turn of an episode: the request and the protocol (no API list), the same in stage-2
    SFT, GRPO rollouts and the gate."""
    return f"{request.strip()}\n\n{PROTOCOL}"


def run_episode(request: str, reply: Callable[[list[dict]], str], sim: Simulator, max_turns: int = 3) -> Episode:
    """Closed-book episode: the request and the protocol (no API list); each model turn is one action;
    observations come back as user turns. Ends at Finish, at a turn that does not parse, or after `max_turns`."""
    messages, ep = [{"role": "user", "content": episode_prompt(request)}], Episode()
    for _ in range(max_turns):
        if not advance(ep, messages, reply(messages), sim):
            break
    return ep


# --- rewards and metrics (the authors' shaping: format 0.1, error-free calls 0.2, Finish 0.3; + pass) --------
@dataclass(frozen=True)
class EpisodeWeights:
    format: float = 0.1
    call_ok: float = 0.2
    finish: float = 0.3
    passed: float = 1.0
    penalty: float = 0.5  # any unknown tool or unparseable turn


def passed(ep: Episode, task: ToolTask) -> bool:
    """Pass: the episode finished, after a successful call of the task's tool, with the observed answer."""
    good_call = any(s.name == task.tool and s.error is None for s in ep.calls)
    return ep.finished and good_call and bool(contains(ep.answer or "", task.answer) or
                                              normalize(ep.answer or "") == normalize(task.answer))


def episode_metrics(ep: Episode, task: ToolTask) -> dict[str, float]:
    n = len(ep.steps)
    calls = ep.calls
    return {
        "valid_format": sum(s.name is not None and s.arguments is not None for s in ep.steps) / n if n else 0.0,
        "valid_call": float(bool(calls) and all(s.error is None for s in calls)),
        "first_call_correct": float(bool(calls) and calls[0].name == task.tool and calls[0].error is None),
        "unknown_tool": float(any((s.error or "").startswith("unknown tool") for s in calls)),
        "finish": float(ep.finished),
        "pass": float(passed(ep, task)),
    }


def episode_reward(ep: Episode, task: ToolTask, w: EpisodeWeights = EpisodeWeights()) -> float:
    m = episode_metrics(ep, task)
    bad = m["unknown_tool"] > 0 or m["valid_format"] < 1.0
    return (w.format * m["valid_format"] + w.call_ok * m["valid_call"] + w.finish * m["finish"]
            + w.passed * m["pass"] - (w.penalty if bad else 0.0))


def first_call_text(task: ToolTask) -> str:
    """The reply stage-2 SFT teaches for a request: its first call only (the authors' stage 2), never the rest
    of the episode - finishing is what GRPO (or the grafted skill vector) must add."""
    return f"Action: {task.tool}\nAction Input: {json.dumps(task.arguments, ensure_ascii=False)}"


def same_call(reply: str, reference: str) -> bool:
    """Does `reply` make the call `reference` makes (same API, same arguments up to case and spacing of string
    values)? The training check's score for tool pairs: token F1 on the call text counts `tamri_price` for
    `quanmo_price` as right, since the two texts share all but one token."""
    got, want = parse_action(reply), parse_action(reference)
    return (got.arguments is not None and got.name == want.name and want.arguments is not None
            and {k: _canon(v) for k, v in got.arguments.items()} == {k: _canon(v) for k, v in want.arguments.items()})


def finish_text(answer: str) -> str:
    return f"Action: {FINISH}\nAction Input: {json.dumps({'answer': answer}, ensure_ascii=False)}"


def finish_demo(task: ToolTask, sim: Simulator) -> dict:
    """A whole-episode stage-2 row (TRL conversational prompt-completion; the loss falls on the Finish turn):
    request -> the task's call -> its observation -> Finish with the answer. The authors' stage 2 teaches first
    calls only; bench/tools.py adds these to the *source* SFT alone (`--source-finish-demos`), so that source
    GRPO has a finishing behaviour to reinforce while a target Finish can still come only through v."""
    obs = sim.call(task.tool, task.arguments)
    if "error" in obs:
        raise ValueError(f"task {task.id}: its own call fails in the simulator: {obs['error']}")
    return {"prompt": [{"role": "user", "content": episode_prompt(task.request)},
                       {"role": "assistant", "content": first_call_text(task)},
                       {"role": "user", "content": observation_message(obs)}],
            "completion": [{"role": "assistant", "content": finish_text(task.answer)}]}


def gate_rows(tasks: list[ToolTask], split_rows: list[dict]) -> list[dict]:
    """Held-out split rows as gate items: a tool task's row (trained as request → first call) becomes its
    episode: the request, the observed answer it must finish with, and the tool it needs."""
    by_id = {t.id: t for t in tasks}
    return [row | {"question": t.request, "answer": t.answer, "tool": t.tool} if (t := by_id.get(row["id"])) else row
            for row in split_rows]


def tool_gate_metrics(episodes: list[Episode], tasks: list[ToolTask], confidence: float = 0.95) -> dict[str, float]:
    """Rates over episodes with Wilson intervals: what a tool corpus's gate reports (pass, valid call, finish)."""
    from past.stats import wilson

    if len(episodes) != len(tasks) or not tasks:
        raise ValueError(f"{len(episodes)} episodes for {len(tasks)} tasks")
    rows = [episode_metrics(e, t) for e, t in zip(episodes, tasks)]
    out: dict[str, float] = {"n": float(len(rows))}
    for name in ("pass", "valid_call", "first_call_correct", "finish", "unknown_tool"):
        k = int(sum(r[name] for r in rows))
        iv = wilson(k, len(rows), confidence)
        out |= {f"{name}_rate": k / len(rows), f"{name}_lower": iv.lower, f"{name}_upper": iv.upper}
    return out
