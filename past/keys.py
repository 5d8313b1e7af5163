"""Content keys: one short hash of what an artifact is made from.

An artifact's key hashes its inputs (content ids: corpus, base model, skill vector) and the recipe fields
that change it, never operational knobs (checkpoint cadence, timeouts). The same key names its work folder,
its done-marker and its Prefect transaction, so a changed recipe is a new artifact in a new folder and an
unchanged re-run finds the old one; nothing a registered version points at is rewritten.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_key(n: int = 16, **parts: Any) -> str:
    """sha256 of the parts as canonical JSON (sorted keys), first `n` hex digits."""
    blob = json.dumps(parts, sort_keys=True, default=str)  # the encoding past.sft has always keyed stages with
    return hashlib.sha256(blob.encode()).hexdigest()[:n]
