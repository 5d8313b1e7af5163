"""The eval gate: serve a candidate, ask it held-out questions, compare with the champion, decide.

The eval set has three kinds of items, all scored the same way:
  new        held-out QA of the corpus the candidate was adapted on (the QA split JSONL),
  retention  a sample of held-out QA from earlier promoted corpora (same JSONL schema),
  general    a small fixed set of general prompts shipped in `past/data/general_prompts.jsonl`.

Requests go through `openai.AsyncOpenAI` with bounded concurrency, our own retries with exponential
backoff (the client's are turned off so the policy is visible here), a per-request timeout and greedy
decoding. Each answer gets exact match / token-F1 / contains, plus a yes/no judge verdict when a judge
endpoint is configured (past.judge: the same judge, prompt and verdict cache as the GRPO reward). An item is *correct* when the judge says yes or, without a judge, when token-F1 ≥ 0.6
or the reference is contained in the answer (`past.scoring.is_correct`).

A *tool item* (`tool` set: a held-out task of a tool corpus, past.tools) is an episode instead of one
question: the request alone (closed-book), then up to `gate_tool_max_turns` model turns, each an
`Action:` / `Action Input:` call answered by the corpus's sandboxed simulator (the first turn is the request
plus `past.tools.PROTOCOL`, which names the syntax and never an API), until `Action: Finish`. It is
correct when it *passes* (a successful call of the task's tool, then Finish with the observed answer); its
valid-call, first-call and finish flags are reported beside it, and the paired comparison with the
champion is on pass, item by item, like any question.

The gate fails CLOSED: a server that does not start, dies mid-eval, times out or answers garbage beyond
`gate_max_error_rate` gives a failed decision with the reason - never a pass. Champion scores are cached per
(champion version, eval-set hash), so an unchanged eval set does not re-serve the champion.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

from past.errors import PastError, retry_policy
from past.judge import JUDGE_PROMPT, Judge, judge_from_settings  # noqa: F401 - the gate's judge
from past.scoring import SCORING_RULE, is_correct, score_all
from past.stats import paired_difference, wilson

KINDS = ("new", "retention", "general")
PROMPT_VERSION = 1  # bump when the request format changes: it is part of the eval-set hash
class EvalSetError(PastError, ValueError):
    """An eval-set file that cannot be used (names the file, line and field)."""


# --- eval items -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalItem:
    """One held-out question. JSONL schema: id, question, answer, doc_id, corpus_id."""

    id: str
    question: str
    answer: str
    doc_id: str = ""
    corpus_id: str = ""
    kind: str = "new"  # not in the file: set by the gate (new / retention / general)
    tool: str = ""  # a tool corpus's task: the tool it needs (the item is then an episode, past.tools)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.corpus_id}:{self.id}"


def load_eval_items(path: str | Path, kind: str = "new") -> list[EvalItem]:
    """Read a QA-split JSONL file; any bad line raises EvalSetError naming file, line and field."""
    path = Path(path)
    if kind not in KINDS:
        raise EvalSetError(f"unknown item kind {kind!r}; expected one of {KINDS}")
    if not path.is_file():
        raise EvalSetError(f"eval set {path} does not exist")
    items, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalSetError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise EvalSetError(f"{path}:{n}: expected a JSON object")
        for name in ("id", "question", "answer"):
            if not isinstance(obj.get(name), str) or not obj[name].strip():
                raise EvalSetError(f"{path}:{n}: field {name!r} missing or not a non-empty string")
        for name in ("doc_id", "corpus_id", "tool"):  # null = not given (the split writes doc_id null for such QA)
            if obj.get(name) is not None and not isinstance(obj[name], str):
                raise EvalSetError(f"{path}:{n}: field {name!r} must be a string or null")
        item = EvalItem(obj["id"], obj["question"], obj["answer"], obj.get("doc_id") or "",
                        obj.get("corpus_id") or "", kind, obj.get("tool") or "")
        if item.key in seen:
            raise EvalSetError(f"{path}:{n}: duplicate id {item.id!r} in corpus {item.corpus_id!r}")
        seen.add(item.key)
        items.append(item)
    if not items:
        raise EvalSetError(f"eval set {path} has no items")
    return items


def select_new_items(rows: list[dict], human_ids: set[str], min_items: int) -> tuple[list[dict], str]:
    """The gate's new-corpus items from the held-out split: the corpus's own (human) QA when it holds at least
    `min_items`, else human and teacher QA together. Returns (rows, which)."""
    human = [r for r in rows if r["id"] in human_ids]
    if human and len(human) >= min_items:
        return human, "human"
    return rows, "human+teacher" if human else ("teacher" if rows else "none")


def general_prompts() -> list[EvalItem]:
    """The fixed general-ability prompts shipped with the package."""
    with resources.as_file(resources.files("past") / "data" / "general_prompts.jsonl") as p:
        return load_eval_items(p, kind="general")


def build_eval_set(new: Iterable[EvalItem], retention: Iterable[EvalItem] = (),
                   include_general: bool = True) -> list[EvalItem]:
    items = [dataclasses.replace(i, kind="new") for i in new]
    items += [dataclasses.replace(i, kind="retention") for i in retention]
    if include_general:
        items += general_prompts()
    keys = [i.key for i in items]
    if len(set(keys)) != len(keys):
        raise EvalSetError("eval set has duplicate (kind, corpus_id, id) keys")
    return items


def eval_set_hash(items: list[EvalItem], max_tokens: int, judge_model: str = "", tools: dict | None = None,
                  max_turns: int = 0) -> str:
    """Everything that determines a model's scores on this set, except the model itself."""
    from past.tools import PROTOCOL, spec_hash

    payload = {
        "prompt_version": PROMPT_VERSION, "max_tokens": max_tokens, "judge": judge_model, "scoring": SCORING_RULE,
        "judge_prompt": hashlib.sha256(JUDGE_PROMPT.encode()).hexdigest()[:16] if judge_model else "",
        "items": [[i.kind, i.corpus_id, i.id, i.question, i.answer] + ([i.tool] if i.tool else []) for i in items],
    }
    if any(i.tool for i in items):  # episodes: the simulators and the turn limit decide the scores too
        payload |= {"tools": {cid: spec_hash(spec) for cid, spec in sorted((tools or {}).items())},
                    "max_turns": max_turns, "protocol": hashlib.sha256(PROTOCOL.encode()).hexdigest()[:16]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --- per-item results -------------------------------------------------------------------------------------
@dataclass
class ItemResult:
    key: str
    kind: str
    question: str
    reference: str
    answer: str | None  # None when the request failed
    error: str | None = None
    exact_match: float = 0.0
    token_f1: float = 0.0
    contains: float = 0.0
    judge: bool | None = None
    correct: bool = False
    latency_s: float = 0.0
    attempts: int = 0
    episode: dict | None = None  # tool items: past.tools.episode_metrics + the steps taken


# --- asking an endpoint ---------------------------------------------------------------------------------
async def _chat(client, model: str, messages: list[dict], settings, retries: int, backoff_s: float,
                res: ItemResult) -> str | None:
    """One greedy chat turn, retried on transient errors; None (and `res.error`) when it failed."""
    try:
        async for attempt in retry_policy(retries, backoff_s, asynchronous=True):
            with attempt:
                res.attempts += 1
                r = await client.chat.completions.create(model=model, messages=messages,
                                                         max_tokens=settings.gate_max_tokens, temperature=0.0)
    except Exception as e:  # noqa: BLE001 - every failure becomes a recorded, counted item error
        res.error = f"{type(e).__name__}: {str(e)[:200]}"
        return None
    try:
        text = r.choices[0].message.content
    except (AttributeError, IndexError, TypeError, KeyError):
        text = None
    # greedy decoding: a well-formed but bad answer would come back the same, so it is not retried
    res.error = None if isinstance(text, str) and text.strip() else (
        "empty answer" if isinstance(text, str) else f"malformed response: {str(r)[:120]!r}")
    return None if res.error else text.strip()


async def _episode(client, model: str, item: EvalItem, sim, settings, retries: int, backoff_s: float,
                   res: ItemResult) -> None:
    """A tool item: the closed-book episode against the corpus's simulator (past.tools.advance)."""
    from past.tools import Episode, ToolTask, advance, episode_metrics, episode_prompt

    messages, ep = [{"role": "user", "content": episode_prompt(item.question)}], Episode()
    last = None
    for _ in range(settings.gate_tool_max_turns):
        text = await _chat(client, model, messages, settings, retries, backoff_s, res)
        if text is None:
            return  # a failed request is an item error, not a failed episode
        last = text
        if not advance(ep, messages, text, sim):
            break
    task = ToolTask(id=item.id, request=item.question, tool=item.tool, arguments={}, answer=item.answer)
    res.answer = ep.answer if ep.answer is not None else last
    res.episode = episode_metrics(ep, task) | ep.to_json()
    res.correct = bool(res.episode["pass"])


async def _ask_one(client, model: str, item: EvalItem, settings, retries: int, backoff_s: float,
                   judge: Judge | None, sim=None) -> ItemResult:
    res = ItemResult(item.key, item.kind, item.question, item.answer, answer=None)
    t0 = time.perf_counter()
    if item.tool:
        if sim is None:
            res.error = f"no tool spec for corpus {item.corpus_id!r}: cannot run its episode"
        else:
            await _episode(client, model, item, sim, settings, retries, backoff_s, res)
        res.latency_s = time.perf_counter() - t0
        if res.answer is not None:  # the Finish answer's overlap with the observed value, for the table
            for name, v in score_all(res.answer, item.answer).items():
                setattr(res, name, v)
        return res
    res.answer = await _chat(client, model, [{"role": "user", "content": item.question}], settings, retries,
                             backoff_s, res)
    res.latency_s = time.perf_counter() - t0
    if res.answer is not None:
        for name, v in score_all(res.answer, item.answer).items():
            setattr(res, name, v)
        if judge is not None:
            res.judge = await judge.verdict(item.question, res.answer, item.answer)
            if res.judge is None:
                res.error = "judge gave no verdict"
            res.correct = bool(res.judge)
        else:
            res.correct = is_correct(res.answer, item.answer)
    return res


def allowed_errors(n: int, max_error_rate: float) -> int:
    return math.floor(n * max_error_rate + 1e-9)


async def answer_all_async(endpoint, items: list[EvalItem], settings, judge: Judge | None = None,
                           retries: int = 2, backoff_s: float = 0.5, progress: bool = True,
                           tools: dict | None = None) -> list[ItemResult]:
    """Ask every item with at most `gate_concurrency` requests (or episodes) in flight. `tools` maps a
    corpus id to its ToolSpec: the simulator of that corpus's tool items.

    Stops early (remaining items recorded as aborted) once more requests failed than the gate could accept
    anyway: a dead or broken server then costs seconds, not the whole eval."""
    from openai import AsyncOpenAI
    from tqdm.auto import tqdm

    from past.tools import Simulator

    sims = {cid: Simulator(spec) for cid, spec in (tools or {}).items()}
    client = AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key,
                         timeout=settings.gate_request_timeout_s, max_retries=0)
    sem = asyncio.Semaphore(settings.gate_concurrency)
    budget = allowed_errors(len(items), settings.gate_max_error_rate)
    state = {"errors": 0}
    bar = tqdm(total=len(items), desc=f"gate {endpoint.model}", unit="q", disable=not progress, leave=False)

    async def run(item: EvalItem) -> ItemResult:
        async with sem:
            if state["errors"] > budget:
                return ItemResult(item.key, item.kind, item.question, item.answer, None,
                                  error="aborted: too many failed requests before this one")
            res = await _ask_one(client, endpoint.model, item, settings, retries, backoff_s, judge,
                                 sims.get(item.corpus_id))
            state["errors"] += res.error is not None
            bar.update()
            return res

    try:
        return list(await asyncio.gather(*(run(i) for i in items)))
    finally:
        bar.close()
        await client.close()


def answer_all(endpoint, items: list[EvalItem], settings, judge: Judge | None = None, **kw) -> list[ItemResult]:
    """answer_all_async, run to completion (keywords as there: retries, backoff_s, progress, tools)."""
    return asyncio.run(answer_all_async(endpoint, items, settings, judge, **kw))


# --- the decision ---------------------------------------------------------------------------------------
@dataclass
class GateDecision:
    passed: bool
    reasons: list[str]  # why it failed (empty on a pass)
    metrics: dict[str, float] = field(default_factory=dict)
    champion_version: str | None = None  # the champion it was compared with: promotion is compare-and-set on it
    eval_hash: str = ""
    compared_with: str = ""  # who the `champion_*` scores belong to: the champion, or the base model before one

    def __post_init__(self) -> None:
        self.compared_with = self.compared_with or self.champion_version or ""

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "passed"

    @classmethod
    def failed(cls, reason: str, champion_version: str | None = None, eval_hash: str = "") -> "GateDecision":
        return cls(False, [reason], {}, champion_version, eval_hash)


def summarize(results: list[ItemResult], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {f"{prefix}_errors": float(sum(r.error is not None for r in results)),
                             f"{prefix}_items": float(len(results))}
    for kind in KINDS:
        rs = [r for r in results if r.kind == kind]
        if rs:
            out[f"{prefix}_{kind}_accuracy"] = sum(r.correct for r in rs) / len(rs)
            out[f"{prefix}_{kind}_f1"] = sum(r.token_f1 for r in rs) / len(rs)
            out[f"{prefix}_{kind}_em"] = sum(r.exact_match for r in rs) / len(rs)
        eps = [r.episode for r in rs if r.episode is not None]
        if eps:  # tool items: pass is `correct`; how far the episodes got, beside it
            for name in ("pass", "valid_call", "first_call_correct", "finish"):
                out[f"{prefix}_{kind}_tool_{name}_rate"] = sum(e[name] for e in eps) / len(eps)
            out[f"{prefix}_{kind}_tool_items"] = float(len(eps))
    return out


def _error_check(results: list[ItemResult], who: str, max_error_rate: float) -> str | None:
    bad = [r for r in results if r.error is not None]
    if len(bad) > allowed_errors(len(results), max_error_rate):
        first = next((r.error for r in bad if not r.error.startswith("aborted")), bad[0].error)
        return (f"{who}: {len(bad)}/{len(results)} requests failed (allowed {max_error_rate:.0%}); "
                f"first error: {first}")
    return None


def decide(candidate: list[ItemResult], champion: list[ItemResult] | None, settings,
           champion_version: str | None = None, eval_hash: str = "", training_check: dict | None = None,
           compared_with: str = "") -> GateDecision:
    """Pass only if there are enough new-corpus items, the Wilson lower bound of new-corpus accuracy clears
    the floor, the paired difference with the champion on the same items has its lower bound at or above the
    margin, retention/general accuracy drop no more than the tolerance, and the training check (recall of
    the training QA after SFT, when given) reached its minimum. No champion yet: no comparison."""
    eps = 1e-9
    reasons: list[str] = []
    conf = settings.gate_confidence
    m = summarize(candidate, "candidate")
    if training_check and training_check.get("n"):
        m["train_recall"] = float(training_check["accuracy"])
        m["train_recall_items"] = float(training_check["n"])
        if training_check["accuracy"] + eps < settings.sft_min_train_recall:
            reasons.append(f"SFT did not take: the candidate answered {training_check['correct']} of "
                           f"{training_check['n']} of its own training questions closed-book "
                           f"({training_check['accuracy']:.3f} < sft_min_train_recall {settings.sft_min_train_recall:.3f})")
    for kind in KINDS:  # an interval beside every score, and a paired difference where a champion scored the items
        rs = sorted((r for r in candidate if r.kind == kind), key=lambda r: r.key)
        if rs:
            ci = wilson(sum(r.correct for r in rs), len(rs), conf)
            m |= {f"candidate_{kind}_accuracy_lower": ci.lower, f"candidate_{kind}_accuracy_upper": ci.upper}
        champ = {r.key: r for r in champion or [] if r.kind == kind}
        if rs and champ and all(r.key in champ for r in rs):
            d = paired_difference([r.correct for r in rs], [champ[r.key].correct for r in rs], conf)
            m |= {f"{kind}_diff": d.estimate, f"{kind}_diff_lower": d.lower, f"{kind}_diff_upper": d.upper}
    new_rs = [r for r in candidate if r.kind == "new"]
    if new_rs:
        m["new_items"] = float(len(new_rs))
        if len(new_rs) < settings.gate_min_new_items:
            reasons.append(f"only {len(new_rs)} new-corpus items, fewer than gate_min_new_items "
                           f"{settings.gate_min_new_items}: too few to decide (add QA or let the teacher write more)")
    if champion is not None:
        m |= summarize(champion, "champion")
        if sorted(r.key for r in champion) != sorted(r.key for r in candidate):
            reasons.append("champion results are not on the same items as the candidate's")
    for who, rs in (("candidate", candidate), ("champion", champion or [])):
        if rs and (msg := _error_check(rs, who, settings.gate_max_error_rate)):
            reasons.append(msg)
    new = m.get("candidate_new_accuracy")
    if new is None:
        reasons.append("eval set has no new-corpus items")
    else:
        lower = m["candidate_new_accuracy_lower"]
        if lower + eps < settings.gate_min_accuracy:
            reasons.append(f"new-corpus accuracy {new:.3f} (lower {conf:.0%} bound {lower:.3f}, n={len(new_rs)}) "
                           f"does not clear the floor {settings.gate_min_accuracy:.3f}")
        if "new_diff" in m and m["new_diff_lower"] + eps < settings.gate_margin:
            reasons.append(f"new-corpus accuracy {new:.3f} vs the champion's {m['champion_new_accuracy']:.3f}: "
                           f"paired difference {m['new_diff']:+.3f}, lower {conf:.0%} bound {m['new_diff_lower']:+.3f} "
                           f"below the margin {settings.gate_margin:+.3f}")
    if champion is not None:  # retention and general: the rule is the point drop against the tolerance
        for kind in ("retention", "general"):
            c, h = m.get(f"candidate_{kind}_accuracy"), m.get(f"champion_{kind}_accuracy")
            if c is not None and h is not None:
                m[f"{kind}_drop"] = h - c
                if h - c > settings.gate_retention_tolerance + eps:
                    reasons.append(f"{kind} accuracy dropped {h - c:.3f} (champion {h:.3f} → candidate {c:.3f}), "
                                   f"more than the tolerance {settings.gate_retention_tolerance:.3f}")
    return GateDecision(not reasons, reasons, m, champion_version, eval_hash, compared_with)


# --- the whole gate ---------------------------------------------------------------------------------------
@dataclass
class Champion:
    """What the candidate is compared with: a registry version (name/version) and how to serve it.

    Before a model has any champion, the gate compares the first candidate with the base model it was
    trained from (`is_base`): it must beat it on the new corpus and keep its general ability, like any
    later candidate against a champion. Promotion is then compare-and-set on "no champion"."""

    version: str
    model_dir: Path | None = None
    url: str = ""  # an endpoint already serving it, instead of starting vLLM
    served_name: str = ""  # the model name at `url`, when it is not `version`
    is_base: bool = False  # the base model standing in for a champion that does not exist yet


@dataclass
class GateReport:
    decision: GateDecision
    candidate: list[ItemResult]
    champion: list[ItemResult] | None
    items: list[EvalItem]
    timings: dict[str, float] = field(default_factory=dict)

    def table_rows(self) -> list[dict]:
        """One row per item, candidate and champion side by side (the MLflow gate table)."""
        champ = {r.key: r for r in self.champion or []}
        rows = []
        for it, c in zip(self.items, self.candidate):
            row = {"key": c.key, "kind": c.kind, "corpus_id": it.corpus_id, "doc_id": it.doc_id,
                   "question": c.question, "reference": c.reference}
            for who, r in (("candidate", c), ("champion", champ.get(c.key))):
                if r is None:
                    continue
                row |= {f"{who}_answer": r.answer, f"{who}_error": r.error, f"{who}_em": r.exact_match,
                        f"{who}_f1": r.token_f1, f"{who}_contains": r.contains, f"{who}_judge": r.judge,
                        f"{who}_correct": r.correct}
                if r.episode is not None:
                    row |= {f"{who}_{k}": r.episode[k] for k in ("valid_call", "first_call_correct", "finish")}
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        return {"decision": dataclasses.asdict(self.decision) | {"reason": self.decision.reason},
                "timings": self.timings, "items": self.table_rows()}

    def write(self, out_dir: str | Path) -> Path:
        """gate-report.json (decision, timings, every item, and the raw results to `read` it back), atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "gate-report.json"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        raw = {"eval_items": [dataclasses.asdict(i) for i in self.items],
               "candidate": [dataclasses.asdict(r) for r in self.candidate],
               "champion": None if self.champion is None else [dataclasses.asdict(r) for r in self.champion]}
        tmp.write_text(json.dumps(self.to_dict() | {"raw": raw}, indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> "GateReport":
        """The report `write` produced (e.g. handed from the gate task to the promotion task)."""
        d = json.loads(Path(path).read_text())
        dec = {k: v for k, v in d["decision"].items() if k != "reason"}
        raw = d["raw"]
        return cls(GateDecision(**dec), [ItemResult(**r) for r in raw["candidate"]],
                   None if raw["champion"] is None else [ItemResult(**r) for r in raw["champion"]],
                   [EvalItem(**i) for i in raw["eval_items"]], d.get("timings", {}))


def _cache_path(settings, champion_version: str, eval_hash: str) -> Path:
    safe = champion_version.replace("/", "__").replace(":", "_")
    return settings.home / "gate-cache" / f"{safe}-{eval_hash[:16]}.json"


def load_champion_cache(settings, champion_version: str, eval_hash: str) -> list[ItemResult] | None:
    p = _cache_path(settings, champion_version, eval_hash)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
        if data["eval_hash"] != eval_hash or data["version"] != champion_version:
            return None
        return [ItemResult(**r) for r in data["results"]]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None  # a damaged cache is just a miss


def save_champion_cache(settings, champion_version: str, eval_hash: str, results: list[ItemResult]) -> None:
    p = _cache_path(settings, champion_version, eval_hash)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"version": champion_version, "eval_hash": eval_hash,
                               "results": [dataclasses.asdict(r) for r in results]}))
    os.replace(tmp, p)


def _serve_and_answer(model_dir, served_name: str, url: str, items, settings, judge, who: str,
                      timings: dict, tools: dict | None = None) -> tuple[list[ItemResult] | None, str | None]:
    """Serve (or connect), answer every item, stop. Returns (results or None, fail-closed reason or None)."""
    from past.serving import ServingError, VLLMServer, serve_or_connect

    t0 = time.perf_counter()
    server = serve_or_connect(model_dir, served_name, settings.model_copy(update={"serve_url": url}))
    try:
        with server as ep:  # the managed server is stopped on every way out of this block
            timings[f"{who}_start_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            results = answer_all(ep, items, settings, judge, tools=tools)
            timings[f"{who}_eval_s"] = time.perf_counter() - t1
            timings[f"{who}_questions_per_s"] = len(items) / max(timings[f"{who}_eval_s"], 1e-9)
            if isinstance(server, VLLMServer) and not server.alive():
                return results, f"{who} server died during evaluation; last log lines:\n{server.log_tail(10)}"
    except ServingError as e:
        return None, f"{who} server failed: {e}"
    return results, None


def run_gate(candidate_dir: str | Path | None, items: list[EvalItem], settings, served_name: str,
             champion: Champion | None = None, candidate_url: str = "", log: Callable[[str], None] = print,
             training_check: dict | None = None, tools: dict | None = None) -> GateReport:
    """Evaluate the candidate (and the champion, unless cached) on `items` and decide. `tools`: corpus id →
    ToolSpec for the eval set's tool items (a tool item without its corpus's spec is an error, fail closed).

    Never raises for a bad candidate or server: every such failure is a failed decision with its reason."""
    if not items:
        raise EvalSetError("empty eval set")
    judge = judge_from_settings(settings)
    h = eval_set_hash(items, settings.gate_max_tokens, settings.judge_model if judge else "", tools,
                      settings.gate_tool_max_turns)
    cv = champion.version if champion and not champion.is_base else None
    who = champion.version if champion else ""
    timings: dict[str, float] = {}

    log(f"gate: serving candidate {served_name} on {len(items)} items")
    cand, why = _serve_and_answer(candidate_dir, served_name, candidate_url or settings.serve_url, items,
                                  settings, judge, "candidate", timings, tools)
    if cand is None or why:
        return GateReport(GateDecision.failed(why or "no candidate results", cv, h), cand or [], None, items, timings)

    champ = None
    if champion is not None:
        champ = load_champion_cache(settings, champion.version, h)
        timings["champion_cached"] = float(champ is not None)
        if champ is None:
            log(f"gate: serving {'the base model' if champion.is_base else 'champion'} {champion.version} "
                "(no cached scores for this eval set)")
            # An external endpoint (serve_url) must serve the champion too, under its name: the gate never
            # starts a local vLLM behind the back of a deployment that said where its models are served.
            champ, why = _serve_and_answer(champion.model_dir, champion.served_name or champion.version,
                                           champion.url or settings.serve_url, items, settings, judge, "champion",
                                           timings, tools)
            if champ is None or why:
                return GateReport(GateDecision.failed(why or "no champion results", cv, h), cand, champ, items,
                                  timings)
            if _error_check(champ, "champion", settings.gate_max_error_rate) is None:
                save_champion_cache(settings, champion.version, h, champ)
    decision = decide(cand, champ, settings, cv, h, training_check=training_check, compared_with=who)
    log(f"gate: {'PASS' if decision.passed else 'FAIL'} - {decision.reason}")
    return GateReport(decision, cand, champ, items, timings)
