"""Gate throughput: questions/s through a vLLM server with concurrent requests vs transformers `generate`, one
question at a time and batched, on the same model, the same items, greedy, the same max new tokens - side by
side in one run.

Server start-up and model load are excluded from throughput and reported separately. Run it alone:

    flock -x /tmp/past-cpu.lock .venv/bin/python bench/gate_throughput.py \\
        --model .past/models/smollm2-135m-instruct --items 48 --concurrency 8 --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from past.config import load_settings
from past.evaluation import EvalItem, answer_all, general_prompts
from past.serving import VLLMServer

CAPITALS = [("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Greece", "Athens"), ("Egypt", "Cairo"),
            ("Canada", "Ottawa"), ("Norway", "Oslo"), ("Poland", "Warsaw"), ("Ireland", "Dublin"),
            ("Sweden", "Stockholm"), ("Russia", "Moscow"), ("China", "Beijing"), ("Kenya", "Nairobi")]


def bench_items(n: int) -> list[EvalItem]:
    """The general prompts, then capitals and sums, cut to n (deterministic)."""
    items = general_prompts()
    items += [EvalItem(f"cap-{c}", f"What is the capital of {c}? Answer with one word.", a, kind="general")
              for c, a in CAPITALS]
    k = 0
    while len(items) < n:
        a, b = 3 + k, 11 + 2 * k
        items.append(EvalItem(f"sum-{k}", f"What is {a} + {b}? Answer with the number only.", str(a + b),
                              kind="general"))
        k += 1
    return items[:n]


def run_vllm(model: Path, items: list[EvalItem], settings, log_dir: Path) -> dict:
    t0 = time.perf_counter()
    server = VLLMServer(model, "bench", python=settings.serve_python, max_model_len=settings.serve_max_model_len,
                        startup_timeout_s=settings.serve_startup_timeout_s, log_path=log_dir / "vllm-bench.log")
    with server as ep:
        start_s = time.perf_counter() - t0
        answer_all(ep, items[:2], settings, progress=False)  # warm-up (first request compiles/allocates)
        t1 = time.perf_counter()
        res = answer_all(ep, items, settings)
        eval_s = time.perf_counter() - t1
    errors = sum(r.error is not None for r in res)
    return {"startup_s": start_s, "eval_s": eval_s, "qps": len(items) / eval_s, "errors": errors,
            "answers": [r.answer or "" for r in res]}


def run_transformers(model: Path, items: list[EvalItem], max_tokens: int) -> dict:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0

    def gen(q: str) -> str:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = lm.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    gen(items[0].question)  # warm-up, as for vLLM
    t1 = time.perf_counter()
    answers = [gen(i.question) for i in tqdm(items, desc="transformers generate", unit="q", leave=False)]
    eval_s = time.perf_counter() - t1
    return {"load_s": load_s, "eval_s": eval_s, "qps": len(items) / eval_s, "answers": answers}


def run_transformers_batched(model: Path, items: list[EvalItem], max_tokens: int, batch_size: int) -> dict:
    """transformers `generate` on batches of `batch_size` questions (left padding, similar lengths together)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from method import generate_batched, load_for_generation

    t0 = time.perf_counter()
    tok, lm = load_for_generation(model)
    load_s = time.perf_counter() - t0
    generate_batched(tok, lm, [items[0].question], max_tokens, 1)  # warm-up, as for the other paths
    t1 = time.perf_counter()
    answers = generate_batched(tok, lm, [i.question for i in items], max_tokens, batch_size)
    eval_s = time.perf_counter() - t1
    return {"load_s": load_s, "eval_s": eval_s, "qps": len(items) / eval_s, "batch_size": batch_size,
            "answers": answers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path(".past/models/smollm2-135m-instruct"), help="model folder")
    ap.add_argument("--items", type=int, default=48, help="number of questions")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent requests to vLLM")
    ap.add_argument("--max-tokens", type=int, default=64, help="max new tokens per answer (both sides)")
    ap.add_argument("--hf-batch", type=int, default=0, help="batch of the batched transformers path (0 = all items)")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = ap.parse_args()

    s = load_settings(gate_concurrency=args.concurrency, gate_max_tokens=args.max_tokens, gate_request_timeout_s=600.0)
    items = bench_items(args.items)
    v = run_vllm(args.model.resolve(), items, s, s.home / "logs")
    t = run_transformers(args.model.resolve(), items, args.max_tokens)
    b = run_transformers_batched(args.model.resolve(), items, args.max_tokens, args.hf_batch or len(items))
    same = sum(a == b for a, b in zip(v["answers"], t["answers"])) / len(items)

    print(f"\ngate throughput, {len(items)} questions, greedy, max_tokens={args.max_tokens}, model {args.model.name}")
    print(f"{'path':38s} {'q/s':>8s} {'eval s':>8s} {'setup s':>8s}")
    print(f"{'vLLM server, concurrency ' + str(args.concurrency):38s} {v['qps']:8.2f} {v['eval_s']:8.1f} "
          f"{v['startup_s']:8.1f}  (setup = server start-up)")
    print(f"{'transformers generate, sequential':38s} {t['qps']:8.2f} {t['eval_s']:8.1f} {t['load_s']:8.1f}"
          f"  (setup = model load)")
    print(f"{'transformers generate, batch ' + str(b['batch_size']):38s} {b['qps']:8.2f} {b['eval_s']:8.1f} "
          f"{b['load_s']:8.1f}  (setup = model load)")
    print(f"ratio vLLM / transformers sequential: {v['qps'] / t['qps']:.2f}x   vLLM / transformers batched: "
          f"{v['qps'] / b['qps']:.2f}x   identical answers (vLLM vs sequential): {same:.0%}   "
          f"vLLM request errors: {v['errors']}")
    if args.out:
        args.out.write_text(json.dumps({"items": len(items), "concurrency": args.concurrency,
                                        "max_tokens": args.max_tokens, "vllm": v, "transformers": t,
                                        "transformers_batched": b, "ratio": v["qps"] / t["qps"],
                                        "ratio_batched": v["qps"] / b["qps"], "identical": same}, indent=2))


if __name__ == "__main__":
    main()
