"""Skill-vector tasks: find the current vector, inject it into a fresh SFT model, register a new one."""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import task

from past import skill
from past.models import verify_model_dir
from past.registry import Registry
from tasks.common import REGISTRY_FIELDS, artifact, cached, require, retry_transient, settings


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2)
def current_skill_vector(explicit: str | None = None) -> dict | None:
    """The vector to inject: an explicit folder, else the registry's `current` version, else none yet."""
    if explicit:
        return artifact(explicit, version=f"path:{Path(explicit).name}")
    found = Registry(settings()).current_skill_vector()
    if found is None:
        return None
    version, path = found
    return artifact(path, version=version)


@task(cache_policy=cached("skill_include", "skill_exclude"), persist_result=True, tags=["io-heavy"])
def inject_skill(sft: dict, vector: dict, lam: float, out_dir: str) -> dict:
    """θ_final = θ_sft_T + λ·v, streamed tensor by tensor into a new, complete model folder."""
    s = settings()
    out = Path(out_dir)
    if out.exists() and not verify_model_dir(out):
        return artifact(out, lam=lam, vector=vector["version"])  # finished by an earlier, interrupted run
    shutil.rmtree(out, ignore_errors=True)
    skill.inject(require(sft), require(vector), out, lam=lam, include=s.globs(s.skill_include) or ["*"],
                 exclude=s.globs(s.skill_exclude), progress=False)
    return artifact(out, lam=lam, vector=vector["version"])


@task(cache_policy=cached(*REGISTRY_FIELDS), persist_result=True, retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5)
def register_skill_vector(vector: dict, tags: dict[str, str] | None = None, run_id: str | None = None) -> str:
    """A new version of the skill-vector model in MLflow, alias `current` (the same vector registers once)."""
    return Registry(settings()).register_skill_vector(require(vector), run_id=run_id, tags=tags)
