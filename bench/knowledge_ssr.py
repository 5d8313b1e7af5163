"""E14: `bench/knowledge.py` with stage-1 rehearsal on N1 prompts: the shipped 150 plus prompts the base model
wrote itself (`bench/ssr_prompts.py`, SSR-style); stage 2 keeps its own `--replay` count.

An experiment harness, not a recipe: it swaps `past.replay.replay_prompts` and `past.sft._replay` in-process
so that only stage 1 (called from `run_memorize`) rehearses N1 pairs. Measured in docs/BENCHMARKS.md (E14): more
rehearsal did not reduce forgetting, so no recipe field was made of it.

    python bench/knowledge_ssr.py N1 PROMPTS.json [bench/knowledge.py arguments]
"""
import inspect
import json
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
N1, extra_file = int(sys.argv[1]), sys.argv[2]
sys.argv = [str(Path(__file__).with_name("knowledge.py"))] + sys.argv[3:]
import past.replay as R  # noqa: E402
import past.sft as S  # noqa: E402

extra = json.loads(Path(extra_file).read_text())
shipped = R.replay_prompts
R.replay_prompts = lambda: shipped() + extra


def _replay(base_model, recipe, work):
    stage1 = any(f.function == "run_memorize" for f in inspect.stack())
    n = N1 if stage1 else recipe.replay_examples
    pairs = R.replay_pairs(Path(base_model), n, recipe.replay_max_tokens, work / "replay")
    print(f"[E14] {'stage 1' if stage1 else 'stage 2'} rehearses {len(pairs)} pairs", flush=True)
    return pairs


S._replay = _replay
runpy.run_path(sys.argv[0], run_name="__main__")
