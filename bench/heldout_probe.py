"""Where does held-out recall get lost? The same held-out facts asked two ways, per model folder.

The knowledge bench (bench/knowledge.py) finds that a 135M model that has memorized its documents (stage-1
loss 0.03) still answers few held-out questions about them. This probe separates two explanations:

- the fact is not in the weights: then the model cannot continue the document's own sentence either;
- the fact is in the weights but the chat-format question does not reach it: then the *raw* sentence prefix
  (no chat template, as stage 1 saw it) is completed correctly while the chat question is not.

For every held-out item of the bench's split (same teacher, same seed, same split as bench/knowledge.py) it
asks (a) the chat question, as the gate does, and (b) the sentence prefix as plain text. It also marks whether
the held-out item's *fact* (same document, same answer) is trained under another sentence.

    .venv/bin/python bench/heldout_probe.py --model DIR [--model DIR ...] --domain source --seed 0 --json out.json
    .venv/bin/python bench/heldout_probe.py --domain target --n-source 8 --seed 1   # the demo's split, no model
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from past.config import load_settings  # noqa: E402
from past.corpus import load_corpus, read_qa_jsonl, split_qa  # noqa: E402
from past.recall import answers  # noqa: E402
from past.scoring import is_correct  # noqa: E402
from past.stats import wilson  # noqa: E402
from past.synthetic import make_domains, write_corpus  # noqa: E402
from past.teacher import teach_corpus  # noqa: E402

PREFIX = re.compile(r'end\? "(.*) \.\.\."$')


def completions(model, tok, prefixes: list[str], max_new_tokens: int = 12) -> list[str]:
    """Greedy plain-text continuations (no chat template), left-padded."""
    import torch

    tok.padding_side = "left"
    out = []
    for i in range(0, len(prefixes), 16):
        enc = tok(prefixes[i:i + 16], return_tensors="pt", padding=True)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
        out += [t.strip() for t in tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    return out


def rate(ok: list[bool]) -> str:
    ci = wilson(sum(ok), len(ok))
    return f"{sum(ok)}/{len(ok)} = {ci.estimate:.3f} [{ci.lower:.3f}, {ci.upper:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, action="append", default=[],
                    help="model folder to probe (repeatable); none: only count the split's shared facts")
    ap.add_argument("--domain", choices=["source", "target"], default="source")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--products", type=int, default=10)
    ap.add_argument("--n-source", type=int, default=None, help="source products if not --products (the demo: 8)")
    ap.add_argument("--n-qa", type=int, default=8)
    ap.add_argument("--eval-fraction", type=float, default=0.3)
    ap.add_argument("--split-by", choices=["document", "question", "fact"], default="question")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = load_settings(teacher_n_qa=a.n_qa)
    src, tgt = make_domains(a.seed, n_source=a.n_source or a.products, n_target=a.products)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = load_corpus(write_corpus(src if a.domain == "source" else tgt, Path(tmp) / "c", rewrites=3, qa_kinds=()))
        qa = read_qa_jsonl(Path(teach_corpus(s, corpus, Path(tmp) / "t")["path"]) / "qa.jsonl")
    train, held = split_qa(qa, a.eval_fraction, a.seed, a.split_by)
    trained_facts = {(p.doc_id, p.answer) for p in train}
    prefixes = [PREFIX.search(p.question).group(1) for p in held]
    shared = [(p.doc_id, p.answer) in trained_facts for p in held]
    out = {"args": {k: str(v) for k, v in vars(a).items()}, "n_heldout": len(held),
           "heldout_fact_trained_elsewhere": sum(shared), "models": {}}
    print(f"{len(held)} held-out items; {sum(shared)} of them state a fact that a training question also asks")
    for folder in a.model:
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        chat = [is_correct(x, p.answer) for x, p in zip(answers(model, tok, [p.question for p in held]), held)]
        raw_txt = completions(model, tok, prefixes)
        raw = [is_correct(x, p.answer) for x, p in zip(raw_txt, held)]
        split = {"fact trained elsewhere": [i for i, f in enumerate(shared) if f],
                 "fact only in documents": [i for i, f in enumerate(shared) if not f]}
        row = {"chat": rate(chat), "raw_prefix": rate(raw),
               "by_fact": {k: {"chat": rate([chat[i] for i in ix]), "raw_prefix": rate([raw[i] for i in ix])}
                           for k, ix in split.items() if ix},
               "raw_examples": [{"prefix": q, "reference": p.answer, "completion": c}
                                for q, p, c in list(zip(prefixes, held, raw_txt))[:6]]}
        out["models"][str(folder)] = row
        print(f"{folder}: chat {row['chat']}; raw prefix {row['raw_prefix']}")
        for k, v in row["by_fact"].items():
            print(f"    {k:<24} chat {v['chat']}; raw {v['raw_prefix']}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
