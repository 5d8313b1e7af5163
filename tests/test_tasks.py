"""Task policies: a task that retries, retries only transient failures (never our own deterministic errors)."""

from __future__ import annotations

import importlib
import pkgutil

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
