"""Iterative skill refinement over K disjoint source partitions (the rare, expensive path).

    v_0 = 0
    for k = 1..K:
        θ_sft_k = SFT(θ_base, D_k)                  two-stage: memorize D_k's documents, then its QA
        θ_rl_k  = GRPO(init = θ_sft_k + v_{k-1}, D_k's RL questions, else its training QA)
        v_k     = θ_rl_k − θ_sft_k
    ship v_K, with its lineage

Each round starts SFT from the base model (our reading of the authors' code); carrying v_{k-1} into the
GRPO start is what makes the skill content-invariant: it must keep working on a partition it was not learned on.

Tool corpora (past.tools): each partition gets the whole `tools.json` and the tool tasks of its share of the
APIs (tasks are dealt by tool, seeded, so no API is trained on in two partitions). SFT stage 2 trains their
first calls; GRPO then plays whole episodes (past.tool_rollout) rewarded by the authors' episode shaping,
instead of one-turn answers: the skill a tool vector carries is reading the observation and finishing.

RL questions (`rl_qa`, optional): questions about the source documents that SFT never trains on, e.g. other
phrasings of the QA facts. The authors run RL on questions SFT has not seen; GRPO on the very pairs stage 2
just fitted mostly re-recites them (identical samples, little reward variance), so the vector it learns is
"repeat these answers" rather than "use what the documents taught". Without `rl_qa`, GRPO uses the training QA.

Restartability: every artefact of a round lives under `<work>/round-k/` and is published atomically; a
re-run skips whatever is already there and verified (SFT skips finished stages, GRPO resumes from its last
checkpoint), and a round is done once `round.json` exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from past.corpus import Corpus, QAPair, load_corpus, read_qa_jsonl
from past.errors import PastError
from past.grpo import GRPORecipe, learning_gate, read_result, train_grpo
from past.models import MANIFEST, publish_dir, sha256_file, staging_dir, verify_model_dir
from past.sft import SFTRecipe, run_sft
from past.skill import analyze, extract, inject


class RefreshError(PastError):
    """A refresh that cannot run (too few documents for K partitions, output taken)."""


@dataclass
class RefreshResult:
    vector_dir: Path
    rounds: list[dict]
    wall_s: float


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\x00partition\x00{key}".encode()).hexdigest()


def rl_qa_file(partition: Path) -> Path:
    """A partition's RL questions live beside its folder (inside, the corpus loader would read them as documents)."""
    return partition.with_name(partition.name + ".rl_qa.jsonl")


def _jsonl(rows: list[QAPair]) -> str:
    return "".join(json.dumps({"id": q.id, "question": q.question, "answer": q.answer, "doc_id": q.doc_id},
                              ensure_ascii=False) + "\n" for q in rows)


def partition_corpus(corpus: Corpus, k: int, dest: Path, seed: int = 0, rl_qa: list[QAPair] | None = None) -> list[Path]:
    """Split a corpus into K disjoint corpora by document (seeded), each a folder with docs.jsonl + qa.jsonl
    (+ `rl_qa_file(part)` beside it when RL questions are given; rewritten on every call, it is an input).

    Documents are ordered by a seeded hash and dealt round-robin, so partitions differ in size by at most one
    document; a QA pair (or RL question) goes with its document (one without a doc_id is dealt by its own id).
    A tool corpus's APIs are dealt the same way; each API's tasks, and the documents that name it, go to its
    partition, and every partition carries the whole tools.json.
    """
    if k < 1:
        raise RefreshError(f"K must be ≥ 1, got {k}")
    if len(corpus.documents) < k:
        raise RefreshError(f"{corpus.root}: {len(corpus.documents)} documents cannot make {k} disjoint partitions")
    order = sorted(corpus.documents, key=lambda d: _rank(seed, d.id))
    owner = {d.id: i % k for i, d in enumerate(order)}
    tools = sorted({t.tool for t in corpus.tool_tasks}, key=lambda name: _rank(seed, "tool\x00" + name))
    tool_owner = {name: i % k for i, name in enumerate(tools)}
    for d in order:  # an API's documentation goes where its tasks go (the first API name the page mentions)
        if (named := next((t for t in tools if t in d.text), None)) is not None:
            owner[d.id] = tool_owner[named]
    unknown = sorted({q.doc_id for q in rl_qa or [] if q.doc_id is not None and q.doc_id not in owner})
    if unknown:
        raise RefreshError(f"RL questions name documents that {corpus.root} does not have: {unknown[:5]}")

    def part_of(q: QAPair) -> int:
        return owner[q.doc_id] if q.doc_id is not None else int(_rank(seed, q.id), 16) % k

    parts = [([d for d in order if owner[d.id] == i], [q for q in corpus.qa if part_of(q) == i],
              [q for q in rl_qa or [] if part_of(q) == i]) for i in range(k)]
    tasks = [[t for t in corpus.tool_tasks if tool_owner[t.tool] == i] for i in range(k)]
    if corpus.tool_tasks and len(tools) < k:
        raise RefreshError(f"{corpus.root}: tool tasks of {len(tools)} APIs cannot make {k} disjoint partitions")
    for i, (docs, qa, rl) in enumerate(parts, 1):  # all checks before anything is written
        if not docs:
            raise RefreshError(f"partition {i} of {corpus.root} got no documents (its APIs' pages went elsewhere)")
        if not qa and not tasks[i - 1]:
            raise RefreshError(f"partition {i} of {corpus.root} has no QA pairs; add QA to more documents")
        if rl_qa is not None and not rl:
            raise RefreshError(f"partition {i} of {corpus.root} has no RL questions; add some for more documents")
    paths = []
    for i, (docs, qa, rl) in enumerate(parts):
        final = Path(dest) / f"part-{i + 1}"
        rl_path = rl_qa_file(final)
        if rl:
            rl_path.parent.mkdir(parents=True, exist_ok=True)
            tmp_rl = rl_path.with_name(f".{rl_path.name}.tmp")
            tmp_rl.write_text(_jsonl(rl))
            os.replace(tmp_rl, rl_path)
        else:
            rl_path.unlink(missing_ok=True)
        if final.exists():  # written by an earlier (interrupted) run: content is a function of (corpus, k, seed)
            paths.append(final)
            continue
        tmp = staging_dir(final)
        (tmp / "docs.jsonl").write_text("".join(json.dumps({"id": d.id, "title": d.title, "text": d.text},
                                                           ensure_ascii=False) + "\n" for d in docs))
        if qa:
            (tmp / "qa.jsonl").write_text(_jsonl(qa))
        if corpus.tools is not None:  # the whole spec (the simulator), and this partition's tasks
            from past.tools import TOOL_TASKS_FILE, TOOLS_FILE

            (tmp / TOOLS_FILE).write_text(corpus.tools.model_dump_json(indent=1, exclude_none=True))
            (tmp / TOOL_TASKS_FILE).write_text("".join(t.model_dump_json() + "\n" for t in tasks[i]))
        paths.append(publish_dir(tmp, final))
    return paths


def _verified(model_dir: Path) -> bool:
    return (model_dir / MANIFEST).is_file() and not verify_model_dir(model_dir)


def run_round(k: int, partition: Path, base_model: Path, prev_vector: Path | None, work: Path,
              sft_recipe: SFTRecipe, grpo_recipe: GRPORecipe, judge: Callable | None = None,
              extra_rewards: list[Callable] | None = None, log: Callable[[str], None] = print) -> dict:
    """Round k: θ_sft_k = SFT(θ_base, D_k); θ_rl_k = GRPO(θ_sft_k + v_{k-1}); v_k = θ_rl_k − θ_sft_k.

    Returns the round's record (also written to `<work>/round-k/round.json`); `record["vector"]` is v_k.
    A round whose record exists is returned as is; otherwise finished steps inside it are reused.
    """
    rd = Path(work) / f"round-{k}"
    marker = rd / "round.json"
    rl_file = rl_qa_file(Path(partition))
    grpo_questions = "rl_qa" if rl_file.is_file() else "train split"
    # What GRPO trains on is an input of the round: resuming a (finished or half-done) round with other
    # RL questions would silently ship a vector learned on the old ones.
    key = f"rl_qa sha256 {sha256_file(rl_file)}" if rl_file.is_file() else "train split"
    key_file = rd / "grpo_questions.txt"
    if key_file.is_file() and key_file.read_text() != key:
        raise RefreshError(f"{rd} was trained on other GRPO questions ({key_file.read_text()}, now {key}); "
                           "use a fresh work folder")
    if marker.exists():
        log(f"round {k}: already done, skipping")
        return json.loads(marker.read_text())
    rd.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key)
    t_round = time.monotonic()
    phases: dict[str, float] = {}  # wall seconds per phase of this call (a resumed phase costs ~0)

    log(f"round {k}: SFT of the base model on {partition.name}")
    sft_dir = rd / "sft"
    sft_metrics = run_sft(partition, sft_dir, base_model, sft_recipe, work_dir=rd / "sft-work", progress=True)
    part = load_corpus(partition)
    rollout = None
    if part.tool_tasks:  # a tool partition: GRPO plays whole episodes of its training tasks
        from past.tool_rollout import TURN_TOKENS, ToolRollout, grpo_items

        train_ids = {json.loads(x)["id"] for x in (rd / "sft-work" / "splits" / "train.jsonl").read_text().splitlines()}
        tasks = [t for t in part.tool_tasks if t.id in train_ids] or part.tool_tasks
        train_qa, grpo_questions = grpo_items(tasks), "tool episodes"
        rollout = ToolRollout(part.tools, tasks)
        grpo_recipe = dataclasses.replace(grpo_recipe, rewards=("episode", "episode_pass", "episode_finish"),
                                          reward_weights=(1.0, 0.0, 0.0),
                                          max_completion_length=max(grpo_recipe.max_completion_length, TURN_TOKENS))
    else:
        train_qa = [{"question": q.question, "answer": q.answer}
                    for q in read_qa_jsonl(rl_file if rl_file.is_file() else rd / "sft-work" / "splits" / "train.jsonl")]
    phases["sft_s"] = time.monotonic() - t_round

    if prev_vector is None:
        init = sft_dir  # v_0 = 0
    else:
        init = rd / "init"
        if not _verified(init):
            shutil.rmtree(init, ignore_errors=True)
            log(f"round {k}: init = θ_sft_{k} + v_{k - 1}")
            inject(sft_dir, prev_vector, init, lam=1.0)

    phases["inject_s"] = time.monotonic() - t_round - sum(phases.values())
    rl_dir = rd / "rl"
    if not _verified(rl_dir):
        shutil.rmtree(rl_dir, ignore_errors=True)
        log(f"round {k}: GRPO on {len(train_qa)} questions ({grpo_questions}) from {init.name}")
        train_grpo(init, train_qa, rl_dir, grpo_recipe, work_dir=rd / "grpo-work",
                   judge=None if rollout else judge, extra_rewards=None if rollout else extra_rewards,
                   rollout_func=rollout)
    grpo = read_result(rl_dir)
    phases["grpo_s"] = time.monotonic() - t_round - sum(phases.values())

    vec = rd / "vector"
    shutil.rmtree(vec, ignore_errors=True)  # cheap to redo; never trust a half-finished one
    extract(rl_dir, sft_dir, vec)
    ortho_dir = rd / "orthogonality"
    shutil.rmtree(ortho_dir, ignore_errors=True)
    report = analyze(vec, base_model, sft_dir, ortho_dir, progress=False)
    phases["extract_analyze_s"] = time.monotonic() - t_round - sum(phases.values())

    record = {
        "round": k, "partition": partition.name, "partition_corpus_id": part.id,
        "init": "sft" if prev_vector is None else "sft+v_prev", "sft": _slim_sft(sft_metrics),
        "grpo": {key: grpo[key] for key in ("steps", "reward_curve", "reward_std_curve", "per_reward_curves",
                                             "judge", "wall_s")} | {"questions": grpo_questions, "n_questions": len(train_qa),
                 "rewards": list(grpo_recipe.rewards), "max_completion_length": grpo_recipe.max_completion_length,
                 "processes": grpo.get("processes", 1),
                 # did this round's RL learn? (first vs last min(20, steps/2) steps; a vector that did not is noise)
                 "learning": learning_gate(grpo["reward_curve"], window=min(20, max(2, len(grpo["reward_curve"]) // 2)))},
        "orthogonality": orthogonality_summary(report) | {"report_dir": str(ortho_dir)},
        "vector": str(vec), "rl": str(rl_dir), "sft_dir": str(sft_dir),
        "wall_s": round(time.monotonic() - t_round, 2), "phases": {p: round(s, 2) for p, s in phases.items()},
    }
    marker.write_text(json.dumps(record, indent=2))
    curve, o = record["grpo"]["reward_curve"], record["orthogonality"]["summary"]
    log(f"round {k}: done in {record['wall_s']:.0f} s; GRPO mean reward first 5 steps {_mean(curve[:5]):.3f} -> "
        f"last 5 {_mean(curve[-5:]):.3f} (learning gate: {record['grpo']['learning']['reason']}); mean |cos(Δ_sft, v)| per layer {o['mean_abs_layer_cosine']:.4f}; "
        f"‖v‖/‖Δ_sft‖ {o['skill_over_knowledge_norm']:.3f}")
    return record


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def orthogonality_summary(report: dict) -> dict:
    """The round's orthogonality figures (from past.skill.analyze): `summary` - cosine(θ_sft_k − θ_base, v_k)
    overall, mean and max |cosine| over layers, the norms and their ratio ‖v_k‖ / ‖θ_sft_k − θ_base‖ - and
    `per_layer` cosines ("other" = embeddings and norms; None where one delta is zero there)."""
    layers = {name: s for name, s in report["layers"].items() if name != "other"}
    cos = [abs(s["cosine"]) for s in layers.values() if s["cosine"] is not None]
    overall = report["overall"]
    summary = {
        "overall_cosine": overall["cosine"],
        "mean_abs_layer_cosine": _mean(cos),
        "max_abs_layer_cosine": max(cos, default=float("nan")),
        "skill_norm": overall["skill_norm"], "knowledge_norm": overall["knowledge_norm"],
        "skill_over_knowledge_norm": overall["skill_norm"] / overall["knowledge_norm"]
        if overall["knowledge_norm"] else float("nan"),
    }
    return {"summary": summary, "per_layer": {name: s["cosine"] for name, s in report["layers"].items()}}


def lineage(source_corpus_id: str, records: list[dict], base_model: Path, sft_recipe: SFTRecipe,
            grpo_recipe: GRPORecipe, seed: int) -> dict:
    """What the shipped vector's manifest says about where it came from."""
    return {
        "source_corpus_ids": [source_corpus_id],
        "partitions": [r["partition_corpus_id"] for r in records],
        "rounds": len(records),
        "reward_summary": [{"round": r["round"], "first": r["grpo"]["reward_curve"][:1],
                            "last": r["grpo"]["reward_curve"][-1:]} for r in records],
        "reward_curves": {f"round-{r['round']}": r["grpo"]["reward_curve"] for r in records},
        "learning": {f"round-{r['round']}": r["grpo"].get("learning", {}).get("passed") for r in records},
        "grpo_config": asdict(grpo_recipe),
        "sft_config": asdict(sft_recipe),
        "base_model": _fingerprint(base_model),
        "orthogonality": {f"round-{r['round']}": r["orthogonality"] for r in records},
        "seed": seed,
    }


def refresh_skill(
    source: Path,
    out_dir: Path,
    base_model: Path,
    rounds: int,
    work_dir: Path,
    sft_recipe: SFTRecipe | None = None,
    grpo_recipe: GRPORecipe | None = None,
    judge: Callable | None = None,
    extra_rewards: list[Callable] | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
    rl_qa: Path | None = None,
) -> RefreshResult:
    """Run (or resume) the K-round refinement on `source`; the final vector v_K lands at `out_dir`.
    `rl_qa`: optional JSONL of RL questions about the source documents (question, answer, doc_id)."""
    out_dir, work = Path(out_dir), Path(work_dir)
    if out_dir.exists():
        raise RefreshError(f"output folder {out_dir} already exists")
    sft_recipe = sft_recipe or SFTRecipe()
    grpo_recipe = grpo_recipe or GRPORecipe()
    corpus = load_corpus(source)
    if rounds < 1:
        raise RefreshError(f"K (rounds) must be ≥ 1, got {rounds}")
    if len(corpus.documents) < rounds:  # checked before anything is written (partition_corpus checks it too)
        raise RefreshError(f"{source}: {len(corpus.documents)} documents cannot make {rounds} disjoint partitions")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    parts = partition_corpus(corpus, rounds, work / "partitions", seed, read_qa_jsonl(rl_qa) if rl_qa else None)

    records: list[dict] = []
    prev_vector: Path | None = None
    for k, part in enumerate(parts, 1):
        records.append(run_round(k, part, base_model, prev_vector, work, sft_recipe, grpo_recipe, judge,
                                 extra_rewards, log=lambda m, k=k: log(f"{m} (of {rounds})")))
        prev_vector = Path(records[-1]["vector"])

    last = records[-1]
    extract(Path(last["rl"]), Path(last["sft_dir"]), out_dir,
            lineage=lineage(corpus.id, records, base_model, sft_recipe, grpo_recipe, seed))
    return RefreshResult(vector_dir=out_dir, rounds=records, wall_s=round(time.monotonic() - t0, 2))


def _slim_sft(m: dict) -> dict:
    keep = {}
    for stage in ("memorize", "qa"):
        if stage in m:
            keep[stage] = {k: m[stage].get(k) for k in ("steps", "loss_first", "loss_last", "tokens", "wall_s")
                           if k in m[stage]}
    return keep


def _fingerprint(model_dir: Path) -> dict:
    m = Path(model_dir) / MANIFEST
    digest = hashlib.sha256(m.read_bytes()).hexdigest() if m.is_file() else None
    return {"path": str(model_dir), "manifest_sha256": digest}
