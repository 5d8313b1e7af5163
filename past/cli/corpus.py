"""`past corpus validate|split|generate-qa`: check a corpus, split its QA, or have a teacher write QA."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="validate corpora, split QA, generate QA with a teacher",
                       description="Corpus format and validation codes: docs/corpus.md.")
    csub = p.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)

    v = csub.add_parser("validate", help="check a corpus folder or archive (exit 0 = valid, 1 = invalid)",
                        description="Prints every problem as `[code] file: message` (or JSON with --json).")
    v.add_argument("path", type=Path, help="corpus folder or .tar.gz/.tgz/.tar/.zip archive")
    v.add_argument("--json", action="store_true", help="print a machine-readable JSON report")
    v.add_argument("--quarantine", action="store_true",
                   help="move an invalid corpus to <home>/quarantine/<name>-<time>/ with reasons.json")
    v.set_defaults(func=run_validate)

    s = csub.add_parser("split", help="deterministic train/eval QA split (by document, question or fact)",
                        description="Writes train.jsonl, eval.jsonl (id, question, answer, doc_id, corpus_id) "
                        "and split.json into --out.")
    s.add_argument("path", type=Path, help="corpus folder or archive")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--qa", type=Path, default=None, help="QA file to split instead of the corpus's qa.jsonl "
                   "(e.g. from generate-qa)")
    s.add_argument("--eval-fraction", type=float, default=0.2, help="share held out (default 0.2)")
    s.add_argument("--seed", type=int, default=None, help="split seed (default: the seed setting)")
    s.add_argument("--by", choices=["document", "question", "fact"], default=None,
                   help="held-out unit (default: the SFT recipe's split_by, setting sft.split_by); see docs/corpus.md")
    s.set_defaults(func=run_split)

    g = csub.add_parser("generate-qa", help="ask a teacher endpoint for QA pairs and implications per document",
                        description="Writes qa.jsonl, implications.jsonl and stats.json into --out. Results are "
                        "cached in <home>/cache/qa by (document sha256, prompt version, model). Which teacher: "
                        "the `teacher` setting (default auto: the endpoint when teacher_base_url is set, else the "
                        "built-in extractive teacher; `self` serves the base model with vLLM).")
    g.add_argument("path", type=Path, help="corpus folder or archive")
    g.add_argument("--out", type=Path, required=True, help="output folder")
    g.add_argument("--base-url", default=None, help="teacher base URL (default: teacher_base_url setting)")
    g.add_argument("--model", default=None, help="teacher model name (default: teacher_model setting)")
    g.add_argument("--teacher", choices=["auto", "extractive", "endpoint", "self"], default=None,
                   help="which teacher (default: the teacher setting)")
    g.add_argument("--n-qa", type=int, default=None, help="QA pairs per document (default: teacher_n_qa)")
    g.add_argument("--n-implications", type=int, default=None, help="implications per document")
    g.add_argument("--retries", type=int, default=4, help="retries of a failing request")
    g.add_argument("--min-interval", type=float, default=0.0, help="minimum seconds between requests")
    g.set_defaults(func=run_generate)


@contextlib.contextmanager
def opened_corpus(path: Path):
    """A corpus folder for the duration of a command; archives are safely unpacked to a temp folder."""
    from past.corpus import is_archive, materialize

    if not is_archive(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="past-corpus-") as tmp:
        yield materialize(path, Path(tmp) / path.name.split(".")[0])


def run_validate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from past.config import load_settings
    from past.corpus import load_corpus, quarantine, validate

    reasons = validate(args.path)
    report: dict = {"path": str(args.path), "valid": not reasons, "reasons": [asdict(r) for r in reasons]}
    if not reasons:
        with opened_corpus(args.path) as root:
            c = load_corpus(root)
        report |= {"corpus_id": c.id, "documents": len(c.documents), "qa": len(c.qa)}
    elif args.quarantine and (args.path.exists() or args.path.is_symlink()):
        report["quarantined_to"] = str(quarantine(args.path, reasons, load_settings()))
    if args.json:
        print(json.dumps(report, indent=2))
    elif not reasons:
        print(f"{args.path}: valid corpus {report['corpus_id'][:16]} "
              f"({report['documents']} documents, {report['qa']} QA)")
    else:
        for r in reasons:
            print(r, file=sys.stderr)
        print(f"{args.path}: INVALID ({len(reasons)} problem(s))"
              + (f"; quarantined to {report['quarantined_to']}" if "quarantined_to" in report else ""),
              file=sys.stderr)
    return 0 if not reasons else 1


def run_split(args: argparse.Namespace) -> int:
    from past.config import load_settings
    from past.corpus import load_corpus, read_qa_jsonl, write_splits
    from past.sft import SFTRecipe

    st = load_settings()
    seed = args.seed if args.seed is not None else st.seed
    with opened_corpus(args.path) as root:
        corpus = load_corpus(root)
        qa = read_qa_jsonl(args.qa) if args.qa else None
        by = args.by or SFTRecipe.from_settings(st).split_by
        summary = write_splits(corpus, args.out, qa, args.eval_fraction, seed, by)
    print(json.dumps(summary, indent=2))
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from past.config import load_settings
    from past.corpus import load_corpus
    from past.qa import QAGenConfig, write_generated
    from past.teacher import run_teacher

    s = load_settings(teacher_base_url=args.base_url, teacher_model=args.model, teacher=args.teacher)
    cfg = QAGenConfig(n_qa=args.n_qa or s.teacher_n_qa, n_implications=args.n_implications or s.teacher_n_implications,
                      retries=args.retries, min_interval_s=args.min_interval)
    with opened_corpus(args.path) as root:
        corpus = load_corpus(root)
        result, record = run_teacher(s, corpus.documents, cfg, progress=True)
    stats = write_generated(result, args.out)
    print(json.dumps(stats | {"teacher": record["teacher"], "seconds": record["seconds"]}, indent=2))
    return 0
