"""Closed-book recall in-process: ask a model questions through its chat template, greedy, batched.

Used for the training check after SFT (does the model answer its own training questions?) and for the
demo's base / SFT / SFT + λ·v comparison. It is not the gate: the gate asks the candidate through the
OpenAI-compatible server it will be deployed behind (vLLM). Greedy decoding in transformers and in vLLM
can differ on near-ties, so the two are close but not bit-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from past.corpus import QAPair
from past.scoring import is_correct
from past.stats import wilson


def answers(model, tokenizer, questions: list[str], max_new_tokens: int = 32, batch_size: int = 16) -> list[str]:
    """Greedy chat answers to single-turn `questions`."""
    return replies(model, tokenizer, [[{"role": "user", "content": q}] for q in questions], max_new_tokens, batch_size)


def replies(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 32,
            batch_size: int = 16) -> list[str]:
    """Greedy next assistant turn of each chat (left-padded batches; the model is put in eval mode)."""
    import torch

    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for i in range(0, len(conversations), batch_size):
            prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                       for c in conversations[i:i + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            out += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def recall(model, tokenizer, pairs: list[QAPair], max_new_tokens: int = 32, confidence: float = 0.95,
           score: Callable[[str, QAPair], bool] | None = None) -> dict:
    """Share of `pairs` answered correctly, with its Wilson interval. `score(answer, pair)` decides an answer;
    by default `past.scoring.is_correct` against the pair's reference."""
    if not pairs:
        return {"n": 0, "correct": 0, "accuracy": None, "lower": None, "upper": None, "examples": []}
    got = answers(model, tokenizer, [p.question for p in pairs], max_new_tokens)
    score = score or (lambda a, p: is_correct(a, p.answer))
    ok = [bool(score(a, p)) for a, p in zip(got, pairs)]
    ci = wilson(sum(ok), len(ok), confidence)
    return {"n": len(ok), "correct": sum(ok), "accuracy": round(ci.estimate, 4), "lower": round(ci.lower, 4),
            "upper": round(ci.upper, 4),
            "examples": [{"question": p.question, "reference": p.answer, "answer": a, "correct": c}
                         for p, a, c in list(zip(pairs, got, ok))[:5]]}


def recall_of_folder(model_dir: Path, pairs: list[QAPair], max_new_tokens: int = 32) -> dict:
    """`recall` for a model folder on disk (fp32 on CPU, bf16-free)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return recall(model, tok, pairs, max_new_tokens)
