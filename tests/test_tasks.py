"""Task policies: retries only on transient failures; cache keys hold only the settings that change a result."""

from __future__ import annotations

import importlib
import pkgutil
from types import SimpleNamespace

import pytest
from prefect import Task

import tasks
from tasks.common import retry_transient


def all_tasks() -> list[Task]:
    out = []
    for m in pkgutil.iter_modules(tasks.__path__):
        mod = importlib.import_module(f"tasks.{m.name}")
        out += [v for v in vars(mod).values() if isinstance(v, Task) and v.__module__ == mod.__name__]
    return out


def test_every_retrying_task_retries_only_transient_errors() -> None:
    found = all_tasks()
    assert len(found) >= 15
    retrying = [t for t in found if t.retries]
    assert retrying, "some tasks retry"
    assert all(t.retry_condition_fn is retry_transient for t in retrying), \
        [t.name for t in retrying if t.retry_condition_fn is not retry_transient]


def cache_key(t: Task, **env: str) -> str:
    """The key Prefect would store `t`'s result under, for the same inputs, with these PAST_* settings."""
    with pytest.MonkeyPatch.context() as m:
        for k, v in env.items():
            m.setenv(k, v)
        return t.cache_policy.compute_key(SimpleNamespace(task=t), {"corpus": {"sha256": "x"}}, {})


def test_a_task_cache_key_holds_only_the_settings_that_change_its_result(tmp_path) -> None:
    from tasks.corpus import teacher_qa
    from tasks.training import refine_round, sft_memorize

    for t in (sft_memorize, refine_round, teacher_qa):
        base = cache_key(t)
        assert cache_key(t) == base
        # operational knobs: a gate timeout, the webhook, the MLflow UI link
        assert cache_key(t, PAST_GATE_REQUEST_TIMEOUT_S="5", PAST_NOTIFY_WEBHOOK_URL="http://hook",
                         PAST_MLFLOW_UI_URL="http://ui") == base, t.name
        assert cache_key(t, PAST_HOME=str(tmp_path / "other-home")) != base, t.name
    assert cache_key(sft_memorize, PAST_SFT__LORA_R="8") != cache_key(sft_memorize)
    assert cache_key(sft_memorize, PAST_GRPO__MAX_STEPS="3") == cache_key(sft_memorize)
    assert cache_key(refine_round, PAST_GRPO__MAX_STEPS="3") != cache_key(refine_round)
    assert cache_key(refine_round, PAST_JUDGE_MODEL="j") != cache_key(refine_round)
    assert cache_key(teacher_qa, PAST_TEACHER_N_QA="3") != cache_key(teacher_qa)
    assert cache_key(teacher_qa, PAST_SFT__LORA_R="8") == cache_key(teacher_qa)


def test_a_misspelt_cache_field_fails_at_definition() -> None:
    from tasks.common import cached

    with pytest.raises(ValueError, match="no such setting"):
        cached("sft_lora_rank")


def test_candidate_key_follows_the_teacher_key_the_teacher_task_caches_on() -> None:
    from tasks.training import candidate_key

    def key(**env: str) -> str:
        with pytest.MonkeyPatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            return candidate_key({"sha256": "b"})

    base = key(PAST_TEACHER="extractive")
    assert key(PAST_TEACHER="extractive", PAST_TEACHER_MODEL="unused-by-extractive") == base
    assert key(PAST_TEACHER="extractive", PAST_TEACHER_N_QA="3") != base
    assert key(PAST_TEACHER="extractive", PAST_SFT__LORA_R="8") != base
    assert key(PAST_TEACHER="extractive", PAST_GATE_REQUEST_TIMEOUT_S="5") == base
