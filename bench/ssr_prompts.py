"""Self-synthesized rehearsal prompts (Huang et al. 2024, SSR): the base model writes new prompts from four sampled
examples of the shipped rehearsal prompts (temperature 1, top-p 0.95); kept are single lines of 12-160 characters
ending in "?" or ".", deduplicated, and disjoint from the gate's general prompts and the shipped ones.

    python bench/ssr_prompts.py N OUT.json   (E14 in docs/BENCHMARKS.md: 850 kept of 1 664 sampled, 564 s)
"""
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from past.config import load_settings  # noqa: E402
from past.evaluation import general_prompts  # noqa: E402
from past.models import resolve_model  # noqa: E402
from past.replay import replay_prompts  # noqa: E402


def norm(q: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", q.lower()).strip()


def main() -> None:
    n_want, out = int(sys.argv[1]), Path(sys.argv[2])
    s = load_settings()
    base = resolve_model(s.base_model, s.models_dir)
    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    seeds = replay_prompts()
    banned = {norm(g.question) for g in general_prompts()} | {norm(q) for q in seeds}
    rng = random.Random(0)
    torch.manual_seed(0)
    got, seen, tried, t0 = [], set(), 0, time.time()
    while len(got) < n_want:
        convs = [[{"role": "user", "content": "Here are some example questions:\n"
                   + "\n".join(f"- {e}" for e in rng.sample(seeds, 4))
                   + "\nWrite one new question of the same kind. Reply with the question only."}] for _ in range(32)]
        enc = tok([tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs],
                  return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=40, do_sample=True, temperature=1.0, top_p=0.95,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
        for text in tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True):
            tried += 1
            q = text.strip().split("\n")[0].strip().lstrip("-* ").strip().strip('"')
            k = norm(q)
            if 12 <= len(q) <= 160 and q.endswith(("?", ".")) and k not in seen and k not in banned:
                seen.add(k)
                got.append(q)
        print(f"{len(got)}/{n_want} kept of {tried} ({time.time() - t0:.0f}s)", flush=True)
    out.write_text(json.dumps(got[:n_want], indent=0))


if __name__ == "__main__":
    main()
