"""A mutex held in the MLflow model registry itself, for alias moves across machines.

MLflow has no compare-and-set on an alias and no lock API, and a file lock only covers processes that share one
file system. What every MLflow store does enforce is a unique registered-model name: `create_registered_model`
of a name that exists fails with RESOURCE_ALREADY_EXISTS, atomically, in the store's own database (SQLite,
Postgres, MySQL, or the tracking server in front of one). So the lease is a registered model named `LOCK_NAME`:
  acquire = create it (with an owner token tag); whoever's create succeeds holds it; the others poll;
  release = delete it.
A holder that dies leaves the lock model behind. A waiter breaks it once it is older than `ttl_s` (the store's
`creation_timestamp` against this host's clock), then competes for a fresh one like everyone else. Alias moves hold
the lease for a few API calls, so a TTL of a minute is generous; a holder still alive after `ttl_s` would be
treated as dead, which is why the TTL is not shorter. Breaking is a read then a delete, with one round trip
between them in which another waiter could have re-created the lock; the two timestamps are compared just
before the delete, so that needs a dead holder, two waiters and a sub-round-trip interleaving at once.

Written by hand: neither MLflow nor Prefect (outside a flow) offers a cross-host lock on the registry, and
`past/` does not depend on Prefect.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from typing import Iterator

from past.errors import PastError

LOCK_NAME = "past-registry-lock"
OWNER_TAG = "past.lease.owner"


class LeaseTimeout(PastError):
    """The registry lease could not be taken in time (another promotion is holding it)."""


def _code(e: Exception) -> str:
    return str(getattr(e, "error_code", ""))


@contextlib.contextmanager
def mlflow_lease(client, name: str = LOCK_NAME, ttl_s: float = 60.0, timeout_s: float = 120.0,
                 poll_s: float = 0.05) -> Iterator[str]:
    """Hold the registry-wide lease `name` (a registered model) for the block; yields the owner token."""
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + timeout_s
    while not _try_acquire(client, name, token, ttl_s):
        if time.monotonic() > deadline:
            raise LeaseTimeout(f"MLflow registry lease {name!r} still held after {timeout_s:.0f} s; if no "
                               f"promotion is running, delete the registered model {name!r}")
        time.sleep(poll_s)
    try:
        yield token
    finally:
        _release(client, name, token)


def _try_acquire(client, name: str, token: str, ttl_s: float) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags={OWNER_TAG: token},
                                       description="PaST's registry lease: exists only while an alias moves")
        return True
    except MlflowException as e:
        if _code(e) != "RESOURCE_ALREADY_EXISTS":
            # an ambiguous failure (e.g. a timeout after the store committed): we hold it iff it carries our token
            holder = _holder(client, name)
            if holder is not None and holder.tags.get(OWNER_TAG) == token:
                return True
            if holder is None:
                raise
            return False
    holder = _holder(client, name)
    if holder is None:  # released between our create and our read
        return False
    age_s = time.time() - holder.creation_timestamp / 1000  # hosts of one deployment are NTP-synced far below ttl
    if age_s > ttl_s:
        again = _holder(client, name)
        if again is not None and again.creation_timestamp == holder.creation_timestamp:
            with contextlib.suppress(MlflowException):  # another waiter broke it first
                client.delete_registered_model(name)
    return False


def _holder(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if _code(e) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _release(client, name: str, token: str) -> None:
    """Delete the lock if it is still ours (it may have been broken as stale while we held it)."""
    from mlflow.exceptions import MlflowException

    holder = _holder(client, name)
    if holder is not None and holder.tags.get(OWNER_TAG) == token:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(name)
