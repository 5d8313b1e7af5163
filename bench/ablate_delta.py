"""Where a kept SFT model's knowledge and its forgetting live, with no training.

For one model folder kept by `bench/knowledge.py --keep-model`, rebuild its dev splits from the seed (the same
teacher QA and `fact` split as the bench) and score, closed-book with transformers greedy, each of:

    scale:A     θ = θ_base + A·(θ_sft − θ_base)                 (how much of the update)
    attn, mlp   θ = θ_base + 1[tensor in group]·(θ_sft − θ_base)  (which modules: self_attn / mlp)
    lo, hi      the same for layers below / from half the depth
    random      θ_base + r, r Gaussian with the update's norm, tensor by tensor (is it the size of the update?)

on the training QA, the held-out paraphrases and the gate's 100 general prompts. Arm names are arguments:

    python bench/ablate_delta.py .bench/sft-E10-seed0 --seed 0 --arms scale:1 scale:0.8 attn mlp lo hi random
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from past.config import load_settings  # noqa: E402
from past.corpus import QAPair, load_corpus, read_qa_jsonl, split_qa  # noqa: E402
from past.evaluation import general_prompts  # noqa: E402
from past.models import resolve_model  # noqa: E402
from past.recall import recall_of_folder  # noqa: E402
from past.synthetic import make_domains, write_corpus  # noqa: E402
from past.teacher import teach_corpus  # noqa: E402


def _layer(name: str) -> int:
    m = re.search(r"layers\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def arm_weights(arm: str, base: dict, sft: dict, n_layers: int) -> dict:
    """The weights of one arm (see the module docstring)."""
    if arm.startswith("scale:"):
        a = float(arm.split(":", 1)[1])
        return {k: (base[k].float() + a * (sft[k].float() - base[k].float())).to(sft[k].dtype) for k in sft}
    if arm == "random":
        gen = torch.Generator().manual_seed(0)
        out = {}
        for k in sft:
            d = sft[k].float() - base[k].float()
            r = torch.randn(d.shape, generator=gen)
            out[k] = (base[k].float() + r * (d.norm() / r.norm())).to(sft[k].dtype) if d.any() else base[k]
        return out
    keep = {"attn": lambda k: "self_attn" in k, "mlp": lambda k: ".mlp." in k,
            "lo": lambda k: 0 <= _layer(k) < n_layers // 2, "hi": lambda k: _layer(k) >= n_layers // 2}[arm]
    return {k: sft[k] if keep(k) else base[k] for k in sft}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a model folder kept by bench/knowledge.py --keep-model")
    ap.add_argument("--seed", type=int, default=0, help="the dev seed the model was trained on")
    ap.add_argument("--domain", choices=["source", "target"], default="source")
    ap.add_argument("--n-qa", type=int, default=12)
    ap.add_argument("--arms", nargs="+", default=["scale:1", "attn", "mlp", "lo", "hi", "random"])
    a = ap.parse_args()
    valid = {"attn", "mlp", "lo", "hi", "random"}
    for arm in a.arms:
        if arm not in valid and not re.fullmatch(r"scale:[0-9.]+", arm):
            ap.error(f"unknown arm {arm!r}: expected scale:A or one of {sorted(valid)}")

    s = load_settings(teacher_n_qa=a.n_qa)
    base_dir = resolve_model(s.base_model, s.models_dir)
    base, sft = load_file(base_dir / "model.safetensors"), load_file(a.model / "model.safetensors")
    n_layers = 1 + max(_layer(k) for k in sft)
    general = [QAPair(id=g.id, question=g.question, answer=g.answer) for g in general_prompts()]
    src, tgt = make_domains(a.seed, n_source=10, n_target=10)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(src if a.domain == "source" else tgt, Path(tmp) / "corpus", rewrites=3, qa_kinds=())
        teacher = teach_corpus(s, load_corpus(corpus), Path(tmp) / "teacher")
        train, held = split_qa(read_qa_jsonl(Path(teacher["path"]) / "qa.jsonl"), 0.3, a.seed, "fact")
        print(f"| arm | training QA | held-out paraphrases | general | s |\n|---|---|---|---|---:|")
        for arm in a.arms:
            t0 = time.perf_counter()
            out = Path(tmp) / "arm"
            shutil.copytree(a.model, out, ignore=shutil.ignore_patterns("model.safetensors", "past-model.json"))
            save_file({k: v.contiguous() for k, v in arm_weights(arm, base, sft, n_layers).items()},
                      out / "model.safetensors", metadata={"format": "pt"})
            r = [recall_of_folder(out, pairs) for pairs in (train, held, general)]
            print(f"| {arm} | " + " | ".join(f"{x['correct']}/{x['n']}" for x in r)
                  + f" | {time.perf_counter() - t0:.0f} |", flush=True)
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
