"""`past gate|promote|rollback|history|review|ui`: run the eval gate by hand and manage the MLflow registry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "gate", help="run the eval gate on a model folder or endpoint (no registration)",
        description="Serves the candidate (and the champion, unless its scores are cached for this eval set) "
        "with vLLM, asks every held-out question, and prints the decision. Exit 0 on pass, 1 on fail.")
    g.add_argument("--model", type=Path, help="candidate model folder (served with vLLM unless --url)")
    g.add_argument("--eval", type=Path, required=True, dest="eval_file",
                   help="held-out QA of the new corpus (JSONL: id, question, answer, doc_id, corpus_id)")
    g.add_argument("--retention", type=Path, action="append", default=[],
                   help="held-out QA of earlier corpora (repeatable)")
    g.add_argument("--no-general", action="store_true", help="leave out the built-in general prompts")
    g.add_argument("--champion", type=Path, help="champion model folder to compare against (default: floor only)")
    g.add_argument("--champion-url", default="", help="endpoint already serving the champion")
    g.add_argument("--url", default="", help="endpoint already serving the candidate (instead of --model)")
    g.add_argument("--name", default="", help="served model name (default: candidate/manual, or the one "
                   "model --url serves)")
    g.add_argument("--out", type=Path, help="folder for gate-report.json (default: <home>/runs/gate-<time>)")
    g.set_defaults(func=run_gate)

    p = sub.add_parser("promote", help="point the champion alias at a version (compare-and-set under a lock)")
    p.add_argument("name", help="registered model name")
    p.add_argument("version", help="model version to promote")
    p.add_argument("--force", action="store_true", help="promote even if the version failed its gate")
    p.set_defaults(func=run_promote)

    r = sub.add_parser("rollback", help="restore the previous champion")
    r.add_argument("name", help="registered model name")
    r.set_defaults(func=run_rollback)

    h = sub.add_parser("history", help="every version with its gate verdict and promotions")
    h.add_argument("name", help="registered model name")
    h.add_argument("--json", action="store_true", help="print JSON instead of a table")
    h.set_defaults(func=run_history)

    v = sub.add_parser("review", help="check what a reviewer sees in MLflow: curves, refresh rounds, a loadable "
                       "champion, a model card equal to the gate report (exit 1 if any check fails)")
    v.add_argument("name", help="registered model name")
    v.add_argument("--no-load", action="store_true", help="skip loading the champion with mlflow.pyfunc")
    v.add_argument("--json", action="store_true", help="print JSON instead of a table")
    v.set_defaults(func=run_review)

    u = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 over the home store (Ctrl-C stops it)")
    u.add_argument("--port", type=int, default=5000, help="port to listen on")
    u.set_defaults(func=run_ui)


def _served_name(url: str) -> str:
    from openai import OpenAI

    from past.errors import PastError

    try:
        models = OpenAI(base_url=url, api_key="EMPTY", timeout=10, max_retries=1).models.list().data
    except Exception as e:  # noqa: BLE001
        raise PastError(f"cannot list models at {url}: {e}") from None
    if not models:
        raise PastError(f"{url} serves no model")
    return models[0].id


def run_gate(args: argparse.Namespace) -> int:
    import time

    from past.config import load_settings
    from past.errors import PastError
    from past.evaluation import Champion, build_eval_set, load_eval_items, run_gate as gate
    from past.registry import folder_sha256

    s = load_settings()
    if not args.model and not args.url:
        raise PastError("give --model DIR or --url URL")
    items = build_eval_set(load_eval_items(args.eval_file),
                           [i for p in args.retention for i in load_eval_items(p, "retention")],
                           include_general=not args.no_general)
    champion = None
    if args.champion or args.champion_url:
        key = f"dir:{folder_sha256(args.champion)[:16]}" if args.champion else f"url:{args.champion_url}"
        champion = Champion(key, args.champion, args.champion_url,
                            _served_name(args.champion_url) if args.champion_url else "")
    name = args.name or (_served_name(args.url) if args.url else "candidate/manual")
    report = gate(args.model, items, s, name, champion=champion, candidate_url=args.url)
    out = args.out or s.runs_dir / f"gate-{time.strftime('%Y%m%d-%H%M%S')}"
    path = report.write(out)
    d = report.decision
    for k, v in sorted(d.metrics.items()):
        print(f"  {k:32s} {v:.3f}")
    print(f"{'PASS' if d.passed else 'FAIL'}: {d.reason}\nreport: {path}")
    return 0 if d.passed else 1


def run_promote(args: argparse.Namespace) -> int:
    from past.config import load_settings
    from past.registry import Registry, ref

    v = Registry(load_settings()).promote(args.name, args.version, reason="manual (past promote)", force=args.force)
    print(f"champion of {args.name} → {ref(args.name, v)}")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from past.config import load_settings
    from past.registry import Registry, ref

    v = Registry(load_settings()).rollback(args.name)
    print(f"champion of {args.name} rolled back → {ref(args.name, v)}")
    return 0


def run_history(args: argparse.Namespace) -> int:
    from past.config import load_settings
    from past.registry import Registry

    reg = Registry(load_settings())
    rows = reg.history(args.name)
    if args.json:
        print(json.dumps({"champion_history": reg.champion_history(args.name), "versions": rows}, indent=2))
        return 0
    print(f"champion history (oldest first): {' → '.join(reg.champion_history(args.name)) or '-'}")
    cols = ["version", "champion", "corpus_id", "skill", "lambda", "gate", "promoted_at", "rolled_back_at", "reason"]
    print("  ".join(f"{c:>8s}" if c != "reason" else c for c in cols))
    for r in rows:
        print("  ".join(f"{r[c][:19]:>8s}" if c != "reason" else r[c][:100] for c in cols))
    return 0


def run_review(args: argparse.Namespace) -> int:
    from past.config import load_settings
    from past.review import as_dicts, review

    findings = review(load_settings(), args.name, load_model=not args.no_load)
    if args.json:
        print(json.dumps(as_dicts(findings), indent=2))
    else:
        for f in findings:
            print(f"{'ok  ' if f.ok else 'FAIL'}  {f.check}: {f.detail}")
    return 0 if all(f.ok for f in findings) else 1


def run_ui(args: argparse.Namespace) -> int:
    import os
    import signal
    import subprocess
    import sys

    from past.config import load_settings

    s = load_settings()
    art = (s.home / "mlflow" / "artifacts").resolve()
    art.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", s.mlflow_uri,
           "--default-artifact-root", art.as_uri(), "--host", "127.0.0.1", "--port", str(args.port)]
    print(f"MLflow UI on http://127.0.0.1:{args.port} (store {s.mlflow_uri}); Ctrl-C to stop")
    # Own process group, torn down whole on Ctrl-C or SIGTERM: `mlflow ui` runs uvicorn as a child.
    proc = subprocess.Popen(cmd, start_new_session=True)

    def _stop(*_: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, old)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
