"""`past smoke`: prove the serving path end to end in a minute: provision the base model, start vLLM's
OpenAI-compatible server on it, ask one chat question through the `openai` client, print the answer, and
shut the server down. (The full story - refresh, watch, adapt, gate, promote - is `make demo`.)
"""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("smoke", help="serving smoke test: base model -> vLLM -> one answer -> shut down")
    p.add_argument("--question", default="In one sentence, what is a knowledge base used for in customer support?",
                   help="question to ask the served model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from past.config import load_settings
    from past.models import resolve_model
    from past.serving import ask, serve_or_connect

    s = load_settings()
    t0 = time.monotonic()
    print(f"[1/3] base model: {s.base_model}", flush=True)
    model_dir = resolve_model(s.base_model, s.models_dir)
    print(f"      ready at {model_dir} ({time.monotonic() - t0:.0f}s)", flush=True)
    print("[2/3] starting the OpenAI-compatible server (vLLM; ~30-60 s on CPU)...", flush=True)
    t1 = time.monotonic()
    with serve_or_connect(model_dir, f"{s.base_model}", s) as endpoint:
        print(f"      serving {endpoint.model} at {endpoint.base_url} ({time.monotonic() - t1:.0f}s)", flush=True)
        print(f"[3/3] Q: {args.question}", flush=True)
        answer = ask(endpoint, args.question, max_tokens=96)
        print(f"      A: {answer}", flush=True)
    print(f"done in {time.monotonic() - t0:.0f}s; server stopped.")
    return 0 if answer else 1
