"""Rehearsal against forgetting: the base model's own answers to general prompts, mixed into stage 2.

Measured on SmolLM2-135M (docs/BENCHMARKS.md): two-stage SFT that makes the model recall a corpus also
turned it from 15 of 20 general prompts to 1 of 20 - stage 2 teaches "answer with a short value", and the
model answers "What is 2 + 2?" with 6. The usual cure is replay of general data; with no dataset to ship we
use self-synthesized rehearsal (Huang et al., 2024, "Mitigating catastrophic forgetting in large language
models with self-synthesized rehearsal"): before stage 2, the base model answers a fixed set of general
prompts (greedy, `past/data/replay_prompts.jsonl`), and those prompt/answer pairs are trained alongside the
corpus's QA. The targets are the base model's own outputs, so rehearsal can only preserve what the base did,
never teach it something new; the prompts share no item with the gate's general prompts
(`past/data/general_prompts.jsonl`, checked in a test), so the gate still measures held-out general ability.

The prompt file is append-only: `replay_examples` = N takes the first N, and a stage-2 run key names N, not the
prompts, so rewriting an early prompt would silently change what an existing key means (a test pins the first 48,
the default). Stage 1 keys on the pairs themselves (`replay_memorize`).
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

REPLAY_VERSION = 1  # bump when the prompts or the generation change: it is part of the cache key


def replay_prompts() -> list[str]:
    """The shipped rehearsal prompts, in file order."""
    with resources.as_file(resources.files("past") / "data" / "replay_prompts.jsonl") as p:
        return [json.loads(line)["prompt"] for line in p.read_text().splitlines() if line.strip()]


def replay_pairs(base_model: Path, n: int, max_new_tokens: int, cache_dir: Path) -> list[dict]:
    """[{"prompt", "answer"}] for the first `n` prompts, answered greedily by `base_model`; cached by content.

    Empty answers are left out (nothing to rehearse). The cache file is written once, atomically."""
    from past.models import model_id

    prompts = replay_prompts()[:n]
    if not prompts:
        return []
    key = hashlib.sha256(json.dumps({"v": REPLAY_VERSION, "model": model_id(base_model), "prompts": prompts,
                                     "max_new_tokens": max_new_tokens}).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"replay-{key}.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from past.recall import answers

    tok = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    got = answers(model, tok, prompts, max_new_tokens=max_new_tokens)
    pairs = [{"prompt": q, "answer": a} for q, a in zip(prompts, got) if a.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    os.replace(tmp, path)
    return pairs
