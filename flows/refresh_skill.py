"""refresh_skill: the rare, expensive path - learn a content-invariant skill vector by GRPO over K partitions.

    D_1..D_K = disjoint partitions of the source corpus (by document)
    v_0 = 0
    for k = 1..K:
        θ_sft_k = SFT(θ_base, D_k);  θ_rl_k = GRPO(θ_sft_k + v_{k-1}, D_k);  v_k = θ_rl_k − θ_sft_k
    register v_K (alias `current`) with its lineage: partitions, reward curves, orthogonality per round
    (an MLflow run in `past-refresh`, one nested run per round: reward curves, learning gate, cosine plot)

Rounds are cached and resumable: a killed refresh restarts at the round (and GRPO step) where it stopped.
Optionally re-gates the champion's corpus with the new vector (an `adapt` run keyed by the new version).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.common import settings
from tasks.corpus import resolve_corpus, resolve_rl_questions
from tasks.registry import champion_corpus, record_refresh
from tasks.skill import register_skill_vector
from tasks.training import (GRPOOverrides, base_model, finalize_vector, grpo_recipe, partition_source, recipe_params,
                            refine_round, refresh_key)


@flow(name="refresh-skill")
def refresh_skill(source: str, rounds: int | None = None, regate_model: str | None = None,
                  rl_questions: str | None = None, grpo: GRPOOverrides | None = None) -> dict:
    """Iterative skill refinement on `source` (corpus id or folder); registers the new skill vector.
    `rl_questions`: optional JSONL of questions about the source documents for GRPO (else its training QA).
    `grpo`: GRPO recipe fields to change for this run only, e.g. {"learning_rate": 1e-5, "beta": 0} (the rest
    come from the settings); a typed form in the Prefect UI, and an unknown field is refused before the run."""
    grpo = (grpo.model_dump(exclude_none=True) or None) if grpo is not None else None  # only the fields given
    grpo_recipe(grpo)  # validate the whole recipe up front: a deterministic error, nothing trained
    s = settings()
    k_rounds = rounds or s.grpo_rounds
    c = resolve_corpus(source)
    rl = resolve_rl_questions(rl_questions) if rl_questions else None
    base = base_model()
    # one content key (source, K, RL questions, base + recipes + seed) names the rounds' folder and the vector's
    work = Path(s.runs_dir) / (f"refresh-{c['corpus_id'][:16]}-K{k_rounds}-seed{s.seed}"
                               + (f"-rl{rl['sha256'][:8]}" if rl else "") + f"-r{refresh_key(base, grpo)}")

    parts = partition_source(c, k_rounds, str(work), rl)
    records, prev = [], None
    for k, part in enumerate(parts, 1):
        prev = refine_round(k, part, base, prev, str(work), grpo)
        records.append(prev["record"])
    vector = finalize_vector(c, records, base, str(Path(s.skills_dir) / work.name), grpo)
    run_id = record_refresh(c["corpus_id"], {"rounds": k_rounds, "seed": s.seed, "base_model": base["path"],
                                             "rl_questions": rl["sha256"] if rl else "", **recipe_params(grpo)}, records)
    version = register_skill_vector(vector, tags={"source_corpus_id": c["corpus_id"], "rounds": str(k_rounds)},
                                    run_id=run_id)

    _publish(version, records)
    result = {"skill_vector_version": version, "path": vector["path"], "rounds": k_rounds,
              "reward_first_last": [(r["grpo"]["reward_curve"][:1], r["grpo"]["reward_curve"][-1:]) for r in records]}
    if regate_model and (corpus_id := champion_corpus(regate_model)):
        from flows.adapt import adapt  # the champion's knowledge with the new skill, through the same gate

        result["regate"] = adapt(corpus_id, model_name=regate_model)
    return result


def _publish(version: str, records: list[dict]) -> None:
    rows = []
    for r in records:
        curve = r["grpo"]["reward_curve"]
        ortho = (r["orthogonality"].get("summary") or {})
        rows.append({"round": r["round"], "partition": r["partition"], "grpo_steps": r["grpo"]["steps"],
                     "reward_first": round(curve[0], 4) if curve else None,
                     "reward_last": round(curve[-1], 4) if curve else None,
                     "orthogonality": str({k: (round(v, 4) if isinstance(v, float) else v) for k, v in ortho.items()}),
                     "wall_s": r["wall_s"]})
    create_table_artifact(key="skill-refresh-rounds", table=rows, description=f"Skill vector v{version}: rounds")
    create_markdown_artifact(key="skill-refresh", markdown=(
        f"# Skill vector version {version} registered (alias `current`)\n\n"
        + "\n".join(f"- round {r['round']}: reward {r['grpo']['reward_curve'][:1]} → {r['grpo']['reward_curve'][-1:]}"
                    f" over {r['grpo']['steps']} GRPO steps" for r in records)))
