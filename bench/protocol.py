"""Positive control for skill transfer: a reply protocol that GRPO learns and target SFT does not teach.

    make bench-protocol    # = python bench/protocol.py --seeds 0 1 2  (under the exclusive CPU lock)

The method benchmark (bench/method.py) found no transfer, but its GRPO never learned (docs/RESULTS.md). This
bench asks the decisive smaller question first: when RL *does* learn a skill in-domain, does the skill vector
carry it to a model fine-tuned on another domain?

The skill: answer every question in a JSON envelope, `{"answer": "..."}`, when the prompt asks for it
(`past.rewards.ENVELOPE_INSTRUCTION`). SmolLM2-135M-Instruct half-follows that instruction; SFT on bare answers
(both stages, no protocol anywhere) unlearns it; GRPO with the rule rewards `envelope` (1 exact envelope, 0.5
embedded) + 0.5 × `envelope_f1` (token-F1 of the enveloped answer) can learn it back from the sampled replies
that still comply. Per seed (`past.synthetic.make_domains(seed)`: source S and target T, no shared entities):

    source_sft    θ_sft_S: two-stage LoRA SFT on S (documents + rewrites, then S's train QA; bare answers)
    source_grpo   θ_rl_S = GRPO(θ_sft_S) on S's paraphrase questions + the instruction; v = θ_rl_S − θ_sft_S
    sft           θ_sft_T: the same SFT on T (no protocol)
    lam=x         θ_sft_T + x·v for the λ sweep; `past` = the λ chosen on source data (below)
    random        θ_sft_T + r, ‖r_t‖ = λ·‖v_t‖ per tensor (the same-norm control)
    target_grpo   GRPO(θ_sft_T) on T's train QA + the instruction: the costly upper bound
    base          the base model

Scored on T's held-out questions with the instruction appended, greedy: `compliance` (the reply is exactly
the envelope), `accuracy` (compliant and the enveloped answer correct by the gate's rule: what a parser
downstream gets), `content` (the answer correct, enveloped or not). In-domain check: S's GRPO questions
scored before/after GRPO, plus the learning gate on the reward curve (`past.grpo.learning_gate`: last 20
steps beat the first 20 by ≥ 2 sd of the step means). A transfer claim is made only for seeds that pass it.

λ is chosen on source data only: θ_sft_S + λ·v on S's SFT-train questions (never GRPO questions, never T),
the λ with the best accuracy (ties: the smaller λ). Every λ of the sweep is still reported on T.

Checkpoints: one JSON per step under `<out>/seed-S/steps/`, one per evaluation under `evals/`; a rerun
resumes. Model folders of a finished seed are deleted unless --keep-models.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import past.rewards  # noqa: E402,F401 - imported up front: edits during a long run cannot leak in
from bench.method import BASE, DEV_SEED_OFFSET, _f, run_seeds, add_budget_args, _fresh, _published, generate_answers, random_like, step  # noqa: E402
from past.grpo import GRPORecipe, learning_gate, read_result, train_grpo  # noqa: E402
from past.rewards import ENVELOPE_INSTRUCTION, envelope_answer  # noqa: E402
from past.scoring import is_correct  # noqa: E402
from past.sft import SFTRecipe, run_sft  # noqa: E402
from past.skill import analyze, extract, inject  # noqa: E402
from past.synthetic import make_domains, write_corpus, write_heldout  # noqa: E402

ARMS = ("base", "sft", "past", "random", "target_grpo")


@dataclass
class Budget:
    n_source: int = _f(8, "Source products (GRPO questions: their paraphrase QA, 4 per product).")
    n_target: int = _f(8, "Target products (held-out: 4 paraphrase + 2 doc_only + ~1 two_fact each).")
    rewrites: int = _f(2, "Rewrites per article in stage 1.")
    sft_steps_memorize: int = _f(4, "Stage-1 optimizer steps (as bench/method.py).")
    sft_steps_qa: int = _f(24, "Stage-2 optimizer steps (as bench/method.py).")
    sft_lr: float = _f(1e-3, "LoRA learning rate of both SFT stages.")
    grpo_steps: int = _f(48, "GRPO steps (source and target). The learning gate compares the first and last 20.")
    grpo_prompts: int = _f(4, "Questions per GRPO step.")
    grpo_generations: int = _f(4, "GRPO group size.")
    grpo_completion: int = _f(24, "Max tokens per completion (an enveloped short answer is ~10).")
    grpo_lr: float = _f(1e-5, "GRPO learning rate (full-parameter).")
    grpo_temperature: float = _f(1.0, "Rollout temperature (paper: 1.0).")
    grpo_beta: float = _f(0.001, "GRPO KL coefficient (paper: 0.001; 0 skips the reference forward, a fifth of a CPU step).")
    grpo_accum: int = _f(1, "Backward slices per GRPO step (same generations; CPU steps are super-linear in batch).")
    grpo_scheduler: str = _f("linear", "GRPO learning-rate schedule ('constant': the last steps still learn).")
    grpo_bf16: bool = _f(False, "GRPO in bf16 autocast (fp32 master weights): ~2x a CPU step with bf16 instructions.")
    grpo_lora: bool = _f(False, "GRPO on a LoRA policy (r 64, merged at the end) instead of all parameters.")
    lams: tuple[float, ...] = _f((0.5, 1.0, 1.5, 2.0), "λ sweep on the target; λ for `past` is chosen on source data.")
    max_new_tokens: int = _f(32, "Max new tokens per evaluated reply.")


def recipes(b: Budget, seed: int) -> tuple[SFTRecipe, GRPORecipe]:
    sft = SFTRecipe(max_steps_memorize=b.sft_steps_memorize, max_steps_qa=b.sft_steps_qa, lr_memorize=b.sft_lr,
                    lr_qa=b.sft_lr, lora_r=16, lora_alpha=32, batch_size=8, max_length=256, eval_fraction=0.5,
                    save_steps=10_000, seed=seed, min_steps_qa=0, check_train_qa=0,
                    batch_size_memorize=8, replay_examples=0)  # as the recorded results were measured
    grpo = GRPORecipe(max_steps=b.grpo_steps, prompts_per_step=b.grpo_prompts, num_generations=b.grpo_generations,
                      max_completion_length=b.grpo_completion, learning_rate=b.grpo_lr,
                      temperature=b.grpo_temperature, rewards=("envelope", "envelope_f1"), reward_weights=(1.0, 0.5),
                      beta=b.grpo_beta, grad_accum=b.grpo_accum, lr_scheduler_type=b.grpo_scheduler,
                      save_steps=10_000, seed=seed, bf16=b.grpo_bf16 or None, use_lora=b.grpo_lora)
    return sft, grpo


def with_protocol(question: str) -> str:
    return f"{question} {ENVELOPE_INSTRUCTION}"


def score(items: list[dict], replies: list[str]) -> dict:
    rows = []
    for it, r in zip(items, replies):
        inner = envelope_answer(r)
        rows.append({"id": it.get("id"), "kind": it.get("kind"), "reply": r, "reference": it["answer"],
                     "compliant": float(inner is not None),
                     "correct": float(inner is not None and is_correct(inner, it["answer"])),
                     "content": float(is_correct(r if inner is None else inner, it["answer"]))})
    n = len(rows)
    return {"n": n, "compliance": sum(r["compliant"] for r in rows) / n, "accuracy": sum(r["correct"] for r in rows) / n,
            "content": sum(r["content"] for r in rows) / n, "items": rows}


def evaluate(model: Path, items: list[dict], b: Budget) -> dict:
    return score(items, generate_answers(model, [with_protocol(it["question"]) for it in items], b.max_new_tokens, 64))


def choose_lam(evals: dict[float, dict]) -> float:
    """Best accuracy on source questions; ties → the smaller λ (closer to the SFT model)."""
    return min(evals, key=lambda x: (-evals[x]["accuracy"], x))


def run_seed(seed: int, b: Budget, base: Path, root: Path, keep_models: bool, log: Callable[[str], None],
             dev: bool = False, in_domain_only: bool = False) -> dict:
    sdir = root / f"seed-{seed}"
    work, steps, evals = sdir / "work", sdir / "steps", sdir / "evals"
    sft_recipe, grpo_recipe = recipes(b, seed)
    source, target = make_domains(DEV_SEED_OFFSET + seed if dev else seed, b.n_source, b.n_target)
    src_c, tgt_c = work / "corpora" / "source", work / "corpora" / "target"
    for dom, path in ((source, src_c), (target, tgt_c)):
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            write_corpus(dom, tmp, rewrites=b.rewrites)
            tmp.rename(path)
    held = [json.loads(x) for x in write_heldout(target, sdir / "heldout.jsonl").read_text().splitlines()]
    rl_items = [{"id": f"rl-{i}", "kind": "paraphrase", **r} for i, r in enumerate(source.qa["paraphrase"])]
    src_train = [{"id": f"st-{i}", "kind": "train", **r} for i, r in enumerate(source.qa["train"])]

    def sft(corpus: Path, name: str) -> dict:
        m = run_sft(corpus, work / name, base, sft_recipe, work_dir=work / f"{name}-work", progress=False)
        return {"model": str(work / name), **{f"{st}_steps": (m.get(st) or {}).get("steps") for st in ("memorize", "qa")}}

    def grpo(init: Path, items: list[dict], name: str) -> dict:
        out = work / name
        if not _published(out):
            _fresh(out)
            train_grpo(init, [{"question": with_protocol(it["question"]), "answer": it["answer"]} for it in items],
                       out, grpo_recipe, work_dir=work / f"{name}-work")
        g = read_result(out)
        curve = g["reward_curve"]
        return {"model": str(out), "steps": g["steps"], "wall_s_train": g["wall_s"], "reward_curve": curve,
                "per_reward_curves": g["per_reward_curves"], "learning": learning_gate(curve),
                "s_per_step": g["wall_s"] / max(g["steps"], 1)}

    def injected(model: Path, vec: Path, name: str, lam: float) -> dict:
        _fresh(work / name)
        inject(model, vec, work / name, lam=lam, progress=False)
        return {"model": str(work / name), "lam": lam}

    ev = lambda name, model, items: step(evals / f"{name}.json", lambda: evaluate(model, items, b), log)  # noqa: E731
    rec: dict[str, dict] = {}
    rec["source_sft"] = step(steps / "source_sft.json", lambda: sft(src_c, "source_sft"), log)
    sft_S = work / "source_sft"
    rec["source_grpo"] = step(steps / "source_grpo.json", lambda: grpo(sft_S, rl_items, "source_grpo"), log)
    rec["vector"] = step(steps / "vector.json", lambda: _fresh(work / "vector") or {
        "manifest_sha": extract(work / "source_grpo", sft_S, work / "vector", progress=False).get("sha256")}, log)
    vec = work / "vector"
    in_domain = {"source_sft": ev("in_domain-source_sft", sft_S, rl_items),
                 "source_grpo": ev("in_domain-source_grpo", work / "source_grpo", rl_items)}
    if in_domain_only:  # a dev probe of the GRPO settings: stop before anything touches a target
        return {"seed": seed, "dev": dev, "in_domain": {k: _slim(v) for k, v in in_domain.items()},
                "steps": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in rec.items()}}
    # λ on source data only: θ_sft_S + λ·v on S's SFT-train questions (λ = 1 is θ_rl_S itself)
    src_sel: dict[float, dict] = {}
    for x in b.lams:
        model = work / "source_grpo" if x == 1.0 else work / f"source+{x:g}v"
        if x != 1.0:
            step(steps / f"source-inject-{x:g}.json", lambda x=x: injected(sft_S, vec, f"source+{x:g}v", x), log)
        src_sel[x] = ev(f"select-lam={x:g}", model, src_train)
    lam = choose_lam(src_sel)

    rec["sft"] = step(steps / "sft.json", lambda: sft(tgt_c, "sft"), log)
    sft_T = work / "sft"
    models: dict[str, Path] = {"base": base, "sft": sft_T}
    for x in b.lams:
        step(steps / f"inject-lam={x:g}.json", lambda x=x: injected(sft_T, vec, f"lam={x:g}", x), log)
        models[f"lam={x:g}"] = work / f"lam={x:g}"
    rec["random"] = step(steps / "random.json", lambda: {"model": str(random_like(
        vec, sft_T, _fresh(work / "random") or work / "random", lam, seed))}, log)
    models["random"] = work / "random"
    target_train = lambda: [{"question": q["question"], "answer": q["answer"]} for q in map(  # noqa: E731
        json.loads, (work / "sft-work" / "splits" / "train.jsonl").read_text().splitlines())]
    rec["target_grpo"] = step(steps / "target_grpo.json", lambda: grpo(sft_T, target_train(), "target_grpo"), log)
    models["target_grpo"] = work / "target_grpo"
    rec["cosine"] = step(steps / "cosine.json", lambda: _cos(analyze(
        vec, base, sft_T, _fresh(sdir / "analysis") or sdir / "analysis", progress=False)), log)

    scores = {arm: _slim(ev(arm, model, held)) for arm, model in models.items()}
    scores["past"] = scores[f"lam={lam:g}"] | {"lam": lam}
    if not keep_models and work.exists():
        shutil.rmtree(work)
    return {"seed": seed, "lam": lam, "lam_selection": {f"{x:g}": _slim(e) for x, e in src_sel.items()},
            "in_domain": {k: _slim(v) for k, v in in_domain.items()}, "arms": scores,
            "steps": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in rec.items()}}


def _slim(e: dict) -> dict:
    return {k: e[k] for k in ("n", "compliance", "accuracy", "content", "wall_s") if k in e} | {
        "examples": [r["reply"] for r in e.get("items", [])[:3]]}


def _cos(report: dict) -> dict:
    o = report["overall"]
    return {"overall_cosine": o["cosine"], "skill_over_knowledge_norm": o["skill_norm"] / o["knowledge_norm"]
            if o["knowledge_norm"] else None, "skill_norm": o["skill_norm"], "knowledge_norm": o["knowledge_norm"]}


# --- report ------------------------------------------------------------------------------------------------
def _ms(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def _n(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def report(res: dict) -> str:
    seeds = res["seeds"]
    arms = ["base", "sft", "past", "random", "target_grpo"] + [f"lam={x:g}" for x in res["budget"]["lams"]]
    names = {"base": "base model", "sft": "target SFT only", "past": "PaST (θ_sft_T + λ·v, λ chosen on source)",
             "random": "random vector, same per-tensor norm", "target_grpo": "target GRPO (upper bound)"}
    out = [f"Command: `{res['command']}` ({res['date']}, total wall {res['total_wall_s'] / 60:.1f} min, seeds "
           f"{[s['seed'] for s in seeds]}). Scores on the target's held-out questions with the envelope instruction; "
           "mean ± sample sd over seeds.", "",
           "| arm | compliance | accuracy (enveloped and correct) | content correct |", "|---|---:|---:|---:|"]
    for a in arms:
        out.append(f"| {names.get(a, 'post-hoc ' + a.replace('lam', 'λ '))} | "
                   + " | ".join(_ms([s["arms"][a][m] for s in seeds]) for m in ("compliance", "accuracy", "content")) + " |")
    out += ["", "| arm − target SFT, paired by seed | Δ compliance | Δ accuracy | seeds with Δ compliance > 0 |",
            "|---|---:|---:|---:|"]
    for a in arms[2:]:
        dc = [s["arms"][a]["compliance"] - s["arms"]["sft"]["compliance"] for s in seeds]
        da = [s["arms"][a]["accuracy"] - s["arms"]["sft"]["accuracy"] for s in seeds]
        out.append(f"| {names.get(a, a)} | {_ms(dc)} | {_ms(da)} | {sum(d > 0 for d in dc)} of {len(seeds)} |")
    out += ["", "| seed | λ chosen (source) | source GRPO: reward first 20 → last 20 (gain / sd) | learning gate | "
            "in-domain compliance SFT → GRPO | target GRPO gate | s/step | ‖v‖/‖Δ_SFT_T‖ | cos(v, Δ_SFT_T) |",
            "|---:|---:|---|---|---|---|---:|---:|---:|"]
    for s in seeds:
        g, t = s["steps"]["source_grpo"]["learning"], s["steps"]["target_grpo"]["learning"]
        c = s["steps"]["cosine"]
        out.append(f"| {s['seed']} | {s['lam']:g} | {_n(g.get('first_mean'))} → {_n(g.get('last_mean'))} "
                   f"({_n(g.get('gain_in_sd'), '.1f')} sd) | {'pass' if g['passed'] else 'FAIL'} | "
                   f"{s['in_domain']['source_sft']['compliance']:.2f} → {s['in_domain']['source_grpo']['compliance']:.2f} | "
                   f"{'pass' if t['passed'] else 'FAIL'} | {s['steps']['source_grpo']['s_per_step']:.1f} | "
                   f"{_n(c['skill_over_knowledge_norm'])} | {_n(c['overall_cosine'])} |")
    return "\n".join(out) + "\n"


def curve_rows(res: dict, every: int = 8) -> list[str]:
    """Reward curves as a table: mean total reward per block of `every` steps, per seed and run."""
    out = []
    for s in res["seeds"]:
        for run in ("source_grpo", "target_grpo"):
            c = s["steps"][run]["reward_curve"]
            env = s["steps"][run]["per_reward_curves"].get("envelope_reward", [])
            blocks = [statistics.fmean(c[i:i + every]) for i in range(0, len(c), every)]
            eblocks = [statistics.fmean(env[i:i + every]) for i in range(0, len(env), every)]
            out.append(f"| {s['seed']} | {run} | " + " ".join(f"{x:.2f}" for x in blocks) + " | "
                       + " ".join(f"{x:.2f}" for x in eblocks) + " |")
    return [f"| seed | run | total reward, mean per {every} steps | envelope reward, mean per {every} steps |",
            "|---:|---|---|---|", *out]


def plot_curves(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    for ax, run in zip(axes, ("source_grpo", "target_grpo")):
        for s in res["seeds"]:
            ax.plot(s["steps"][run]["reward_curve"], label=f"seed {s['seed']}")
        ax.set_title(run.replace("_", " ") + " (total reward per step)")
        ax.set_xlabel("GRPO step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--base", type=Path, default=BASE, help="base model folder (a tiny model for a smoke run)")
    ap.add_argument("--out", type=Path, default=REPO / ".bench" / "protocol", help="work + checkpoints; rerun to resume")
    ap.add_argument("--keep-models", action="store_true")
    ap.add_argument("--render", type=Path, default=None,
                    help="re-render the report of a finished run's results.json (tables + reward-curve plot), run nothing")
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "results-protocol-curves.png", help="where --render puts the plot")
    ap.add_argument("--dev", action="store_true", help=f"domains of seed {DEV_SEED_OFFSET}+S (for choosing settings)")
    ap.add_argument("--in-domain-only", action="store_true",
                    help="stop after source SFT + GRPO and the in-domain check (a dev probe of GRPO settings)")
    add_budget_args(ap, Budget)
    return ap


def run(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.render:
        res = json.loads(args.render.read_text())
        print(report(res) + "\n" + "\n".join(curve_rows(res)) + f"\n\n![reward curves]({plot_curves(res, args.plot).name})")
        return res
    res = run_seeds(args, Budget, run_seed, "bench/protocol.py", argv)
    if args.in_domain_only:
        return res
    text = report(res)
    (args.out / "report.md").write_text(text)
    print(text)
    return res


if __name__ == "__main__":
    run()
