"""Shared task plumbing: settings, artefact manifests, cache and retry policies."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock
from prefect.cache_policies import INPUTS, TASK_SOURCE, CacheKeyFnPolicy, CachePolicy

from past.config import Settings, load_settings
from past.errors import PastError
from past.keys import content_key
from past.registry import folder_sha256


def home_tag(s: Settings | None = None) -> str:
    """Short id of the resolved home folder: keys recorded by Prefect never leak from one home to another."""
    home = (s or load_settings()).home.resolve()
    return hashlib.sha256(str(home).encode()).hexdigest()[:8]


# The library logs progress (e.g. `past.sft` steps) at INFO. `past up` sets PREFECT_LOGGING_EXTRA_LOGGERS=past,
# which gives the `past` logger Prefect's handlers but not a level: without this, INFO stays below the root's
# WARNING and a 20-minute SFT stage shows nothing in the run log (seen under `past up`).
logging.getLogger("past").setLevel(logging.INFO)

_SETTINGS_FIELDS = frozenset(Settings.model_fields)
REGISTRY_FIELDS = ("mlflow_tracking_uri",)  # the store a registry task writes to (empty = the home's SQLite)


def cached(*fields: str, recipe: Callable[[], object] | None = None) -> CachePolicy:
    """Cache policy of one task: its inputs, its source, the home folder, and only the settings that change its
    result (named `fields`, plus what `recipe()` returns). A re-run with the same of those skips the step and
    returns its recorded manifest; an unrelated setting (a gate timeout) does not invalidate a finished SFT."""
    unknown = [f for f in fields if f not in _SETTINGS_FIELDS]
    if unknown:  # a typo here would silently leave a setting out of the key
        raise ValueError(f"cached(): no such setting(s) {unknown}")

    def key(task_ctx, inputs) -> str:
        s = load_settings()
        return content_key(64, home=home_tag(s), settings={f: getattr(s, f) for f in fields},
                           recipe=recipe() if recipe else None)

    return INPUTS + TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=key)


ACCELERATOR_TAG = "accelerator"  # `past up` puts a concurrency limit of 1 on this tag


class StaleArtifactError(PastError):
    """A manifest points at a folder that is gone or changed since the step that made it."""


def settings() -> Settings:
    """The settings every task reads (defaults < past.toml < PAST_* environment)."""
    return load_settings()


def artifact(path: str | Path, **extra: object) -> dict:
    """The manifest a task hands to the next: where the folder is and the sha256 of its checksum manifest."""
    path = Path(path).resolve()
    return {"path": str(path), "sha256": folder_sha256(path), **extra}


def require(art: dict) -> Path:
    """The folder behind a manifest, after checking it is still the one that was produced."""
    path = Path(art["path"])
    if not path.exists():
        raise StaleArtifactError(f"{path} is gone (it was produced by an earlier, cached step); "
                                 "delete the Prefect result cache or re-run with a new key")
    if folder_sha256(path) != art["sha256"]:
        raise StaleArtifactError(f"{path} changed since it was produced (sha256 mismatch)")
    return path


def retry_transient(task, task_run, state) -> bool:
    """retry_condition_fn: retry I/O and endpoint hiccups, never our own deterministic errors."""
    try:
        state.result()
    except PastError:
        return False
    except Exception:  # noqa: BLE001 - anything else (OSError, HTTP, timeouts) may be transient
        return True
    return False


@contextlib.contextmanager
def corpus_lock(home: Path, key: str) -> Iterator[None]:
    """Block while another run works on the same key: two runs of one corpus never interleave."""
    d = Path(home) / "locks"
    d.mkdir(parents=True, exist_ok=True)
    with FileLock(d / f"{key}.lock"):
        yield
