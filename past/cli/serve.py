"""`past serve NAME`: one stable OpenAI-compatible endpoint on the champion of NAME, rolled on promotion."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve the champion of a registered model on a stable endpoint; roll on promotion",
        description="Foreground; Ctrl-C or SIGTERM stops it and every vLLM server it started. Clients use "
        "base_url http://HOST:PORT/v1 and model NAME (or NAME/VERSION). When the champion alias moves, the "
        "new version is started, health-checked and asked once before it takes traffic; the old one is "
        "drained, then stopped. The eval gate asks this endpoint for the champion's answers.")
    p.add_argument("name", help="registered model name (e.g. support-bot)")
    p.add_argument("--host", default="127.0.0.1", help="address the front listens on")
    p.add_argument("--port", type=int, default=8000, help="port the front listens on")
    p.add_argument("--poll-s", type=float, default=30.0, help="seconds between checks of the champion alias")
    p.add_argument("--drain-s", type=float, default=60.0,
                   help="longest wait for requests in flight on the old version before it is stopped")
    p.add_argument("--retry-s", type=float, default=300.0, help="back-off before retrying a version that failed to start")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from past.champion_serve import ChampionFront, registry_resolver
    from past.config import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per forwarded request
    s = load_settings()
    front = ChampionFront(args.name, registry_resolver(s, args.name), s, host=args.host, port=args.port,
                          poll_s=args.poll_s, drain_s=args.drain_s, retry_s=args.retry_s)
    print(f"serving the champion of {args.name} at {front.url} (model {args.name!r}); Ctrl-C stops", flush=True)
    front.run()
    return 0
