"""demo: the whole story on embedded defaults (`make demo`), with the real base model on CPU.

    make a fictional support-bot source domain and a target domain (no shared entities)
    refresh_skill(source, K=2)             GRPO over 2 partitions -> skill vector v (registered, alias `current`)
    drop the target corpus into the inbox
    watch -> adapt(target)                 SFT (memorize, QA) -> θ_sft_T + λ·v -> vLLM -> gate -> promote
    print the gate table, the champion, and where to look (Prefect UI, MLflow UI)

Budgets are small so that it finishes in minutes on 2 CPU cores; every one is a PAST_* setting. Re-running it
is cheap: finished steps are cached, and the same target corpus is recognised as a duplicate.
"""

from __future__ import annotations

import os
import time

# Demo budgets (used only where the caller has not set them). Sized from measurements on 2 cores.
DEMO_DEFAULTS = {
    "PAST_GRPO_ROUNDS": "2", "PAST_GRPO__MAX_STEPS": "10", "PAST_GRPO__NUM_GENERATIONS": "4",
    "PAST_GRPO__MAX_COMPLETION_LENGTH": "16", "PAST_SFT__EPOCHS_MEMORIZE": "6", "PAST_SFT__EPOCHS_QA": "3",
    # 10 articles x 12 teacher questions (110 after dedup), 30 % held out: 33 new-corpus items, above gate_min_new_items (20)
    "PAST_SFT__EVAL_FRACTION": "0.3",
    # LoRA at 1e-3 on the 135M model: 2e-4 recalled 23 % of the training QA on dev data, 1e-3 77 %
    "PAST_SFT__LR_MEMORIZE": "1e-3", "PAST_SFT__LR_QA": "1e-3",
    # dev data (source domain, docs/BENCHMARKS.md): stage 1 at batch 1 for 6 epochs memorizes (loss 0.03); with
    # the 48 rehearsal examples in stage 2, 120 steps recall 77 % of the training QA (60 steps: 45 %)
    "PAST_SFT__MIN_STEPS_QA": "120",
    # Paraphrase hold-out (docs/corpus.md, split `fact`): every fact of the new articles is trained, and the gate asks
    # 30 % of the questions - each worded unlike any training question about the same fact. With 12 teacher
    # questions per article (facts restated in several sentences get several differently worded questions) and
    # the training QA mixed into stage 1, dev data (source domain, docs/BENCHMARKS.md, E7) gave 19/33 held out
    # [0.408, 0.728], training QA 60/77, general prompts 16/20 (base 15/20). The `question` split left which
    # held-out item had a trained fact to chance: the demo then promoted on one seed in three.
    "PAST_SFT__SPLIT_BY": "fact",
    "PAST_SFT__MIX_QA": "true",
    "PAST_TEACHER_N_QA": "12",
}

from prefect import flow  # noqa: E402

from flows.refresh_skill import refresh_skill  # noqa: E402
from flows.watch import watch  # noqa: E402
from tasks.demo import compare_on_new_corpus, drop_into_inbox, make_demo_corpora, summarize_demo  # noqa: E402


@flow(name="demo")
def demo(seed: int = 0, n_source: int = 8, n_target: int = 10, model_name: str = "support-bot") -> dict:
    """Refresh a skill vector on a source domain, then let the watcher adapt the model to a new corpus."""
    t0 = time.monotonic()
    corpora = make_demo_corpora(seed, n_source, n_target)
    print(f"[1/3] skill refresh on the source domain ({n_source} products, K=2 rounds of SFT + GRPO)")
    skill = refresh_skill(corpora["source"])
    t1 = time.monotonic()
    print(f"[2/3] new corpus arrives: {n_target} product articles, no QA -> inbox; the watcher claims it and "
          "runs adapt (teacher QA -> SFT -> + λ·v -> gate)")
    drop_into_inbox(corpora["target"], f"support-articles-seed{seed}")
    watched = watch(settle_s=0, model_name=model_name, mode="inline", deployment="adapt/adapt")
    t2 = time.monotonic()
    comparison = None
    if watched["started"]:
        r = watched["started"][0]["result"]
        print("[3/3] base vs target SFT vs SFT + λ·v on the new corpus's held-out questions")
        comparison = compare_on_new_corpus(r["corpus_id"], {"base": r["base_model"], "target SFT": r["sft_model"],
                                                             f"SFT + {r['lambda'] or 0:g}·v": r["candidate"]})
    timings = {"refresh": round(t1 - t0, 1), "adapt": round(t2 - t1, 1), "total": round(time.monotonic() - t0, 1)}
    return {"skill": skill, "watch": watched, "timings_s": timings, "comparison": comparison,
            "summary": summarize_demo(skill, watched, timings, model_name, comparison)}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__)
    ap.add_argument("--seed", type=int, default=0, help="seed of the fictional domains, splits and training")
    seed = ap.parse_args().seed
    os.environ.setdefault("PAST_SEED", str(seed))
    for k, v in DEMO_DEFAULTS.items():
        os.environ.setdefault(k, v)
    print(demo(seed=seed)["summary"])


if __name__ == "__main__":
    main()
