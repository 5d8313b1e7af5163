"""SFT on the real base model (SmolLM2-135M-Instruct): throughput LoRA vs full, and does it learn the facts?

    flock -x /tmp/past-cpu.lock .venv/bin/python bench/sft.py [--part throughput|accuracy|all] [--json OUT]

throughput: a few stage-1 steps of LoRA and of full fine-tuning, side by side in one process, same packed
data; prints tokens/s of each and the ratio LoRA / full.
accuracy: closed-book accuracy (greedy chat answers, scored with past.scoring) of the base model and of the
two-stage LoRA SFT model on the made-up-facts fixture corpus (tests/data/facts: 10 documents, 30 QA):
on the QA trained in stage 2 and on the held-out QA (documents seen in stage 1, their questions never).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from past.corpus import QAPair, load_corpus, read_qa_jsonl  # noqa: E402
from past.scoring import score_all  # noqa: E402
from past.sft import SFTRecipe, memorize_texts, run_sft, train_stage  # noqa: E402

FACTS = REPO / "tests" / "data" / "facts"
BASE = REPO / ".past" / "models" / "smollm2-135m-instruct"


def answers(model_dir: Path, questions: list[str], max_new_tokens: int = 24, batch: int = 16) -> list[str]:
    """Greedy chat answers, the way the gate asks (one user turn, the model's chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for i in range(0, len(questions), batch):
        prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=False) for q in questions[i:i + batch]]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        out += [tok.decode(g[enc.input_ids.shape[1]:], skip_special_tokens=True).strip() for g in gen]
    return out


def closed_book(model_dir: Path, pairs: list[QAPair]) -> dict:
    """Accuracy = token-F1 ≥ 0.5 (the gate's rule when these figures were taken; it is now `is_correct`, F1 ≥ 0.6);
    EM, contains and mean F1 reported beside it."""
    preds = answers(model_dir, [p.question for p in pairs])
    scores = [score_all(pred, p.answer) for pred, p in zip(preds, pairs)]
    n = max(len(pairs), 1)
    return {"n": len(pairs), "accuracy": sum(s["token_f1"] >= 0.5 for s in scores) / n,
            "exact_match": sum(s["exact_match"] for s in scores) / n,
            "contains": sum(s["contains"] for s in scores) / n,
            "token_f1": sum(s["token_f1"] for s in scores) / n,
            "examples": [{"q": p.question, "ref": p.answer, "pred": pred} for p, pred in list(zip(pairs, preds))[:4]]}


def throughput(steps: int, batch: int, max_length: int) -> dict:
    corpus = load_corpus(FACTS)
    texts = [t for _, _, t in memorize_texts(corpus)] * 8  # enough packed blocks for `steps` full batches
    rows = [{"text": t} for t in texts]
    res = {}
    with tempfile.TemporaryDirectory(prefix="past-bench-sft-") as tmp:
        for name, lora in (("lora", True), ("full", False)):
            recipe = SFTRecipe(use_lora=lora, batch_size=batch, max_length=max_length, save_steps=10_000,
                               lr_memorize=1e-4 if lora else 1e-5)
            m = train_stage(f"bench-{name}", BASE, rows, recipe, Path(tmp) / name, Path(tmp) / f"{name}-model",
                            epochs=1.0, lr=recipe.lr_memorize, max_steps=steps, packing=True, progress=False,
                            save_model=False)
            res[name] = {"steps": m["steps"], "tokens": m["tokens"], "train_runtime_s": round(m["train_runtime_s"], 2),
                         "s_per_step": round(m["train_runtime_s"] / m["steps"], 2), "tokens_per_s": m["tokens_per_s"]}
    res["ratio_lora_over_full"] = round(res["lora"]["tokens_per_s"] / res["full"]["tokens_per_s"], 2)
    return res


def accuracy(recipe: SFTRecipe) -> dict:
    with tempfile.TemporaryDirectory(prefix="past-bench-sft-") as tmp:
        t0 = time.perf_counter()
        m = run_sft(FACTS, Path(tmp) / "model", BASE, recipe, runs_dir=Path(tmp) / "runs", progress=False)
        sft_s = time.perf_counter() - t0
        splits = Path(m["work_dir"]) / "splits"
        train, held = read_qa_jsonl(splits / "train.jsonl"), read_qa_jsonl(splits / "eval.jsonl")
        res = {"recipe": recipe.key(), "sft_wall_s": round(sft_s, 1),
               "memorize": {k: m["memorize"][k] for k in ("steps", "loss_first", "loss_last", "tokens")},
               "qa": {k: m["qa"][k] for k in ("steps", "loss_first", "loss_last", "tokens")}}
        for name, model in (("base", BASE), ("sft", Path(tmp) / "model")):
            res[name] = {"train_qa": closed_book(model, train), "heldout_qa": closed_book(model, held)}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["throughput", "accuracy", "all"], default="all")
    ap.add_argument("--steps", type=int, default=3, help="throughput: optimizer steps per variant")
    ap.add_argument("--batch", type=int, default=4, help="throughput: packed blocks per step")
    ap.add_argument("--max-length", type=int, default=256, help="throughput: tokens per packed block")
    ap.add_argument("--epochs-memorize", type=float, default=30, help="accuracy: stage 1 epochs")
    ap.add_argument("--epochs-qa", type=float, default=10, help="accuracy: stage 2 epochs")
    ap.add_argument("--lr", type=float, default=1e-3, help="accuracy: LoRA learning rate (both stages)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    out: dict = {}
    if args.part in ("throughput", "all"):
        out["throughput"] = throughput(args.steps, args.batch, args.max_length)
        t = out["throughput"]
        print(f"{'variant':8} {'s/step':>8} {'tokens/s':>10}")
        for k in ("lora", "full"):
            print(f"{k:8} {t[k]['s_per_step']:>8} {t[k]['tokens_per_s']:>10}")
        print(f"ratio LoRA/full tokens/s: {t['ratio_lora_over_full']}")
    if args.part in ("accuracy", "all"):
        recipe = SFTRecipe(epochs_memorize=args.epochs_memorize, epochs_qa=args.epochs_qa, lr_memorize=args.lr,
                           lr_qa=args.lr, batch_size=8, max_length=512, save_steps=10_000)
        out["accuracy"] = a = accuracy(recipe)
        print(f"SFT: {a['sft_wall_s']} s; stage 1 loss {a['memorize']['loss_first']:.3f} -> "
              f"{a['memorize']['loss_last']:.3f}; stage 2 loss {a['qa']['loss_first']:.3f} -> {a['qa']['loss_last']:.3f}")
        print(f"{'model':6} {'split':8} {'n':>3} {'acc(F1>=.5)':>12} {'EM':>6} {'contains':>9} {'F1':>6}")
        for model in ("base", "sft"):
            for split in ("train_qa", "heldout_qa"):
                r = a[model][split]
                print(f"{model:6} {split:8} {r['n']:>3} {r['accuracy']:>12.3f} {r['exact_match']:>6.3f} "
                      f"{r['contains']:>9.3f} {r['token_f1']:>6.3f}")
        print(f"ratio: train-QA accuracy sft - base = {a['sft']['train_qa']['accuracy'] - a['base']['train_qa']['accuracy']:+.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
