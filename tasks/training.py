"""Training tasks: base model, the two SFT stages, one round of skill refinement. Tagged `accelerator`."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from prefect import task

from past.grpo import GRPOOverrides, GRPORecipe  # noqa: F401 - GRPOOverrides: the flow parameter type
from past.keys import content_key
from past.corpus import load_corpus, read_qa_jsonl
from past.evalsets import keep_evalset
from past.models import resolve_model
from past.qa import read_implications
from past.rewards import judge_reward_from_settings
from past.sft import SFTOverrides, SFTRecipe, logged_metrics, run_memorize, run_qa  # noqa: F401 - SFTOverrides: the flow parameter type
from past.teacher import corpus_teacher_key
from tasks.common import ACCELERATOR_TAG, artifact, cached, require, retry_transient, settings


JUDGE_FIELDS = ("judge_base_url", "judge_model")


def sft_recipe(overrides: dict | None = None) -> SFTRecipe:
    """The SFT recipe from the settings, with a run's overrides (e.g. the adapt flow's `sft` parameter)."""
    return SFTRecipe.from_settings(settings(), **(overrides or {}))


def grpo_recipe(overrides: dict | None = None) -> GRPORecipe:
    """The GRPO recipe from the settings, with a run's overrides (the refresh flow's `grpo` parameter)."""
    return GRPORecipe.from_settings(settings(), **(overrides or {}))


def sft_key() -> dict:
    return sft_recipe().key()


def refine_key(grpo: dict | None = None) -> dict:
    """What a refinement round's result depends on: both recipes and the judge (not the checkpoint cadence)."""
    s = settings()
    return {"sft": sft_key(), "grpo": grpo_recipe(grpo).key(), "judge": {f: getattr(s, f) for f in JUDGE_FIELDS}}


def candidate_key(base: dict, sft: dict | None = None) -> str:
    """What else makes a candidate besides corpus, skill vector and λ: the base model's content, the SFT recipe
    (settings + the run's overrides) and the teacher's key - the same one the teacher task caches on, so a setting
    that does not change the teacher's output (e.g. an unused endpoint URL) does not make a new candidate. Part of
    the adapt transaction and work folder: a changed recipe is a new candidate in a new folder; an unchanged re-run
    finds the old one."""
    return content_key(12, base=base["sha256"], sft=sft_recipe(sft).key(), teacher=corpus_teacher_key(settings()))


def refresh_key(base: dict, grpo: dict | None = None) -> str:
    """The skill refresh's recipe part: base model content, SFT and GRPO recipes (with the run's overrides), the
    judge, the seed."""
    return content_key(12, base=base["sha256"], **refine_key(grpo), seed=settings().seed)


@task(cache_policy=cached("base_model"), persist_result=True, retries=1, retry_condition_fn=retry_transient,
      retry_delay_seconds=5)
def base_model() -> dict:
    """The verified base-model folder (provisioned from the packaged GGUF on first use)."""
    s = settings()
    return artifact(resolve_model(s.base_model, s.models_dir))


@task(cache_policy=cached(recipe=sft_key), persist_result=True, tags=[ACCELERATOR_TAG])
def sft_memorize(corpus: dict, base: dict, work_dir: str, teacher: dict | None = None, sft: dict | None = None) -> dict:
    """SFT stage 1: causal-LM loss on the documents (+ teacher implications), every token in some window."""
    impl = read_implications(Path(teacher["path"]) / "implications.jsonl") if teacher and teacher.get("generated") else None
    recipe = sft_recipe(sft)
    extra = read_qa_jsonl(Path(teacher["path"]) / "qa.jsonl") if recipe.mix_qa and teacher and teacher.get("generated") \
        else None  # mixed training: stage 1 needs the same QA stage 2 splits
    r = run_memorize(Path(corpus["path"]), require(base), recipe, Path(work_dir), implications=impl, qa=extra)
    return artifact(r["model"], metrics=r["metrics"])


@task(cache_policy=cached("gate_min_new_items", recipe=sft_key), persist_result=True, tags=[ACCELERATOR_TAG])
def sft_qa(corpus: dict, stage1: dict, base: dict, work_dir: str, out_dir: str, teacher: dict | None = None,
           sft: dict | None = None) -> dict:
    """SFT stage 2: chat QA (own + teacher), loss on answers only; keeps the held-out split for the gates."""
    s = settings()
    recipe = sft_recipe(sft)
    extra = read_qa_jsonl(Path(teacher["path"]) / "qa.jsonl") if teacher and teacher.get("generated") else None
    r = run_qa(Path(corpus["path"]), require(stage1), require(base), recipe, Path(work_dir), Path(out_dir), qa=extra)
    keep, source, n = keep_evalset(s.home, load_corpus(Path(corpus["path"])), r["eval_split"], s.gate_min_new_items)
    flat, curves = logged_metrics(r["metrics"])
    return artifact(out_dir, metrics=flat, recipe=dataclasses.asdict(recipe), eval_split=str(keep), eval_source=source,
                    eval_items=n, training_check=(r["metrics"].get("qa") or {}).get("train_recall"), curves=curves)


@task(cache_policy=cached(recipe=refine_key), persist_result=True, tags=[ACCELERATOR_TAG])
def refine_round(k: int, partition: str, base: dict, prev_vector: dict | None, work_dir: str,
                 grpo: dict | None = None) -> dict:
    """One round of iterative skill refinement: SFT on D_k, GRPO from θ_sft_k + v_{k-1}, v_k = θ_rl_k − θ_sft_k."""
    from past.refine import run_round

    record = run_round(k, Path(partition), require(base), require(prev_vector) if prev_vector else None,
                       Path(work_dir), sft_recipe(), grpo_recipe(grpo), judge=judge_reward_from_settings(settings()))
    return artifact(record["vector"], record=record)


def recipe_params(grpo: dict | None = None) -> dict:
    """The SFT and GRPO recipes a refresh runs with, as MLflow params (dotted: sft.lr, grpo.max_steps, ...)."""
    return {"sft": dataclasses.asdict(sft_recipe()), "grpo": dataclasses.asdict(grpo_recipe(grpo))}


@task(cache_policy=cached("seed"), persist_result=True)
def partition_source(corpus: dict, k: int, work_dir: str, rl_questions: dict | None = None) -> list[str]:
    """K disjoint partitions of the source corpus (and of its RL questions), by document (seeded)."""
    from past.refine import partition_corpus

    rl = read_qa_jsonl(Path(rl_questions["path"])) if rl_questions else None
    parts = partition_corpus(load_corpus(Path(corpus["path"])), k, Path(work_dir) / "partitions", settings().seed, rl)
    return [str(p) for p in parts]


@task(cache_policy=cached("seed", recipe=refine_key), persist_result=True)
def finalize_vector(corpus: dict, records: list[dict], base: dict, out_dir: str, grpo: dict | None = None) -> dict:
    """Ship v_K: extract it once more into its permanent folder, with the full lineage in its manifest."""
    from past.refine import lineage
    from past.skill import SkillError, extract, read_vector, verify_vector

    out = Path(out_dir)
    if out.exists():  # the folder's name is this refresh's content key: a complete one is this very vector
        try:
            manifest, _ = read_vector(out)
            verify_vector(out, manifest)
            return artifact(out)  # possibly registered already: never rewritten
        except SkillError:
            shutil.rmtree(out)  # half-written by a crashed attempt (never registered: registration follows this)
    last = records[-1]
    extract(Path(last["rl"]), Path(last["sft_dir"]), out, progress=False,
            lineage=lineage(corpus["corpus_id"], records, require(base), sft_recipe(), grpo_recipe(grpo), settings().seed))
    return artifact(out)
