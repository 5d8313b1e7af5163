"""Stage-1 SFT memory and speed: one batch of 8 packed 512-token blocks per optimizer step, run as one forward
pass (what stage 1 did before `micro_batch_memorize`) or as micro-batches with gradient accumulation.

The corpus is ~35k tokens of made-up field manuals (past.synthetic.long_document, seven of ~5k tokens), cut
into stage-1 windows exactly as `run_memorize` cuts them (past.sft.memorize_rows). Each variant runs
`past.sft.fit_stage` for `--steps` optimizer steps in its own child process, so its peak resident memory is
the kernel's high-water mark of that process alone (ru_maxrss), not a sampled figure; the sampled peak the
manifest records (past.memory.PeakRSS) is printed beside it. Tokens/s is training tokens over the trainer's
own runtime, first (warm-up) step included; the loss of the first optimizer step shows the variants do the
same update.

    flock -x /tmp/past-cpu.lock .venv/bin/python bench/sft_memory.py --json .bench/sft-memory.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {"batch 8 in one forward (before)": 8, "micro 4 × accumulation 2": 4, "micro 2 × accumulation 4": 2,
            "micro 1 × accumulation 8 (default)": 1}


def child(spec: dict) -> None:
    """One variant, in this process: train `steps` optimizer steps and print its figures as JSON."""
    from past.sft import SFTRecipe, fit_stage

    rows = json.loads(Path(spec["rows"]).read_text())
    recipe = SFTRecipe(batch_size_memorize=spec["batch"], micro_batch_memorize=spec["micro"], save_steps=10_000,
                       save_every_s=0, lr_memorize=1e-3, bf16=spec.get("bf16") or None)
    _, _, m = fit_stage(name="memorize", model_dir=spec["model"], rows=rows, recipe=recipe,
                        stage_dir=spec["stage_dir"], epochs=1.0, lr=recipe.lr_memorize, max_steps=spec["steps"],
                        packing=True, min_steps=0, batch_size=spec["batch"], progress=False)
    maxrss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    print("RESULT " + json.dumps({"peak_rss_gb": round(maxrss_gb, 3), "sampled_peak_gb": m["peak_rss_gb"],
                                  "tokens": m["tokens"], "runtime_s": m["train_runtime_s"],
                                  "tokens_per_s": round(m["tokens"] / m["train_runtime_s"], 1),
                                  "s_per_step": round(m["train_runtime_s"] / m["steps"], 2),
                                  "steps": m["steps"], "loss_curve": m["loss_curve"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per variant")
    ap.add_argument("--manuals", type=int, default=7, help="~5k-token manuals in the corpus (7: ~35k tokens)")
    ap.add_argument("--only", nargs="*", type=int, default=None, help="micro-batch sizes to run (default: all)")
    ap.add_argument("--bf16", action="store_true", help="also run each chosen micro-batch size in bf16 autocast")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(json.loads(a.child))

    from transformers import AutoTokenizer

    from past.config import load_settings
    from past.corpus import load_corpus
    from past.models import resolve_model
    from past.sft import SFTRecipe, memorize_rows
    from past.synthetic import long_document

    settings = load_settings()
    base = resolve_model(settings.base_model, settings.models_dir)
    tok = AutoTokenizer.from_pretrained(base)
    recipe = SFTRecipe()
    out: dict = {"steps": a.steps, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        corpus_dir = Path(tmp) / "corpus"
        corpus_dir.mkdir()
        for i in range(a.manuals):
            name = f"Manual{chr(65 + i)}"
            text, _ = long_document(i, name, 21)
            (corpus_dir / f"{name.lower()}.md").write_text(text + "\n")
        rows, cover = memorize_rows(load_corpus(corpus_dir), tok, recipe.max_length,
                                    min(recipe.chunk_overlap, recipe.max_length // 4))
        out["corpus"] = cover
        print(f"corpus: {cover['corpus_tokens']} tokens, {cover['window_count']} windows of ≤ {recipe.max_length}",
              flush=True)
        (Path(tmp) / "rows.json").write_text(json.dumps(rows))
        runs = [(label, micro, False) for label, micro in VARIANTS.items()]
        runs += [(f"{label}, bf16", micro, True) for label, micro in VARIANTS.items()] if a.bf16 else []
        for label, micro, bf16 in runs:
            if a.only is not None and micro not in a.only:
                continue
            spec = {"rows": str(Path(tmp) / "rows.json"), "model": str(base), "batch": 8, "micro": micro,
                    "steps": a.steps, "stage_dir": str(Path(tmp) / f"run-{micro}-{bf16}"), "bf16": bf16}
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                raise SystemExit(f"{label}: child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
            r = json.loads(line[len("RESULT "):]) | {"wall_s": round(time.perf_counter() - t0, 1)}
            out["variants"][label] = r
            print(f"{label}: peak RSS {r['peak_rss_gb']:.2f} GB (sampled {r['sampled_peak_gb']:.2f}), "
                  f"{r['tokens_per_s']} tokens/s, {r['s_per_step']} s/step, loss {r['loss_curve']}", flush=True)
    ref = out["variants"].get("batch 8 in one forward (before)") or next(iter(out["variants"].values()), None)
    if ref:
        for label, r in out["variants"].items():
            print(f"  {label}: RSS {r['peak_rss_gb'] / ref['peak_rss_gb']:.2f}× the first row, "
                  f"tokens/s {r['tokens_per_s'] / ref['tokens_per_s']:.2f}× the first row")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
