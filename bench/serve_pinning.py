"""Can a second vLLM CPU engine start beside a loaded first one? (why `past serve` unpins its servers)

    flock -x /tmp/past-cpu.lock .venv/bin/python bench/serve_pinning.py MODEL_A MODEL_B --pause 0.5 [--bind nobind]

Starts server A on MODEL_A, asks it one 2-token question every `--pause` seconds from a thread, and starts
server B on MODEL_B meanwhile with `VLLM_CPU_OMP_THREADS_BIND=--bind` (vLLM's default is `auto`, which pins
each engine's OpenMP threads to the same cores). Prints B's start-up time, or that it timed out.
Tiny models do: `.venv/bin/past model tiny --out DIR --seed N`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from past.serving import ServingError, VLLMServer, ask  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_a", type=Path)
    ap.add_argument("model_b", type=Path)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between the client's requests to A")
    ap.add_argument("--bind", default="auto", help="VLLM_CPU_OMP_THREADS_BIND for B (auto = vLLM's default)")
    ap.add_argument("--timeout", type=float, default=200.0)
    args = ap.parse_args()
    a = VLLMServer(args.model_a, "a", max_model_len=512, startup_timeout_s=args.timeout, log_path="/tmp/pin-a.log")
    t = time.monotonic()
    ea = a.start()
    print(f"A up in {time.monotonic() - t:.1f} s", flush=True)
    stop, n = threading.Event(), [0]

    def client() -> None:
        while not stop.is_set():
            ask(ea, "hi", max_tokens=2)
            n[0] += 1
            stop.wait(args.pause)

    th = threading.Thread(target=client)
    th.start()
    env = {"VLLM_CPU_OMP_THREADS_BIND": args.bind, "OMP_WAIT_POLICY": "PASSIVE"}
    b = VLLMServer(args.model_b, "b", max_model_len=512, startup_timeout_s=args.timeout, log_path="/tmp/pin-b.log",
                   env=env)
    t = time.monotonic()
    try:
        b.start()
        print(f"B up in {time.monotonic() - t:.1f} s beside A (bind {args.bind}; A answered {n[0]} requests)")
    except ServingError as e:
        print(f"B failed after {time.monotonic() - t:.1f} s (bind {args.bind}): {str(e)[:120]}")
    finally:
        stop.set()
        th.join()
        a.stop()
        b.stop()


if __name__ == "__main__":
    main()
