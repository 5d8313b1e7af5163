"""`past doctor`: check every component and say how to fix what is missing."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check every component (deps, model, serving, MLflow, Prefect) and how to fix it",
                       description="Exit status 0 when nothing FAILs (warnings allowed), 1 otherwise.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from past.config import load_settings
    from past.doctor import FAIL, run_checks

    checks = run_checks(load_settings())
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"[{c.status:>4}] {c.name:<{width}}  {c.detail}")
        if c.fix and c.status != "ok":
            print(f"{'':>7} {'':<{width}}  fix: {c.fix}")
    failed = [c.name for c in checks if c.status == FAIL]
    print(f"\n{len(checks) - len(failed)}/{len(checks)} components usable" + (f"; failing: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
