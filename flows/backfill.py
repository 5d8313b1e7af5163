"""backfill: adapt an explicit list of corpora, or every corpus that arrived in a date range. Idempotent:
corpora already adapted (same skill vector and λ) return their recorded result without re-running."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from flows.adapt import adapt
from tasks.corpus import corpora_between


def _ts(value: str | None) -> float | None:
    return None if not value else datetime.fromisoformat(value).timestamp()


@flow(name="backfill")
def backfill(corpora: list[str] | None = None, since: str | None = None, until: str | None = None,
             model_name: str = "support-bot") -> list[dict]:
    """Corpus ids/paths, or an ISO date range [since, until) of arrival times; runs adapt for each, in order."""
    ids = corpora if corpora else corpora_between(_ts(since), _ts(until))
    return [adapt(c, model_name=model_name) for c in ids]


if __name__ == "__main__":  # `past backfill ...` runs this
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m flows.backfill", description=backfill.__doc__)
    ap.add_argument("corpora", nargs="*")
    ap.add_argument("--since", default=None)
    ap.add_argument("--until", default=None)
    ap.add_argument("--model-name", default="support-bot")
    a = ap.parse_args()
    print(json.dumps(backfill(a.corpora or None, a.since, a.until, a.model_name), indent=2))
