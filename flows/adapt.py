"""adapt: one new corpus -> a candidate that knows it (SFT) and can use it (skill vector) -> gate -> promote.

    validate corpus T
    QA_T, I_T = teacher(T)                               only when T ships too little QA (cached by content)
    θ_1      = SFT_memorize(θ_base, documents of T + I_T)   long documents as overlapping windows, no token lost
    θ_sft_T  = SFT_qa(θ_1, training QA of T and QA_T)    held-out QA (T's own preferred) is kept for the gate
    θ_final  = θ_sft_T + λ·v                            v = the current skill vector (none yet: θ_sft_T)
    serve θ_final (and the champion) with vLLM; gate on new / retention / general questions
    register θ_final in MLflow; move `champion` only if the gate passed
    notify: a Prefect event past.adapt.<promoted|rejected|failed>, and the webhook when one is set

Idempotent per (corpus, model name, skill vector, λ, base model + SFT recipe (settings + the run's `sft`
overrides) + teacher settings): one content
key names the work folder and a Prefect transaction that records the finished
result, so a re-run returns it without redoing anything; after a crash, cached steps are skipped (eager
commits) and training resumes from its checkpoints. A file lock keeps two runs of one key from overlapping.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.transactions import CommitMode, transaction

from tasks.common import corpus_lock, home_tag, settings
from tasks.corpus import mark_corpus, resolve_corpus, teacher_qa
from tasks.gate import serve_and_gate
from tasks.notify import notify_failure, notify_outcome
from tasks.registry import conclude, fail_run, log_to_run, mlflow_links, open_adaptation_run, register_candidate
from tasks.skill import current_skill_vector, inject_skill
from tasks.training import SFTOverrides, base_model, candidate_key, sft_memorize, sft_qa, sft_recipe


@flow(name="adapt")
def adapt(corpus: str, model_name: str = "support-bot", lam: float | None = None,
          skill_vector: str | None = None, sft: SFTOverrides | None = None) -> dict:
    """Adapt the model to one corpus (an id in the home folder, or a folder path) and gate it.

    `sft`: SFT recipe fields to change for this run only, e.g. {"lora_r": 8, "min_steps_qa": 200} (the rest
    come from the settings); a typed form in the Prefect UI, and an unknown field is refused before the run.
    """
    sft = (sft.model_dump(exclude_none=True) or None) if sft is not None else None  # only the fields given
    s = settings()
    lam = s.lam if lam is None else lam
    sft_recipe(sft)  # validate the overrides up front: a deterministic error, no retry, nothing claimed
    c = resolve_corpus(corpus)
    cid = c["corpus_id"]
    vector = current_skill_vector(skill_vector)
    base = base_model()
    tag = (f"{model_name}-{cid[:16]}-skill-{vector['sha256'][:12] if vector else 'none'}-lam{lam:g}"
           f"-r{candidate_key(base, sft)}")
    key = f"adapt-{home_tag(s)}-{tag}"  # one adaptation = (home, model, corpus, skill vector, λ, base + recipe)
    work = Path(s.runs_dir) / f"adapt-{tag}"

    with corpus_lock(s.home, key), transaction(key=key, commit_mode=CommitMode.EAGER) as txn:
        if txn.is_committed():
            get_run_logger().info(f"{key} already ran; returning its recorded result")
            return txn.read().result
        mark_corpus(cid, "running", model_name=model_name, pid=os.getpid(), host=socket.gethostname())
        try:
            summary = _adapt(c, base, model_name, lam, vector, work, sft)
        except BaseException as e:
            mark_corpus(cid, "failed", model_name=model_name, error=f"{type(e).__name__}: {e}"[:500])
            notify_failure(model_name, c["name"], cid, f"{type(e).__name__}: {e}")
            raise
        mark_corpus(cid, "promoted" if summary["promoted"] else "rejected", model_name=model_name,
                    version=summary["version"], reason=summary["reason"])
        txn.stage(summary)
    notify_outcome(summary)
    return summary


def _adapt(c: dict, base: dict, model_name: str, lam: float, vector: dict | None, work: Path,
           overrides: dict | None) -> dict:
    cid = c["corpus_id"]
    teacher = teacher_qa(c)
    stage1 = sft_memorize(c, base, str(work / "sft"), teacher, overrides)
    sft = sft_qa(c, stage1, base, str(work / "sft"), str(work / "sft-model"), teacher, overrides)
    if vector is not None:
        candidate = inject_skill(sft, vector, lam, str(work / f"candidate-lam{lam:g}"))
    else:
        candidate = sft  # no skill vector yet: knowledge only (run refresh_skill to make one)

    run_id = open_adaptation_run(cid, model_name, {
        "corpus_name": c["name"], "base_model": base["path"], "skill_vector_version": vector["version"] if vector else "",
        "lambda": lam if vector else 0.0, "sft_recipe": sft["recipe"], "teacher": teacher["teacher"],
        "gate_items_source": sft["eval_source"]})
    try:
        log_to_run(run_id, metrics=sft["metrics"] | teacher["metrics"], curves=sft.get("curves"))
        version = register_candidate(model_name, candidate, run_id, cid, vector["version"] if vector else "",
                                     lam if vector else None)
        gate = serve_and_gate(candidate, cid, model_name, f"{model_name}/{version}", str(work / "gate"),
                              sft["training_check"])
        outcome = conclude(model_name, version, run_id, gate)
    except BaseException as e:
        fail_run(run_id, e)  # the MLflow run ends FAILED with the error, not RUNNING forever
        raise

    summary = {"corpus_id": cid, "corpus_name": c["name"], "model_name": model_name, "version": version,
               "promoted": outcome["promoted"], "reason": outcome["reason"], "gate": gate["metrics"],
               "champion_compared": gate["champion"], "skill_vector": vector["version"] if vector else None,
               "lambda": lam if vector else None, "mlflow_run_id": run_id, "candidate": candidate["path"],
               "sft_model": sft["path"], "base_model": base["path"], "teacher": teacher["teacher"],
               "training_check": sft["training_check"]}
    _publish(summary, gate)
    return summary


def _publish(summary: dict, gate: dict) -> None:
    """Prefect UI artifacts for review: a markdown summary and the gate score table."""
    s = settings()
    verdict = "PROMOTED to champion" if summary["promoted"] else "REJECTED (champion unchanged)"
    key = f"adapt-{summary['model_name']}-{summary['corpus_id'][:12]}".lower()
    links = mlflow_links(summary["model_name"], summary["version"], summary["mlflow_run_id"])
    if links["version"]:  # empty when no MLflow UI URL is configured
        create_link_artifact(key=f"{key}-mlflow", link=links["version"], link_text=f"MLflow: {summary['model_name']} "
                             f"v{summary['version']}", description="Review the version (tags, model card, gate table)")
    create_markdown_artifact(key=key, description="PaST adaptation summary", markdown=(
        f"# {summary['model_name']} v{summary['version']}: {verdict}\n\n"
        f"- corpus: `{summary['corpus_name']}` (`{summary['corpus_id'][:16]}`)\n"
        f"- skill vector: {summary['skill_vector'] or 'none yet'}; λ = {summary['lambda']}\n"
        f"- gate: {summary['reason']} (compared with {summary['champion_compared'] or 'no champion'})\n"
        f"- MLflow: [run]({links['run']}), [version {summary['version']}]({links['version']}) "
        f"(store {s.mlflow_uri}; the UI is `past ui`)\n"
        f"- weights: `{summary['candidate']}`\n"))
    m = gate["metrics"]
    intervals = ""
    if "candidate_new_accuracy" in m:
        intervals = (f"- new-corpus accuracy {m['candidate_new_accuracy']:.3f} "
                     f"[{m['candidate_new_accuracy_lower']:.3f}, {m['candidate_new_accuracy_upper']:.3f}] "
                     f"on {int(m['new_items'])} items ({s.gate_confidence:.0%} Wilson interval)\n")
    if "new_diff" in m:
        intervals += (f"- vs champion, paired on the same items: {m['new_diff']:+.3f} "
                      f"[{m['new_diff_lower']:+.3f}, {m['new_diff_upper']:+.3f}]\n")
    if intervals:
        create_markdown_artifact(key=f"{key}-intervals", markdown=intervals, description="Gate intervals")
    rows = [{"metric": k, "value": round(v, 4) if isinstance(v, float) else v} for k, v in sorted(m.items())]
    if rows:
        create_table_artifact(key=f"{key}-gate", table=rows, description="Gate scores: candidate vs champion")


if __name__ == "__main__":  # `past adapt CORPUS` runs this (past/ itself never imports Prefect)
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m flows.adapt", description=adapt.__doc__)
    ap.add_argument("corpus")
    ap.add_argument("--model-name", default="support-bot")
    ap.add_argument("--lam", type=float, default=None)
    ap.add_argument("--skill-vector", default=None)
    ap.add_argument("--sft", type=json.loads, default=None, help='SFT recipe overrides as JSON, e.g. \'{"lora_r": 8}\'')
    a = ap.parse_args()
    print(json.dumps(adapt(a.corpus, model_name=a.model_name, lam=a.lam, skill_vector=a.skill_vector, sft=a.sft),
                     indent=2))
