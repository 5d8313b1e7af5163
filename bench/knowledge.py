"""Knowledge path on SmolLM2-135M: a docs-only corpus -> built-in teacher -> two-stage SFT -> closed-book recall.

What adapt does before the gate, measured in-process (transformers greedy, `past.recall`), for the base model
and the SFT model: recall on the training QA (the training check) and on the held-out QA (the gate's
new-corpus items: questions about documents whose QA was never trained), each with its Wilson interval.

    flock -x /tmp/past-cpu.lock .venv/bin/python bench/knowledge.py --domain source --seed 0 --json out.json

`--domain source` is the dev side (settings are chosen there); `--domain target` is what the demo adapts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from past.config import load_settings  # noqa: E402
from past.corpus import QAPair, load_corpus, read_qa_jsonl  # noqa: E402
from past.evaluation import general_prompts  # noqa: E402
from past.models import resolve_model  # noqa: E402
from past.recall import recall_of_folder  # noqa: E402
from past.sft import SFTRecipe, run_sft  # noqa: E402
from past.synthetic import make_domains, write_corpus  # noqa: E402
from past.teacher import teach_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", choices=["source", "target"], default="source")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--products", type=int, default=10)
    ap.add_argument("--epochs-memorize", type=float, default=3.0)
    ap.add_argument("--epochs-qa", type=float, default=3.0)
    ap.add_argument("--min-steps-qa", type=int, default=60)
    ap.add_argument("--lr", type=float, default=2e-4, help="learning rate of stage 1 (and stage 2 unless --lr-qa)")
    ap.add_argument("--lr-qa", type=float, default=None, help="stage-2 learning rate (default: --lr)")
    ap.add_argument("--replay", type=int, default=0, help="stage-2 rehearsal examples (sft_replay_examples)")
    ap.add_argument("--batch-memorize", type=int, default=8, help="stage-1 packed blocks per batch")
    ap.add_argument("--eval-fraction", type=float, default=0.3)
    ap.add_argument("--split-by", choices=["document", "question", "fact"], default="document")
    ap.add_argument("--n-qa", type=int, default=8, help="teacher QA per document (teacher_n_qa)")
    ap.add_argument("--reuse-stage1", type=Path, default=None,
                    help="keep the stage-1 model here and reuse it when its key matches (stage-2 variants)")
    ap.add_argument("--keep-model", type=Path, default=None, help="copy the two-stage SFT model folder here")
    ap.add_argument("--mix-qa", action="store_true", help="stage 1 also trains the training QA (mix_qa)")
    ap.add_argument("--replay-memorize", action="store_true", help="stage 1 also trains the rehearsal pairs (replay_memorize)")
    ap.add_argument("--lora-targets", default="all-linear", help="PEFT target modules of both stages (lora_targets)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    s = load_settings(teacher_n_qa=a.n_qa)
    base = resolve_model(s.base_model, s.models_dir)
    src, tgt = make_domains(a.seed, n_source=a.products, n_target=a.products)
    with tempfile.TemporaryDirectory() as tmp:
        corpus_dir = write_corpus(src if a.domain == "source" else tgt, Path(tmp) / "corpus", rewrites=3, qa_kinds=())
        corpus = load_corpus(corpus_dir)
        t0 = time.perf_counter()
        teacher = teach_corpus(s, corpus, Path(tmp) / "teacher")
        qa = read_qa_jsonl(Path(teacher["path"]) / "qa.jsonl")
        from past.qa import read_implications

        impl = read_implications(Path(teacher["path"]) / "implications.jsonl")
        recipe = SFTRecipe.from_settings(s, epochs_memorize=a.epochs_memorize, epochs_qa=a.epochs_qa,
                                         lr_memorize=a.lr, lr_qa=a.lr_qa or a.lr, min_steps_qa=a.min_steps_qa,
                                         batch_size_memorize=a.batch_memorize, replay_examples=a.replay,
                                         eval_fraction=a.eval_fraction, seed=a.seed, split_by=a.split_by, mix_qa=a.mix_qa,
                                         replay_memorize=a.replay_memorize, lora_targets=a.lora_targets)
        work = Path(tmp) / "work"
        if a.reuse_stage1 and (a.reuse_stage1 / "stage1").is_dir():  # run_memorize checks its key before reusing
            shutil.copytree(a.reuse_stage1 / "stage1", work / "stage1")
        m = run_sft(corpus_dir, Path(tmp) / "model", base, recipe, work_dir=work, qa=qa, implications=impl,
                    progress=False)
        sft_s = time.perf_counter() - t0
        if a.reuse_stage1 and not (a.reuse_stage1 / "stage1").is_dir():
            shutil.copytree(work / "stage1", a.reuse_stage1 / "stage1", ignore=shutil.ignore_patterns("checkpoints"))
        if a.keep_model:
            shutil.copytree(Path(tmp) / "model", a.keep_model, dirs_exist_ok=True)
        train = read_qa_jsonl(work / "splits" / "train.jsonl")
        held = read_qa_jsonl(work / "splits" / "eval.jsonl")
        # general ability: the gate's fixed general prompts, asked the same way (a forgetting check)
        general = [QAPair(id=g.id, question=g.question, answer=g.answer) for g in general_prompts()]
        rows = {}
        for name, folder in (("base", base), ("sft", Path(tmp) / "model")):
            rows[name] = {"train": recall_of_folder(folder, train), "heldout": recall_of_folder(folder, held),
                          "general": recall_of_folder(folder, general)}
    out = {"args": vars(a) | {"json": str(a.json)}, "teacher": {k: teacher[k] for k in ("teacher", "qa", "implications", "seconds")},
           "sft_s": round(sft_s, 1), "memorize": {k: m["memorize"].get(k) for k in ("steps", "loss_first", "loss_last",
                                                                                  "coverage", "corpus_tokens", "windows", "train_runtime_s")},
           "qa": {k: m["qa"].get(k) for k in ("steps", "loss_first", "loss_last", "train_runtime_s")},
           "qa_loss_curve": m["qa"].get("loss_curve"), "memorize_loss_curve": m["memorize"].get("loss_curve"),
           "training_check": m["qa"].get("train_recall"), "replay": m.get("replay"), "recall": rows}
    print(f"{'model':<6} {'QA':<8} {'n':>4} {'accuracy':>9}  95% Wilson")
    for name, r in rows.items():
        for kind, v in r.items():
            print(f"{name:<6} {kind:<8} {v['n']:>4} {v['accuracy']:>9.3f}  [{v['lower']:.3f}, {v['upper']:.3f}]")
    print(json.dumps({k: out[k] for k in ("teacher", "sft_s", "memorize", "qa")}, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
