"""Where do the method benchmark's paraphrase answers come from? A diagnostic over its saved answers.

    .venv/bin/python bench/method_answers.py .past/bench/method        # after bench/method.py has run

Every target paraphrase question asks one attribute (price, warranty, reset hold, status-light color) of one
target product. Each answer is put in exactly one bucket:

    correct          the gate's rule (`past.scoring.is_correct`)
    other target     wrong, but it is the value of that attribute for another *target* product (confusion)
    source only      wrong, it is the value of that attribute for a *source* product and for no target one
                     (source knowledge leaking through the skill vector or the source training)
    other            anything else (a made-up value, off-format text, empty)

The `chance` row is what guessing a random target product's value for the asked attribute would score (values
repeat across products: 8 colors, 7 warranty lengths). Answers are split by whether the product's training QA was in target SFT's stage 2 ("QA-trained") or only in its
documents ("docs only"; the SFT split holds out `eval_fraction` of the documents). Pure reading of
`<out>/seed-S/evals/*.json` plus the seeded domains; it trains and generates nothing.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from past.corpus import load_corpus, split_qa  # noqa: E402
from past.scoring import is_correct, normalize  # noqa: E402
from past.synthetic import TRAIN_ATTRS, make_domains, write_corpus  # noqa: E402

BUCKETS = ("correct", "other target", "source only", "other")


def trained_products(budget: dict, target, seed: int) -> set[str]:
    """Doc ids whose QA target SFT's stage 2 saw: the same split call as `past.sft.run_sft` makes."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus = load_corpus(write_corpus(target, Path(tmp) / "t", rewrites=budget["rewrites"]))
        train, _ = split_qa(corpus.qa, budget["eval_fraction"], seed)
    return {q.doc_id for q in train}


def bucket(answer: str, reference: str, attr: str, target_values: dict, source_values: dict) -> str:
    if is_correct(answer, reference):
        return "correct"
    a = normalize(answer)
    if a in target_values[attr]:
        return "other target"
    if a in source_values[attr]:
        return "source only"
    return "other"


def tally(out: Path) -> dict[str, dict[str, Counter]]:
    """arm -> group ("QA-trained" / "docs only") -> bucket counts, summed over seeds."""
    results = json.loads((out / "results.json").read_text())
    if results["dev"]:
        raise SystemExit("error: a dev run's answers are on dev data; point this at the final run's folder")
    counts: dict[str, dict[str, Counter]] = {}
    for s in results["seeds"]:
        seed = s["seed"]
        source, target = make_domains(seed, results["budget"]["n_source"], results["budget"]["n_target"])
        values = lambda dom: {a: {normalize(p[a]) for p in dom.products.values()} for a in TRAIN_ATTRS}  # noqa: E731
        tv, sv = values(target), values(source)
        trained = trained_products(results["budget"], target, seed)
        para = {r["id"]: r for r in target.qa["paraphrase"]}
        for f in sorted((out / f"seed-{seed}" / "evals").glob("*.json")):
            for it in json.loads(f.read_text())["items"]:
                if it["kind"] != "paraphrase":
                    continue
                q = para[it["id"]]
                attr = TRAIN_ATTRS[int(it["id"].rsplit("-", 1)[1]) % len(TRAIN_ATTRS)]
                group = "QA-trained" if q["doc_id"] in trained else "docs only"
                counts.setdefault(f.stem, {}).setdefault(group, Counter())[bucket(it["answer"], q["answer"], attr, tv, sv)] += 1
                if f.stem == "sft":  # once per question: P(a random target product has the same value)
                    same = sum(normalize(p[attr]) == normalize(q["answer"]) for p in target.products.values())
                    c = counts.setdefault("chance", {}).setdefault(group, Counter())
                    c["correct"] += same / len(target.products)
                    c["other target"] += 1 - same / len(target.products)
    return counts


def table(counts: dict[str, dict[str, Counter]]) -> list[str]:
    rows = ["| arm | products | n | " + " | ".join(BUCKETS) + " |", "|---|---|---:|" + "---:|" * len(BUCKETS)]
    for arm in sorted(counts):
        for group in ("QA-trained", "docs only"):
            c = counts[arm].get(group, Counter())
            n = sum(c.values())
            if n:
                rows.append(f"| {arm} | {group} | {round(n)} | " + " | ".join(f"{c[b] / n:.3f}" for b in BUCKETS) + " |")
    return rows


if __name__ == "__main__":
    print("\n".join(table(tally(Path(sys.argv[1])))))
