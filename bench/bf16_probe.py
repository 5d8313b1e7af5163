"""Does this CPU run bf16 faster than fp32? One forward + backward of the base model over 32 × 86 tokens (the
refresh's GRPO batch) and one sampled `generate` of 24 tokens for 32 prompts of 62 tokens, in fp32 and under
`torch.autocast("cpu", torch.bfloat16)`, two repeats each (forward/backward: median of 3 inside a repeat).

    flock -x /tmp/past-cpu.lock .venv/bin/python bench/bf16_probe.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.method import BASE  # noqa: E402


def train_step(m, x, bf16: bool) -> tuple[float, float]:
    times = []
    for _ in range(3):
        m.zero_grad()
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = m(x, labels=x)
        t1 = time.perf_counter()
        out.loss.backward()
        times.append((t1 - t, time.perf_counter() - t1))
    return sorted(times)[1]


def sample(m, bf16: bool) -> float:
    x = torch.randint(100, 1000, (32, 62))
    t = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, min_new_tokens=24, do_sample=True,
                   temperature=0.7, pad_token_id=0)
    return time.perf_counter() - t


def main() -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"oneDNN bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    m = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    x = torch.randint(0, 1000, (32, 86))
    for repeat in (1, 2):
        for bf16 in (False, True):
            fwd, bwd = train_step(m, x, bf16)
            print(f"repeat {repeat} {'bf16' if bf16 else 'fp32'}: forward {fwd:.2f} s, backward {bwd:.2f} s, "
                  f"generate {sample(m.eval(), bf16):.2f} s", flush=True)
            m.train()


if __name__ == "__main__":
    main()
