"""Long documents (the paper's LooGLE row in miniature): recall by depth, TRL's truncating packing vs our windows.

Two made-up field manuals of ~5k and ~10k tokens (past.synthetic.long_document: one fact per sentence, each
with its depth = position / length). Stage 1 memorizes the manuals, either the way it did before
(`{"text": manual}` rows, TRL `packing=True`: every text longer than max_length is truncated, the overflow
dropped) or through `past.chunking` windows (every token trained). Stage 2 then teaches the answer format on
completion questions about *other* facts of the same manuals; the measured facts are never asked in
training. Recall (closed-book, greedy, `past.scoring.is_correct`) is reported by depth bin, for the base
model and both arms, with the same recipe, steps per epoch following from what each arm trains.

    flock -x /tmp/past-cpu.lock .venv/bin/python bench/longdoc.py --json .bench/longdoc.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from past.config import load_settings  # noqa: E402
from past.corpus import QAPair, load_corpus  # noqa: E402
from past.models import resolve_model  # noqa: E402
from past.recall import answers  # noqa: E402
from past.scoring import is_correct  # noqa: E402
from past.sft import SFTRecipe, memorize_rows, qa_examples, train_stage  # noqa: E402
from past.stats import wilson  # noqa: E402
from past.synthetic import long_document  # noqa: E402

BINS = [(0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.01)]


def question(title: str, cue: str) -> str:
    return f'From "{title}": how does this sentence end? "{cue} ..."'


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sections", type=int, nargs="+", default=[20, 40], help="sections per manual (~254 tokens each: ~5k and ~10k tokens)")
    ap.add_argument("--eval-per-bin", type=int, default=6)
    ap.add_argument("--train-qa", type=int, default=48, help="training completion questions per manual")
    ap.add_argument("--epochs-memorize", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--min-steps-qa", type=int, default=60)
    ap.add_argument("--batch-memorize", type=int, default=None, help="stage-1 batch (default: the setting, 1)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch

    s = load_settings()
    base = resolve_model(s.base_model, s.models_dir)
    tok = AutoTokenizer.from_pretrained(base)
    rng = random.Random(a.seed)
    recipe = SFTRecipe.from_settings(s, lr_memorize=a.lr, lr_qa=a.lr, epochs_memorize=a.epochs_memorize,
                                     min_steps_qa=a.min_steps_qa, save_steps=10_000, check_train_qa=0,
                                     batch_size_memorize=a.batch_memorize)
    out: dict = {"args": {k: str(v) for k, v in vars(a).items()}, "manuals": [], "arms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        corpus_dir = Path(tmp) / "corpus"
        corpus_dir.mkdir()
        train_qa, eval_items = [], []
        for i, n_sec in enumerate(a.sections):
            name = ["Orrin", "Calyx", "Brisco"][i]
            text, facts = long_document(a.seed, name, n_sec)
            (corpus_dir / f"{name.lower()}.md").write_text(text + "\n")
            title = f"{name} Field Manual"
            held = []
            for lo, hi in BINS:
                pool = [f for f in facts if lo <= f["depth"] < hi]
                held += rng.sample(pool, min(a.eval_per_bin, len(pool)))
            held_ids = {f["unit"] for f in held}
            rest = [f for f in facts if f["unit"] not in held_ids]
            for f in rng.sample(rest, min(a.train_qa, len(rest))):
                train_qa.append(QAPair(f["unit"], question(title, f["cue"]), f["answer"], name.lower()))
            eval_items += [f | {"question": question(title, f["cue"]), "manual": name} for f in held]
            out["manuals"].append({"name": name, "tokens": len(tok(text)["input_ids"]), "facts": len(facts)})
        corpus = load_corpus(corpus_dir)
        rows_win, cover = memorize_rows(corpus, tok, recipe.max_length, min(recipe.chunk_overlap, recipe.max_length // 4))
        rows_trunc = [{"text": d.text} for d in corpus.documents]  # what stage 1 trained before this change
        out["coverage_windows"] = cover
        out["coverage_truncated"] = round(sum(min(m["tokens"], recipe.max_length - 1) for m in out["manuals"])
                                          / sum(m["tokens"] for m in out["manuals"]), 4)
        arms = {"base": None, "truncated (TRL packing)": rows_trunc, "windows (past.chunking)": rows_win}
        for arm, rows in arms.items():
            t0 = time.perf_counter()
            model_dir, m1, m2 = base, None, None
            if rows is not None:
                d = Path(tmp) / arm.split()[0]
                m1 = train_stage("memorize", base, rows, recipe, d / "s1", d / "s1-model", recipe.epochs_memorize,
                                 recipe.lr_memorize, -1, packing=True, progress=False,
                                 batch_size=recipe.batch_size_memorize)  # as run_memorize trains stage 1
                m2 = train_stage("qa", d / "s1-model", qa_examples(train_qa), recipe, d / "s2", d / "s2-model",
                                 recipe.epochs_qa, recipe.lr_qa, -1, packing=False, progress=False,
                                 min_steps=recipe.min_steps_qa)
                model_dir = d / "s2-model"
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            got = answers(model, AutoTokenizer.from_pretrained(model_dir), [e["question"] for e in eval_items])
            ok = [is_correct(g, e["answer"]) for g, e in zip(got, eval_items)]
            by_bin = []
            for lo, hi in BINS:
                sel = [c for c, e in zip(ok, eval_items) if lo <= e["depth"] < hi]
                ci = wilson(sum(sel), len(sel))
                by_bin.append({"bin": f"{lo:.0%}-{min(hi, 1):.0%}", "n": len(sel), "correct": sum(sel),
                               "recall": round(ci.estimate, 3), "lower": round(ci.lower, 3), "upper": round(ci.upper, 3)})
            out["arms"][arm] = {"by_depth": by_bin, "overall": round(sum(ok) / len(ok), 3),
                                "memorize_steps": m1 and m1["steps"], "memorize_tokens": m1 and m1["tokens"],
                                "qa_steps": m2 and m2["steps"], "wall_s": round(time.perf_counter() - t0, 1),
                                "examples": [{"q": e["question"], "ref": e["answer"], "got": g}
                                             for g, e in list(zip(got, eval_items))[:3]]}
            print(arm, json.dumps(out["arms"][arm]["by_depth"]), flush=True)
    print("| depth | " + " | ".join(out["arms"]) + " |")
    print("|---|" + "---:|" * len(out["arms"]))
    for i, (lo, hi) in enumerate(BINS):
        cells = [f"{r['by_depth'][i]['correct']}/{r['by_depth'][i]['n']} = {r['by_depth'][i]['recall']:.2f}"
                 for r in out["arms"].values()]
        print(f"| {out['arms']['base']['by_depth'][i]['bin']} | " + " | ".join(cells) + " |")
    print(json.dumps({k: out[k] for k in ("manuals", "coverage_windows", "coverage_truncated")}))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
