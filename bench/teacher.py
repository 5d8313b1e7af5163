"""Which built-in teacher? The candidates on the synthetic support domain, measured side by side.

For each teacher, over the same documents (the demo's target domain, documents only):
- valid QA rate: usable QA pairs / pairs requested (a reply that is not the requested JSON yields none);
- supported rate: QA whose answer appears in the document (normalised containment, or token-F1 ≥ 0.6
  against some sentence of it) - an unsupported answer teaches the model something the corpus never said;
- duplicate rate: repeated questions / all questions;
- seconds per document (server start-up reported apart).

    flock -x /tmp/past-cpu.lock .venv/bin/python bench/teacher.py --docs 10 --json .bench/teacher.json

Teachers: `extractive` (past.teacher), `self` (SmolLM2-135M-Instruct served by vLLM, the JSON prompt of
past.qa), and `--extra-model DIR` for any other model folder (e.g. the Gemma 3 270M conversion in
docs/BENCHMARKS.md, "Teacher candidates").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from past.config import load_settings  # noqa: E402
from past.corpus import load_corpus  # noqa: E402
from past.models import resolve_model  # noqa: E402
from past.qa import QAGenConfig, generate  # noqa: E402
from past.scoring import contains, token_f1  # noqa: E402
from past.serving import serve_or_connect  # noqa: E402
from past.synthetic import make_domains, write_corpus  # noqa: E402
from past.teacher import extractive_generate, sentences  # noqa: E402


def quality(result, docs, cfg: QAGenConfig) -> dict:
    by_id = {d.id: d for d in docs}
    supported = 0
    for p in result.qa:
        d = by_id[p.doc_id]
        if contains(d.text, p.answer) or any(token_f1(p.answer, s) >= 0.6 or contains(s, p.answer)
                                             for s in sentences(d.text)):
            supported += 1
    qs = [p.question.strip().lower() for p in result.qa]
    n = len(result.qa)
    return {"qa": n, "requested": cfg.n_qa * len(docs), "valid_rate": round(n / max(cfg.n_qa * len(docs), 1), 3),
            "supported_rate": round(supported / n, 3) if n else 0.0,
            "duplicate_rate": round(1 - len(set(qs)) / n, 3) if n else 0.0,
            "implications": sum(len(v) for v in result.implications.values()),
            "malformed_replies": result.stats.malformed_responses, "failed_documents": result.stats.failed_documents,
            "examples": [dataclasses.asdict(p) for p in result.qa[:3]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-qa", type=int, default=8)
    ap.add_argument("--extra-model", type=Path, default=None, help="another model folder to serve as teacher")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    s = load_settings()
    cfg = QAGenConfig(n_qa=a.n_qa, n_implications=a.n_qa, max_tokens=768)
    _, target = make_domains(a.seed, n_source=2, n_target=a.docs)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        docs = load_corpus(write_corpus(target, Path(tmp) / "c", rewrites=3, qa_kinds=())).documents
        t0 = time.perf_counter()
        res = extractive_generate(docs, cfg)
        rows["extractive"] = quality(res, docs, cfg) | {"s_per_doc": round((time.perf_counter() - t0) / len(docs), 4),
                                                         "startup_s": 0.0}
        models = {"self (SmolLM2-135M, vLLM)": resolve_model(s.base_model, s.models_dir)}
        if a.extra_model:
            models[f"{a.extra_model.name} (vLLM)"] = a.extra_model
        for name, folder in models.items():
            t0 = time.perf_counter()
            with serve_or_connect(folder, "teacher", s) as ep:
                t1 = time.perf_counter()
                res = generate(docs, ep, Path(tmp) / "cache" / name.split()[0], cfg, progress=False)
                t2 = time.perf_counter()
            rows[name] = quality(res, docs, cfg) | {"s_per_doc": round((t2 - t1) / len(docs), 3),
                                                     "startup_s": round(t1 - t0, 1)}
    print(f"| teacher | valid QA rate | supported | duplicates | s/doc | start-up s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['valid_rate']:.3f} ({r['qa']}/{r['requested']}) | {r['supported_rate']:.3f} | "
              f"{r['duplicate_rate']:.3f} | {r['s_per_doc']} | {r['startup_s']} |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
