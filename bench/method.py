"""Method benchmark: the PaST paper's comparison, in miniature, on SmolLM2-135M and synthetic support domains.

    make bench-method    # = two dev runs (GRPO questions: source paraphrases / training QA), then 3 seeds
                         #   with the design and λ of the better dev run (--settings-from A.json B.json)

Per seed, `past.synthetic.make_domains(seed)` gives a source domain S and a target domain T (no shared
entities). Arms, all scored on T's held-out questions (paraphrase, doc_only, two_fact) with greedy chat
answers, EM / token-F1 / contains and the gate's correctness rule (`past.scoring.is_correct`: token-F1 ≥ 0.6 or
reference contained; a two_fact answer that also names the other product is wrong):

    base           the base model
    sft            θ_sft_T: two-stage LoRA SFT on T (documents + rewrites, then the train split of T's QA)
    past           θ_sft_T + λ·v_K (K=2 refresh on S, GRPO on S's paraphrase questions, which SFT never sees;
                   λ = --lam, the authors' 1 unless a dev run chose one)
    k1             θ_sft_T + λ·v_1: single-round skill (round 1 of the same refresh, i.e. partition D_1 only)
    pre_injection  SFT on T starting from θ_base + λ·v_K
    sequential     SFT on T starting from θ_rl_K (the refresh's last source SFT + GRPO model)
    source_sft_seq SFT on T starting from θ_sft_K (the same source SFT as round K, no GRPO): what of
                   `sequential` is GRPO's and what is just more fine-tuning
    random         θ_sft_T + r, r random with ‖r_t‖ = λ·‖v_K,t‖ for every tensor t (control)
    target_grpo    GRPO on T's train QA from θ_sft_T (the costly upper bound; T's paraphrases are held out)
    lam=x          θ_sft_T + x·v_K for every x in --lams (λ = 0 is θ_sft_T itself, not re-evaluated)

The arms are a table, `ARMS`: name → one builder function that returns the arm's model folder, its marginal and
its one-off cost; the steps arms share (θ_sft_T, the refresh) live on `SeedRun` and run once, on first use.

Reuse: one refresh per seed gives v_1, v_K and θ_rl_K (arms past, k1, sequential, pre_injection, random and
the whole λ sweep); θ_sft_T serves past, k1, random, target_grpo and the sweep, which only re-injects.
Plus the per-layer cosine between Δ_SFT_T = θ_sft_T − θ_base and v (`past.skill.analyze`), answer lengths,
and wall time per arm: `marginal` = what one more target corpus costs with that arm (SFT, inject, target
GRPO), `one_off` = the shared source refresh it needs (amortised over every later corpus).

Checkpoints: every step writes `<out>/seed-S/steps/<name>.json` when done and every evaluation
`<out>/seed-S/evals/<arm>.json`; a rerun of the same command skips what is done (SFT/refresh also resume
inside a step). Model folders of a finished seed are deleted unless --keep-models (~0.5 GB each).

Settings are never chosen on the held-out target questions: `--dev` runs the same pipeline on a source-like
domain drawn from seed 10_000+S and cut in two (`split_domain`), so no target question is ever generated;
its output records the λ with the best dev accuracy, and a final run takes settings only from the command
line or from the best of such dev JSONs (`--settings-from`). The final run never selects anything by its scores.

Sizing (defaults; 2 cores; measured in the dev probes of 2026-11-28, see docs/RESULTS.md):
  T = 8 products × (article + 2 rewrites) ≈ 2.1k tokens/epoch. One two-stage SFT = 4 memorize steps at
  8 × 256 tokens (~60 s) + 24 QA steps of 8 pairs (~40 s) ≈ 115 s incl. load/merge/save. Stage 2 at 8 steps
  taught only the answer format ("12 seconds" for every reset question: 6 % exact match) and 8 memorize steps
  scored the same as 4, hence 4 + 24. Per seed: 5 SFTs (sft, pre_injection, sequential, 2 source partitions)
  ≈ 575 s; GRPO 3 × 16 steps × ~9 s (4 prompts × 4 generations) + loads/saves ≈ 500 s; ~12 evaluations of
  56 questions ≈ 120 s; ~9 injects + random + 2 analyses ≈ 100 s → ≈ 22 min per seed, ≈ 65 min for 3 seeds.
  vLLM was not used: the gate benchmark's 3.3 questions/s plus ~30 s start-up per model loses to
  4.3 questions/s of one batched generate with no start-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Import every module the run touches up front: edits to the working tree during a long run cannot leak in.
import past.grpo  # noqa: E402,F401
import past.rewards  # noqa: E402,F401
from past.fields import opt as _f  # noqa: E402
from past.corpus import load_corpus, read_qa_jsonl  # noqa: E402
from past.grpo import GRPORecipe, read_result, train_grpo  # noqa: E402
from past.models import MANIFEST, publish_dir, staging_dir, verify_model_dir  # noqa: E402
from past.refine import partition_corpus, refresh_skill  # noqa: E402
from past.scoring import contains, is_correct, score_all  # noqa: E402
from past.sft import SFTRecipe, run_sft  # noqa: E402
from past.skill import analyze, inject  # noqa: E402
from past.synthetic import make_domains, split_domain, write_corpus, write_heldout  # noqa: E402

BASE = REPO / ".past" / "models" / "smollm2-135m-instruct"
KINDS = ("paraphrase", "doc_only", "two_fact")
DEV_SEED_OFFSET = 10_000




@dataclass
class Budget:
    n_source: int = _f(12, "Source products (split into `rounds` partitions for the refresh).")
    n_target: int = _f(8, "Target products; held-out questions = 4 paraphrase + 2 doc_only + ~1 two_fact each.")
    rewrites: int = _f(2, "Rewrites per article in stage 1 (facts need several phrasings to become extractable).")
    eval_fraction: float = _f(0.5, "Share of products whose training QA stage 2 never sees (keeps SFT off the ceiling).")
    sft_steps_memorize: int = _f(4, "Stage 1 (memorize) optimizer steps per SFT (dev: 8 steps gave the same scores as 4).")
    sft_steps_qa: int = _f(24, "Stage 2 (QA) optimizer steps per SFT (dev: 8 learned only the answer format).")
    sft_lr: float = _f(1e-3, "LoRA learning rate of both SFT stages.")
    sft_lora_r: int = _f(16, "LoRA rank (alpha = 2r).")
    sft_batch: int = _f(8, "SFT batch size (stage 1: packed blocks; stage 2: QA pairs).")
    sft_max_length: int = _f(256, "Tokens per packed block / QA example.")
    rounds: int = _f(2, "K of the skill refresh (K=1 arm = its first round).")
    rl_questions: str = _f("paraphrase", "Source questions the refresh's GRPO trains on: 'paraphrase' (other phrasings "
                           "of the source QA facts, never SFT-trained; passed as rl_qa) or 'train' (the SFT training QA).")
    grpo_steps: int = _f(16, "GRPO steps per refresh round and for the target-GRPO arm.")
    grpo_prompts: int = _f(4, "Questions per GRPO step.")
    grpo_generations: int = _f(4, "GRPO group size.")
    grpo_completion: int = _f(16, "Max tokens per GRPO completion.")
    grpo_lr: float = _f(1e-5, "GRPO learning rate (full-parameter).")
    lam: float = _f(1.0, "λ of the headline PaST arms (past, k1, pre_injection, random). Choose it with --dev.")
    lams: tuple[float, ...] = _f((0.0, 0.25, 0.5, 1.0, 1.5, 2.0), "λ sweep (post-hoc, v_K).")
    max_new_tokens: int = _f(64, "Max new tokens per evaluated answer (the gate's default).")
    eval_batch: int = _f(64, "Questions per batched greedy generate call (56 in one batch: 2.4x faster than 16).")


def run_seeds(args: argparse.Namespace, budget_cls: type, run_seed: Callable, script: str,
              argv: list[str] | None) -> dict:
    """The shared loop of the protocol and tool benches: budget from the CLI, the base model, one
    `run_seed(seed, budget, base, out, keep_models, log, dev, in_domain_only)` per seed (each resumable),
    and the run's results.json. Returns the results."""
    b = budget_cls(**{f.name: (tuple(getattr(args, f.name)) if isinstance(f.default, tuple) else getattr(args, f.name))
                      for f in dataclasses.fields(budget_cls)})
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log = lambda m: print(f"[{time.perf_counter() - t0:7.1f} s] {m}", flush=True)  # noqa: E731
    base = args.base
    if base == BASE and not BASE.exists():
        from past.models import prepare_base_model

        base = prepare_base_model(BASE.name, BASE.parent)
    seeds = []
    for s in args.seeds:
        seeds.append(run_seed(s, b, base, args.out, args.keep_models, log, args.dev, args.in_domain_only))
        _write_json(args.out / f"seed-{s}" / "result.json", seeds[-1])
    res = {"budget": asdict(b), "seeds": seeds, "total_wall_s": round(time.perf_counter() - t0, 1),
           "command": f"python {script} " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d"), "base": str(base)}
    _write_json(args.out / "results.json", res)
    if args.in_domain_only:
        for s in seeds:
            print(json.dumps({"seed": s["seed"], "in_domain": s["in_domain"], "learning": s["steps"]["source_grpo"]["learning"],
                              "s_per_step": s["steps"]["source_grpo"]["s_per_step"]}, indent=1))
    return res


def budget_from_args(args: argparse.Namespace) -> Budget:
    return Budget(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Budget)})


def recipes(b: Budget, seed: int) -> tuple[SFTRecipe, GRPORecipe]:
    # save_steps beyond max_steps: a full-parameter checkpoint costs more than a step; steps resume at step level.
    sft = SFTRecipe(max_steps_memorize=b.sft_steps_memorize, max_steps_qa=b.sft_steps_qa, lr_memorize=b.sft_lr,
                    lr_qa=b.sft_lr, lora_r=b.sft_lora_r, lora_alpha=2 * b.sft_lora_r, batch_size=b.sft_batch,
                    max_length=b.sft_max_length, eval_fraction=b.eval_fraction, save_steps=10_000, seed=seed,
                    batch_size_memorize=b.sft_batch, replay_examples=0)  # as the recorded results were measured
    grpo = GRPORecipe(max_steps=b.grpo_steps, prompts_per_step=b.grpo_prompts, num_generations=b.grpo_generations,
                      max_completion_length=b.grpo_completion, learning_rate=b.grpo_lr, save_steps=10_000, seed=seed)
    return sft, grpo


# --- checkpointed steps ------------------------------------------------------------------------------------
def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)  # a crash never leaves a half-written record that a rerun would trust


def step(path: Path, fn: Callable[[], dict], log: Callable[[str], None]) -> dict:
    """Run `fn` once: its record (+ wall_s) lands at `path`; a rerun returns the saved record."""
    if path.is_file():
        return json.loads(path.read_text())
    log(f"{path.parent.parent.name}: {path.stem} ...")
    t0 = time.perf_counter()
    rec = fn()
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    _write_json(path, rec)
    log(f"{path.parent.parent.name}: {path.stem} done in {rec['wall_s']:.0f} s")
    return rec


def _fresh(out: Path) -> None:
    """Drop an output whose step record is missing (crash after publish): cheap steps are simply redone."""
    if out.exists():
        shutil.rmtree(out)


def _published(model_dir: Path) -> bool:
    return (model_dir / MANIFEST).is_file() and not verify_model_dir(model_dir)


# --- evaluation --------------------------------------------------------------------------------------------
def generate_answers(model_dir: Path, questions: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy chat answers, batched (left padding); the prompt is the user turn only, as the gate sends it."""
    return generate_batched(*load_for_generation(model_dir), questions, max_new_tokens, batch_size)


def load_for_generation(model_dir: Path) -> tuple:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    return tok, AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def generate_batched(tok, model, questions: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    import torch
    from tqdm import tqdm

    model_dir = Path(model.name_or_path)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    answers: list[str] = [""] * len(prompts)
    with torch.inference_mode():
        for s in tqdm(range(0, len(order), batch_size), desc=f"eval {model_dir.name}", leave=False):
            idx = order[s:s + batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            for i, row in zip(idx, out[:, enc["input_ids"].shape[1]:]):
                answers[i] = tok.decode(row, skip_special_tokens=True).strip()
    return answers


def score_items(items: list[dict], answers: list[str]) -> dict:
    """Per-item scores and per-kind / overall summaries. `correct` is the gate's rule without a judge
    (`is_correct`), except that a comparison answer naming both products is wrong: "contains" alone would credit
    "The A costs 10, the B costs 20" whichever is right. An empty answer scores 0 (gate: error)."""
    rows = []
    for it, ans in zip(items, answers):
        s = score_all(ans, it["answer"]) if ans else {"exact_match": 0.0, "token_f1": 0.0, "contains": 0.0}
        rows.append({"id": it["id"], "kind": it["kind"], "answer": ans, "reference": it["answer"], **s,
                     "correct": float(is_correct(ans, it["answer"]) and not contains(ans, it.get("distractor") or "")),
                     "words": len(ans.split())})
    summary = {k: _summarize([r for r in rows if r["kind"] == k]) for k in KINDS}
    summary["overall"] = _summarize(rows)
    return {"summary": summary, "items": rows}


def _summarize(rows: list[dict]) -> dict:
    if not rows:
        return {"n": 0}
    words = sorted(r["words"] for r in rows)
    out = {m: sum(r[m] for r in rows) / len(rows) for m in ("exact_match", "token_f1", "contains", "correct")}
    return out | {"n": len(rows), "words_mean": sum(words) / len(words), "words_median": words[len(words) // 2],
                  "words_max": words[-1]}


# --- arms --------------------------------------------------------------------------------------------------
def random_like(vector_dir: Path, model_dir: Path, out: Path, lam: float, seed: int) -> Path:
    """θ + r with r ~ N(0, 1) rescaled per tensor to λ·‖v_t‖: the same-norm control for the skill vector."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    norms: dict[str, float] = {}
    for f in sorted(vector_dir.glob("skill*.safetensors")):
        with safe_open(f, "pt") as h:
            norms.update({k: float(h.get_tensor(k).float().norm()) for k in h.keys()})
    gen = torch.Generator().manual_seed(seed)
    tmp = staging_dir(out)
    try:
        for f in sorted(model_dir.iterdir()):
            if f.suffix == ".safetensors":
                sd = load_file(f)
                for name, w in sd.items():
                    if name in norms and w.is_floating_point():
                        r = torch.randn(w.shape, generator=gen)
                        sd[name] = (w.float() + r * (abs(lam) * norms[name] / float(r.norm()))).to(w.dtype)
                save_file(sd, tmp / f.name, metadata={"format": "pt"})
            elif f.is_file() and f.name != MANIFEST:
                shutil.copy2(f, tmp / f.name)
        return publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cosine_summary(report: dict) -> dict:
    """cos(Δ_SFT_T, v) overall and per layer from `past.skill.analyze`'s report ("other" = embeddings and
    norms; None where a delta is zero there, e.g. LoRA leaves the embeddings untouched), + the norm ratio."""
    o = report["overall"]
    layers = {n: s["cosine"] for n, s in report["layers"].items()}
    cos = [abs(c) for n, c in layers.items() if n != "other" and c is not None]
    return {"overall_cosine": o["cosine"], "mean_abs_layer_cosine": sum(cos) / len(cos) if cos else None,
            "skill_over_knowledge_norm": o["skill_norm"] / o["knowledge_norm"] if o["knowledge_norm"] else None,
            "per_layer_cosine": layers}


# --- arms: a table of name → builder; a builder returns (model folder, marginal s, one-off s) ----------------
Built = tuple[Path, float, float]


@dataclass
class SeedRun:
    """One seed's shared steps. Each step runs once, on first use, and its record is reused by every arm that
    needs it (and by a rerun: `step`): the target SFT θ_sft_T and the source refresh (v_1, v_K, θ_rl_K)."""
    seed: int
    b: Budget
    base: Path
    sdir: Path
    source: Any
    sft_recipe: SFTRecipe
    grpo_recipe: GRPORecipe
    log: Callable[[str], None]
    rec: dict[str, dict] = dataclasses.field(default_factory=dict)

    @property
    def work(self) -> Path:
        return self.sdir / "work"

    def step(self, name: str, fn: Callable[[], dict], file: str = "") -> dict:
        if name not in self.rec:
            self.rec[name] = step(self.sdir / "steps" / f"{file or name}.json", fn, self.log)
        return self.rec[name]

    def sft_from(self, start: Path, name: str) -> dict:
        m = run_sft(self.work / "corpora" / "target", self.work / name, start, self.sft_recipe,
                    work_dir=self.work / f"{name}-work", progress=False)
        return {"model": str(self.work / name), "metrics": _slim(m)}

    def injected(self, model: Path, vec: Path, name: str, lam: float) -> dict:
        _fresh(self.work / name)
        inject(model, vec, self.work / name, lam=lam, progress=False)
        return {"model": str(self.work / name), "lam": lam}

    def target_sft(self) -> tuple[Path, float]:
        """θ_sft_T and what it cost."""
        return self.work / "sft", self.step("sft", lambda: self.sft_from(self.base, "sft"))["wall_s"]

    def refresh(self) -> dict:
        """The K-round refresh on S (and the cosine of v_K, v_1 with Δ_SFT_T)."""
        b, work = self.b, self.work

        def run() -> dict:
            _fresh(work / "vector")
            rl_qa = None
            if b.rl_questions == "paraphrase":  # source-domain questions only; the target's are never used
                rl_qa = work / "corpora" / "source-rl_qa.jsonl"
                rl_qa.write_text("".join(json.dumps({k: r[k] for k in ("question", "answer", "doc_id")}) + "\n"
                                         for r in self.source.qa["paraphrase"]))
            elif b.rl_questions != "train":
                raise SystemExit(f"error: --rl-questions must be 'paraphrase' or 'train', not {b.rl_questions!r}")
            r = refresh_skill(work / "corpora" / "source", work / "vector", self.base, b.rounds, work / "refresh",
                              self.sft_recipe, self.grpo_recipe, seed=self.seed, log=self.log, rl_qa=rl_qa)
            return {"vector": str(r.vector_dir), "rounds": [{k: x[k] for k in ("round", "wall_s", "phases", "grpo",
                                                                               "orthogonality", "vector", "rl")}
                                                           for x in r.rounds]}
        rec = self.step("refresh", run)
        sft_T, _ = self.target_sft()
        for tag in ("K", "1"):
            out = self.sdir / f"analysis-{tag}"
            self.step(f"cosine_{tag}", lambda tag=tag, out=out: cosine_summary(
                analyze(self.vector(tag), self.base, sft_T, _fresh(out) or out, progress=False)))
        return rec

    def vector(self, k: str) -> Path:
        """v_K ("K") or v_1 ("1") of the refresh."""
        rec = self.rec["refresh"]
        return Path(rec["vector"] if k == "K" else rec["rounds"][0]["vector"])


def arm_base(r: SeedRun) -> Built:
    return r.base, 0.0, 0.0


def arm_sft(r: SeedRun) -> Built:
    sft_T, sft_s = r.target_sft()
    return sft_T, sft_s, 0.0


def arm_lam(r: SeedRun, lam: float) -> Built:
    """θ_sft_T + λ·v_K: one more corpus costs its SFT and an inject; the refresh is shared."""
    (sft_T, sft_s), refresh = r.target_sft(), r.refresh()
    name = f"lam={lam:g}"
    inj = r.step(name, lambda: r.injected(sft_T, r.vector("K"), name, lam), file=f"inject-{name}")
    return Path(inj["model"]), sft_s + inj["wall_s"], refresh["wall_s"]


def arm_past(r: SeedRun) -> Built:
    return arm_lam(r, r.b.lam)


def arm_k1(r: SeedRun) -> Built:
    (sft_T, sft_s), refresh = r.target_sft(), r.refresh()
    inj = r.step("k1", lambda: r.injected(sft_T, r.vector("1"), "k1", r.b.lam))
    return Path(inj["model"]), sft_s + inj["wall_s"], refresh["rounds"][0]["wall_s"]


def arm_pre_injection(r: SeedRun) -> Built:
    refresh = r.refresh()
    pre = r.step("pre_inject", lambda: r.injected(r.base, r.vector("K"), "base+v", r.b.lam))
    sft = r.step("pre_injection", lambda: r.sft_from(r.work / "base+v", "pre_injection"))
    return r.work / "pre_injection", pre["wall_s"] + sft["wall_s"], refresh["wall_s"]


def arm_sequential(r: SeedRun) -> Built:
    refresh = r.refresh()
    sft = r.step("sequential", lambda: r.sft_from(Path(refresh["rounds"][-1]["rl"]), "sequential"))
    return r.work / "sequential", sft["wall_s"], refresh["wall_s"]


def arm_source_sft_seq(r: SeedRun) -> Built:
    def source_sft() -> dict:  # round K's SFT again (same partition, recipe and seed), kept this time
        part = partition_corpus(load_corpus(r.work / "corpora" / "source"), r.b.rounds, r.work / "source-partitions",
                                r.seed)[-1]
        m = run_sft(part, r.work / "source_sft", r.base, r.sft_recipe, work_dir=r.work / "source_sft-work",
                    progress=False)
        return {"model": str(r.work / "source_sft"), "partition": part.name, "metrics": _slim(m)}
    src = r.step("source_sft", source_sft)
    sft = r.step("source_sft_seq", lambda: r.sft_from(r.work / "source_sft", "source_sft_seq"))
    return r.work / "source_sft_seq", sft["wall_s"], src["wall_s"]


def arm_random(r: SeedRun) -> Built:
    (sft_T, sft_s), _ = r.target_sft(), r.refresh()
    out = r.work / "random"
    rnd = r.step("random", lambda: {"model": str(random_like(r.vector("K"), sft_T, _fresh(out) or out, r.b.lam,
                                                             r.seed))})
    return out, sft_s + rnd["wall_s"], 0.0


def arm_target_grpo(r: SeedRun) -> Built:
    sft_T, sft_s = r.target_sft()
    out = r.work / "target_grpo"

    def run() -> dict:
        if not _published(out):
            _fresh(out)
            qa = [{"question": q.question, "answer": q.answer}
                  for q in read_qa_jsonl(r.work / "sft-work" / "splits" / "train.jsonl")]
            train_grpo(sft_T, qa, out, r.grpo_recipe, work_dir=r.work / "target_grpo-work")
        g = read_result(out)
        return {"model": str(out), "grpo": {k: g[k] for k in ("steps", "reward_curve", "reward_std_curve", "wall_s")}}
    grpo = r.step("target_grpo", run)
    return out, sft_s + grpo["wall_s"], 0.0


ARMS: dict[str, Callable[[SeedRun], Built]] = {
    "base": arm_base, "sft": arm_sft, "past": arm_past, "k1": arm_k1, "pre_injection": arm_pre_injection,
    "sequential": arm_sequential, "source_sft_seq": arm_source_sft_seq, "random": arm_random,
    "target_grpo": arm_target_grpo,
}
FIXED_ARMS = tuple(ARMS)


def builder(arm: str) -> Callable[[SeedRun], Built]:
    """The table's builder, or the λ sweep's for `lam=X`."""
    return ARMS.get(arm) or (lambda r: arm_lam(r, float(arm.split("=", 1)[1])))


def run_seed(seed: int, b: Budget, base: Path, root: Path, dev: bool, arms: set[str], keep_models: bool,
             log: Callable[[str], None]) -> dict:
    sdir = root / f"seed-{seed}"
    work, evals = sdir / "work", sdir / "evals"
    if dev:  # a source-like domain cut in two; the target domain of any seed is never generated
        pool, _ = make_domains(DEV_SEED_OFFSET + seed, b.n_source + b.n_target, 0)
        source, target = split_domain(pool, b.n_source)
    else:
        source, target = make_domains(seed, b.n_source, b.n_target)
    for dom, path in ((source, work / "corpora" / "source"), (target, work / "corpora" / "target")):
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            write_corpus(dom, tmp, rewrites=b.rewrites)
            os.replace(tmp, path)
    items = [json.loads(line) for line in write_heldout(target, sdir / "heldout.jsonl").read_text().splitlines()]
    r = SeedRun(seed, b, base, sdir, source, *recipes(b, seed), log)

    # every arm asked for (θ_sft_T always: the reference row), in table order with the λ sweep after `sft`
    order = ["base", "sft", *(f"lam={x:g}" for x in b.lams if x != 0.0), *FIXED_ARMS[2:]]
    built = {arm: builder(arm)(r) for arm in order if arm in arms or arm == "sft"}
    scores: dict[str, dict] = {}
    evaluated: dict[Path, dict] = {}
    for arm, (model, marginal, one_off) in built.items():
        if model not in evaluated:  # the same weights (past = its λ arm): one evaluation serves both rows
            evaluated[model] = step(evals / f"{arm}.json", lambda model=model: score_items(items, generate_answers(
                model, [it["question"] for it in items], b.max_new_tokens, b.eval_batch)), log)
        ev = evaluated[model]
        scores[arm] = {"summary": ev["summary"], "eval_s": ev["wall_s"], "marginal_s": round(marginal, 2),
                       "one_off_s": round(one_off, 2)}
    if "lam=0" in arms or 0.0 in b.lams:
        scores["lam=0"] = scores["sft"] | {"note": "λ = 0 is θ_sft_T itself (same weights); not re-evaluated"}
    if not keep_models and work.exists():
        shutil.rmtree(work)  # every record and evaluation is in steps/ and evals/; weights are ~0.5 GB each
    compute = sum(x.get("wall_s", 0.0) for x in r.rec.values()) + sum(
        json.loads(p.read_text())["wall_s"] for p in evals.glob("*.json"))
    return {"seed": seed, "dev": dev, "compute_s": round(compute, 1), "n_heldout": {k: sum(it["kind"] == k for it in items) for k in KINDS},
            "arms": scores, "steps": r.rec}


def _slim(m: dict) -> dict:
    return {s: {k: m[s].get(k) for k in ("steps", "loss_first", "loss_last", "tokens", "wall_s")}
            for s in ("memorize", "qa") if isinstance(m.get(s), dict)}


# --- CLI ---------------------------------------------------------------------------------------------------
def settings_from_dev(paths: list[Path]) -> tuple[Budget, str]:
    """The budget + λ of the dev run with the best dev accuracy (ties: the first given), and a provenance line."""
    runs = []
    for p in paths:
        dev = json.loads(Path(p).read_text())
        if not dev.get("dev"):
            raise SystemExit(f"error: {p} is not a dev run's results (settings must come from dev data)")
        budget = {"rl_questions": "train"} | dev["budget"]  # runs older than the option trained on the train split
        runs.append((p, budget, dev["dev_choice"]))
    best = max(runs, key=lambda r: r[2]["dev_accuracy"])  # max keeps the first of equal keys
    p, budget, choice = best
    b = Budget(**{k: tuple(v) if isinstance(v, list) else v for k, v in budget.items()})
    b.lam = choice["lam"]
    others = "; ".join(f"{q}: rl_questions={bd['rl_questions']}, λ={c['lam']:g}, dev accuracy {c['dev_accuracy']:.3f}"
                       for q, bd, c in runs)
    return b, f"dev run {p} (best dev accuracy {choice['dev_accuracy']:.3f} at λ = {b.lam:g}; candidates: {others})"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (one full pipeline each)")
    ap.add_argument("--dev", action="store_true", help="tune on a split source-like domain; never touches targets")
    ap.add_argument("--settings-from", type=Path, nargs="+", default=None,
                    help="dev runs' results JSONs: take the budget and chosen λ of the one with the best dev accuracy")
    ap.add_argument("--arms", nargs="+", default=None,
                    help=f"subset of arms (default: all; dev default: base sft + the λ sweep): {' '.join(FIXED_ARMS)} lam=X")
    ap.add_argument("--base", type=Path, default=BASE, help="base model folder (a tiny model for a smoke run)")
    ap.add_argument("--out", type=Path, default=None,
                    help="work + checkpoint folder (default .past/bench/method[-dev]); rerun to resume")
    ap.add_argument("--results-md", type=Path, default=REPO / "docs" / "RESULTS.md",
                    help="where the final run writes the table (plots go next to it)")
    ap.add_argument("--keep-models", action="store_true", help="keep model folders after a seed finishes")
    add_budget_args(ap, Budget)
    return ap


def add_budget_args(ap: argparse.ArgumentParser, budget_cls: type) -> None:
    """One `--field-name` option per field of a budget dataclass (tuples take several floats), help from metadata."""
    for f in dataclasses.fields(budget_cls):
        kw: dict = {"default": f.default, "help": f.metadata["help"] + f" (default {f.default})"}
        if isinstance(f.default, bool):  # --x / --no-x (type=bool would read "False" as true)
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(f.default, tuple):
            kw |= {"nargs": "+", "type": float, "default": list(f.default)}
        else:
            kw["type"] = type(f.default)
        ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, **kw)


def run(argv: list[str] | None = None) -> dict:
    from bench.method_report import dev_choice, write_report, print_table

    args = parser().parse_args(argv)
    b = budget_from_args(args)
    provenance = "command line (defaults: authors' λ = 1)"
    if args.settings_from:
        if args.dev:
            raise SystemExit("error: --settings-from is for the final run, not --dev")
        b, provenance = settings_from_dev(args.settings_from)
    b.lams = tuple(sorted(set(b.lams)))
    if b.lam not in b.lams:
        b.lams = tuple(sorted(set(b.lams) | {b.lam}))
    sweep = [f"lam={x:g}" for x in b.lams]
    arms = set(args.arms) if args.arms else (
        {"base", "sft", *sweep} if args.dev else {*FIXED_ARMS, *sweep})
    unknown = arms - set(FIXED_ARMS) - set(sweep)
    if unknown:
        raise SystemExit(f"error: unknown arms {sorted(unknown)} (λ arms must be in --lams)")
    out = args.out or REPO / ".past" / "bench" / ("method-dev" if args.dev else "method")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log = lambda m: print(f"[{time.perf_counter() - t0:7.1f} s] {m}", flush=True)  # noqa: E731
    base = args.base
    if base == BASE and not BASE.exists():
        from past.models import prepare_base_model

        base = prepare_base_model(BASE.name, BASE.parent)
    seeds = [run_seed(s, b, base, out, args.dev, arms, args.keep_models, log) for s in args.seeds]
    results = {"dev": args.dev, "budget": asdict(b), "settings_provenance": provenance, "seeds": seeds,
               "arms": sorted(arms), "total_wall_s": round(time.perf_counter() - t0, 1),
               "command": "python bench/method.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "base": str(base), "date": time.strftime("%Y-%m-%d")}
    if args.dev:
        results["dev_choice"] = dev_choice(results)
    _write_json(out / "results.json", results)
    print_table(results)
    if args.dev:
        print(f"dev choice: {results['dev_choice']}; run the final benchmark with --settings-from {out / 'results.json'}")
    else:
        write_report(results, args.results_md)
        print(f"wrote {args.results_md}")
    return results


if __name__ == "__main__":
    run()
