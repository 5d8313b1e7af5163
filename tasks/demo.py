"""Demo tasks: make fictional support-bot domains, and drop a corpus into the inbox as a producer would."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prefect import task

from past.evalsets import evalset_path
from past.inbox import READY_MARKER
from past.review import gate_summary, review
from past.synthetic import make_domains, write_corpus
from tasks.common import ACCELERATOR_TAG, cached, settings
from tasks.training import sft_recipe


@task(persist_result=True)
def make_demo_corpora(seed: int, n_source: int, n_target: int) -> dict:
    """A source domain (for the skill refresh) and a target domain (the new knowledge), no shared entities."""
    root = Path(settings().home) / "demo" / f"seed{seed}"
    source, target = make_domains(seed, n_source=n_source, n_target=n_target)
    paths = {}
    for name, domain in (("source", source), ("target", target)):
        path = root / name
        if not path.exists():
            tmp = root / f".tmp-{name}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            # the source ships QA (the refresh trains on it); the new corpus arrives as documents only, the
            # most common case for a support bot: adapt's teacher writes its QA
            write_corpus(domain, tmp, rewrites=3, qa_kinds=("train",) if name == "source" else ())
            os.replace(tmp, path)
        paths[name] = str(path)
    return paths


@task
def drop_into_inbox(corpus_dir: str, name: str) -> str:
    """Copy a corpus into the inbox the way producers should: hidden temp name, rename, `.ready` marker."""
    inbox = Path(settings().home) / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    tmp, final = inbox / f".{name}.uploading", inbox / name
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(corpus_dir, tmp)
    (tmp / READY_MARKER).touch()
    os.replace(tmp, final)
    return str(final)


@task(cache_policy=cached(), persist_result=True, tags=[ACCELERATOR_TAG])
def compare_on_new_corpus(corpus_id: str, models: dict[str, str]) -> dict[str, dict]:
    """Closed-book recall of each model on the gate's new-corpus items (transformers, in-process)."""
    from past.corpus import read_qa_jsonl
    from past.recall import recall_of_folder

    items = read_qa_jsonl(evalset_path(settings().home, corpus_id))
    return {name: recall_of_folder(Path(path), items) for name, path in models.items()}


@task
def summarize_demo(skill: dict, watched: dict, timings: dict, model_name: str,
                   comparison: dict[str, dict] | None = None) -> str:
    """The closing summary: skill vector, adaptation verdicts, the champion's gate scores, where to look."""
    s = settings()
    lines = ["", "=" * 78, "PaST demo summary", "=" * 78,
             f"skill vector: version {skill['skill_vector_version']} at {skill['path']}"]
    for i, (first, last) in enumerate(skill["reward_first_last"], 1):
        lines.append(f"  round {i}: GRPO mean reward {first[0] if first else float('nan'):.3f} -> "
                     f"{last[0] if last else float('nan'):.3f}")
    for run in watched["started"]:
        lines.append(f"adapted corpus {run['corpus_id'][:12]} -> {model_name} v{run['version']}: "
                     f"{'PROMOTED' if run['promoted'] else 'rejected'}")
        r = run["result"]
        lines.append(f"  teacher: {r['teacher']}; training check (own training QA, closed-book): "
                     + (f"{r['training_check']['correct']}/{r['training_check']['n']}" if r.get("training_check") else "off"))
        lines.append(f"  reason: {r['reason']}")
    split_by = sft_recipe().split_by
    unit = {"fact": "questions worded unlike any training question, about facts the training QA also asks",
            "question": "questions not trained on, about trained documents",
            "document": "questions about documents whose QA was never trained"}[split_by]
    if comparison:
        lines.append(f"  new-corpus items (split by {split_by}): {unit}")
    for name, rec in (comparison or {}).items():
        lines.append(f"  new-corpus recall, {name:<16} {rec['correct']:>3}/{rec['n']:<3} = {rec['accuracy']:.3f} "
                     f"[{rec['lower']:.3f}, {rec['upper']:.3f}] (95% Wilson; transformers greedy)")
    if not watched["started"]:
        lines.append("no new corpus this time (the target corpus was adapted before: duplicate content)")
    lines += gate_summary(s, model_name)
    lines.append("what a reviewer finds in MLflow (`past review`):")
    lines += [f"  {'ok  ' if f.ok else 'FAIL'} {f.check}: {f.detail}" for f in review(s, model_name)]
    lines += [f"wall time: refresh {timings['refresh']:.0f}s, adapt {timings['adapt']:.0f}s, total {timings['total']:.0f}s",
              f"MLflow (runs, versions, gate tables): `.venv/bin/past ui` -> http://127.0.0.1:5000  [{s.mlflow_uri}]",
              "Prefect (flow runs, artifacts): `.venv/bin/past up` -> http://127.0.0.1:4200", "=" * 78]
    return "\n".join(lines)
