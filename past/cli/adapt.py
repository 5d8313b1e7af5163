"""`past adapt CORPUS` and `past backfill`: run the adapt / backfill flow once, here, without Prefect CLI syntax.

Like `past up`, this only launches a process (`python -m flows.adapt ...`): past/ stays free of Prefect. With
`PREFECT_API_URL` set (e.g. under `past up`) the run is recorded by that server and shows in its UI;
otherwise Prefect starts a temporary local server for the run, with its state in <home>/prefect.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="adapt the model to one corpus now: teacher -> SFT -> + λ·v -> gate -> registry",
                       description="Runs the adapt flow in this terminal and prints its summary (JSON).")
    p.add_argument("corpus", help="corpus folder, or the id of a corpus already claimed into <home>/corpora")
    p.add_argument("--model-name", default="support-bot", help="registered model name (default support-bot)")
    p.add_argument("--lam", type=float, default=None, help="λ (default: the lam setting)")
    p.add_argument("--skill-vector", default=None, help="skill-vector folder (default: the registry's `current`)")
    p.add_argument("--sft", default=None, metavar="JSON",
                   help='SFT recipe fields to change for this run, e.g. \'{"lora_r": 8, "min_steps_qa": 200}\'')
    p.set_defaults(func=run_adapt)

    b = sub.add_parser("backfill", help="adapt a list of corpora, or all that arrived in a date range (idempotent)")
    b.add_argument("corpora", nargs="*", help="corpus ids or folders (default: every claimed corpus in the range)")
    b.add_argument("--since", default=None, help="ISO date/time: arrivals at or after it")
    b.add_argument("--until", default=None, help="ISO date/time: arrivals before it")
    b.add_argument("--model-name", default="support-bot", help="registered model name")
    b.set_defaults(func=run_backfill)


def _flow_env() -> dict[str, str]:
    from past.config import load_settings

    home = load_settings().home.resolve()
    (home / "prefect").mkdir(parents=True, exist_ok=True)  # Prefect does not create its database's parents
    env = {"PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PAST_HOME": str(home)}
    return {**env, **os.environ}  # what the caller set wins (e.g. PREFECT_API_URL of a running server)


def _run(module: str, argv: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", module, *argv], cwd=REPO, env=_flow_env())


def run_adapt(args: argparse.Namespace) -> int:
    argv = [str(Path(args.corpus).resolve()) if Path(args.corpus).exists() else args.corpus,
            "--model-name", args.model_name]
    argv += ["--lam", str(args.lam)] if args.lam is not None else []
    argv += ["--skill-vector", str(Path(args.skill_vector).resolve())] if args.skill_vector else []
    argv += ["--sft", args.sft] if args.sft else []
    return _run("flows.adapt", argv)


def run_backfill(args: argparse.Namespace) -> int:
    argv = [str(Path(c).resolve()) if Path(c).exists() else c for c in args.corpora]
    argv += ["--model-name", args.model_name]
    argv += ["--since", args.since] if args.since else []
    argv += ["--until", args.until] if args.until else []
    return _run("flows.backfill", argv)
