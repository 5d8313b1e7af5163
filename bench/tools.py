"""Tool use, closed-book (the paper's third setting): does a skill vector learned by GRPO on source API
categories make a model fine-tuned on *unseen* target APIs finish its episodes?

    make bench-tools    # = python bench/tools.py --seeds 0 1 2  (under the exclusive CPU lock)

Domains (`past.synthetic_tools.make_tool_domains(seed)`): source S and target T have disjoint services,
API families and products. A tool corpus is API documentation + tools.json (the simulator) + tool tasks.
Every episode opens with the request and `past.tools.PROTOCOL` (the syntax and Finish, no API list). Per
seed, mirroring the authors' ToolBench pipeline:

    source_sft    θ_sft_S: stage 1 on S's API docs, stage 2 on S's tasks' *first calls* only
    source_grpo   θ_rl_S = GRPO(θ_sft_S) on whole S episodes (past.tool_rollout: call → observation → Finish,
                  the authors' shaping reward); v = θ_rl_S − θ_sft_S
    sft           θ_sft_T: the same SFT on T (first calls only: it never saw a Finish)
    lam=x         θ_sft_T + x·v for the λ sweep; `past` = the λ chosen on source data (below)
    random        θ_sft_T + r, ‖r_t‖ = λ·‖v_t‖ per tensor (the same-norm control)
    target_grpo   GRPO(θ_sft_T) on whole T episodes: the costly upper bound
    base          the base model

Scored on T's held-out phrasing of every (product, API) task, greedy, as whole episodes (up to `max_turns`
turns): `pass` (a successful call of the right API, then Finish with the observed value), `finish`,
`first_call` (the first call is the right API with valid arguments), `valid_call`. In-domain check: S's
held-out episodes before/after GRPO, plus the learning gate on the reward curve
(`past.grpo.learning_gate`); a transfer claim is made only for seeds that pass it.

λ is chosen on source data only: θ_sft_S + λ·v on S's held-out episodes (never T), best pass rate, then
best finish rate, ties to the smaller λ (pre-registered: the positive control showed that a single
all-zero criterion picks arbitrarily). Every λ is still reported on T.

Checkpoints: one JSON per step under `<out>/seed-S/steps/`, one per evaluation under `evals/`; a rerun
resumes. Model folders of a finished seed are deleted unless --keep-models.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import past.rewards  # noqa: E402,F401 - imported up front: edits during a long run cannot leak in
from bench.method import BASE, DEV_SEED_OFFSET, _f, run_seeds, _fresh, _published, add_budget_args, random_like, step  # noqa: E402
from past.grpo import GRPORecipe, learning_gate, read_result, train_grpo  # noqa: E402
from past.sft import SFTRecipe, run_sft  # noqa: E402
from past.skill import analyze, extract, inject  # noqa: E402
from past.synthetic_tools import ToolDomain, make_tool_domains, write_tool_corpus  # noqa: E402
from past.tool_rollout import ToolRollout, grpo_items  # noqa: E402
from past.tools import Simulator, ToolSpec, ToolTask, episode_prompt, finish_demo  # noqa: E402

ARMS = ("base", "sft", "past", "random", "target_grpo")
METRICS = ("pass", "finish", "first_call_correct", "valid_call")


@dataclass
class Budget:
    n_services: int = _f(2, "Services (API categories) per domain.")
    n_families: int = _f(3, "API families per service (price, warranty, ...): APIs = services × families.")
    n_products: int = _f(4, "Products per service: tasks = APIs × products per phrasing.")
    sft_steps_memorize: int = _f(8, "Stage-1 optimizer steps on the API documentation.")
    sft_steps_qa: int = _f(24, "Stage-2 optimizer steps on first calls.")
    sft_lr: float = _f(1e-3, "LoRA learning rate of both SFT stages.")
    grpo_steps: int = _f(80, "GRPO steps (source and target). The learning gate compares the first and last 20.")
    grpo_prompts: int = _f(4, "Tasks per GRPO step.")
    grpo_generations: int = _f(4, "GRPO group size (episodes per task).")
    grpo_completion: int = _f(40, "Max tokens per turn (a call is ~20).")
    grpo_lr: float = _f(1e-6, "GRPO learning rate (full-parameter; the positive control's dev choice).")
    grpo_temperature: float = _f(0.7, "Rollout temperature (the positive control's dev choice).")
    grpo_beta: float = _f(0.0, "GRPO KL coefficient (0 skips the reference forward).")
    grpo_scheduler: str = _f("constant", "GRPO learning-rate schedule.")
    max_turns: int = _f(3, "Turns per episode (call, Finish, one spare).")
    lams: tuple[float, ...] = _f((0.5, 1.0, 1.5, 2.0), "λ sweep on the target; λ for `past` is chosen on source data.")
    eval_completion: int = _f(48, "Max tokens per evaluated turn.")
    source_finish_demos: float = _f(0.0, "Share of the source's training tasks also trained as whole episodes (call, "
                                    "observation, Finish) in the source SFT only; 0 = the authors' first-call-only "
                                    "stage 2 (the dev probe: no Finish in 208 GRPO episodes).")
    probe_temperatures: tuple[float, ...] = _f((), "With --sft-only: also sample grpo_generations episodes of every "
                                               "source training task at each of these temperatures, as a GRPO group "
                                               "would, and count the groups whose finish reward varies.")
    grpo_bf16: bool = _f(False, "GRPO in bf16 autocast (fp32 master weights): ~2x a CPU step with bf16 instructions.")


def finish_demos(d: ToolDomain, share: float, seed: int) -> list[dict]:
    """Whole-episode stage-2 rows for a seeded `share` of the domain's training tasks (past.tools.finish_demo)."""
    import hashlib

    tasks = sorted(_tasks(d.tasks["train"]), key=lambda t: hashlib.sha256(f"{seed}:{t.request}".encode()).hexdigest())
    sim = Simulator(ToolSpec.model_validate(d.spec()))
    return [finish_demo(t, sim) for t in tasks[: round(share * len(tasks))]]


def recipes(b: Budget, seed: int) -> tuple[SFTRecipe, GRPORecipe]:
    sft = SFTRecipe(max_steps_memorize=b.sft_steps_memorize, max_steps_qa=b.sft_steps_qa, lr_memorize=b.sft_lr,
                    lr_qa=b.sft_lr, lora_r=16, lora_alpha=32, batch_size=8, max_length=256, eval_fraction=0.25,
                    save_steps=10_000, seed=seed, min_steps_qa=0, check_train_qa=0, batch_size_memorize=1,
                    replay_examples=0)
    grpo = GRPORecipe(max_steps=b.grpo_steps, prompts_per_step=b.grpo_prompts, num_generations=b.grpo_generations,
                      max_completion_length=b.grpo_completion, learning_rate=b.grpo_lr, temperature=b.grpo_temperature,
                      beta=b.grpo_beta, lr_scheduler_type=b.grpo_scheduler,
                      rewards=("episode", "episode_pass", "episode_finish"), reward_weights=(1.0, 0.0, 0.0),
                      save_steps=10_000, seed=seed, bf16=b.grpo_bf16 or None)
    return sft, grpo


def _tasks(rows: list[dict]) -> list[ToolTask]:
    return [ToolTask(**r) for r in rows]


def play(model_dir: Path, d: ToolDomain, rows: list[dict], b: Budget, batch: int = 16, temperature: float = 0.0,
         repeats: int = 1, seed: int = 0) -> dict:
    """Episodes of `rows` (tool task records) against the domain's simulator -> rates + transcripts. Greedy by
    default; with `temperature` > 0, `repeats` sampled episodes per task, consecutive (a GRPO group)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    gen = GenerationConfig(**sampling, max_new_tokens=b.eval_completion, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    torch.manual_seed(seed)
    tasks = [t for t in _tasks(rows) for _ in range(repeats)]
    rollout = ToolRollout(ToolSpec.model_validate(d.spec()), tasks, max_turns=b.max_turns)
    player = SimpleNamespace(processing_class=tok, model=model, generation_config=gen,
                             args=SimpleNamespace(max_completion_length=b.eval_completion))
    items = []
    for i in range(0, len(tasks), batch):
        part = tasks[i:i + batch]
        out = rollout([[{"role": "user", "content": episode_prompt(t.request)}] for t in part], player)
        for t, ep, ids in zip(part, out["episode"], out["completion_ids"]):
            items.append({"id": t.id, "tool": t.tool, "answer": t.answer, **ep,
                          "transcript": tok.decode(ids, skip_special_tokens=True)})
    n = len(items)
    out = {"n": n, **{m: sum(it[m] for it in items) / n for m in METRICS}, "items": items}
    if repeats > 1:  # what GRPO would see: a group gives a finishing gradient only if its finish reward varies
        groups = [items[i:i + repeats] for i in range(0, n, repeats)]
        out |= {"groups": len(groups), "groups_any_finish": sum(any(it["finish"] for it in g) for g in groups),
                "groups_finish_varies": sum(len({it["finish"] for it in g}) > 1 for g in groups)}
    return out


def choose_lam(evals: dict[float, dict]) -> float:
    """Best pass rate on source episodes, then best finish rate; ties → the smaller λ."""
    return min(evals, key=lambda x: (-evals[x]["pass"], -evals[x]["finish"], x))


def run_seed(seed: int, b: Budget, base: Path, root: Path, keep_models: bool, log: Callable[[str], None],
             dev: bool = False, in_domain_only: bool = False, sft_only: bool = False) -> dict:
    sdir = root / f"seed-{seed}"
    work, steps, evals = sdir / "work", sdir / "steps", sdir / "evals"
    sft_recipe, grpo_recipe = recipes(b, seed)
    source, target = make_tool_domains(DEV_SEED_OFFSET + seed if dev else seed, b.n_services, b.n_families,
                                       b.n_products)
    src_c, tgt_c = work / "corpora" / "source", work / "corpora" / "target"
    for dom, path in ((source, src_c), (target, tgt_c)):
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            write_tool_corpus(dom, tmp)
            tmp.rename(path)

    def sft(corpus: Path, name: str, demos: list[dict] | None = None) -> dict:
        m = run_sft(corpus, work / name, base, sft_recipe, work_dir=work / f"{name}-work", progress=False, demos=demos)
        return {"model": str(work / name), "demos": len(demos or []),
                **{f"{st}_steps": (m.get(st) or {}).get("steps") for st in ("memorize", "qa")}}

    def grpo(init: Path, d: ToolDomain, name: str) -> dict:
        out = work / name
        if not _published(out):
            _fresh(out)
            tasks = _tasks(d.tasks["train"])
            train_grpo(init, grpo_items(tasks), out, grpo_recipe, work_dir=work / f"{name}-work",
                       rollout_func=ToolRollout(ToolSpec.model_validate(d.spec()), tasks, max_turns=b.max_turns))
        g = read_result(out)
        curve = g["reward_curve"]
        return {"model": str(out), "steps": g["steps"], "wall_s_train": g["wall_s"], "reward_curve": curve,
                "per_reward_curves": g["per_reward_curves"], "learning": learning_gate(curve),
                "s_per_step": g["wall_s"] / max(g["steps"], 1)}

    def injected(model: Path, vec: Path, name: str, lam: float) -> dict:
        _fresh(work / name)
        inject(model, vec, work / name, lam=lam, progress=False)
        return {"model": str(work / name), "lam": lam}

    ev = lambda name, model, d, rows: step(evals / f"{name}.json", lambda: play(model, d, rows, b), log)  # noqa: E731
    rec: dict[str, dict] = {}
    demos = finish_demos(source, b.source_finish_demos, seed) if b.source_finish_demos else None
    rec["source_sft"] = step(steps / "source_sft.json", lambda: sft(src_c, "source_sft", demos), log)
    sft_S = work / "source_sft"
    if sft_only:  # the cheap half of a dev probe: does the source SFT model finish its episodes at all?
        got = ev("in_domain-source_sft", sft_S, source, source.tasks["heldout"])
        sampled = {f"T={x:g}": {k: v for k, v in step(evals / f"sampled-T{x:g}-source_sft.json", lambda x=x: play(
            sft_S, source, source.tasks["train"], b, temperature=x, repeats=b.grpo_generations, seed=seed), log).items()
            if k != "items"} for x in b.probe_temperatures}
        return {"seed": seed, "dev": dev, "in_domain": {"source_sft": _slim(got)}, "sampled_train": sampled,
                "steps": {"source_sft": {k: v for k, v in rec["source_sft"].items() if k != "model"}}}
    rec["source_grpo"] = step(steps / "source_grpo.json", lambda: grpo(sft_S, source, "source_grpo"), log)
    rec["vector"] = step(steps / "vector.json", lambda: _fresh(work / "vector") or {
        "manifest_sha": extract(work / "source_grpo", sft_S, work / "vector", progress=False).get("sha256")}, log)
    vec = work / "vector"
    src_held = source.tasks["heldout"]
    in_domain = {"source_sft": ev("in_domain-source_sft", sft_S, source, src_held),
                 "source_grpo": ev("in_domain-source_grpo", work / "source_grpo", source, src_held)}
    if in_domain_only:  # a dev probe of the GRPO settings: stop before anything touches a target
        return {"seed": seed, "dev": dev, "in_domain": {k: _slim(v) for k, v in in_domain.items()},
                "steps": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in rec.items()}}
    src_sel: dict[float, dict] = {}  # λ on source data only (λ = 1 is θ_rl_S itself)
    for x in b.lams:
        model = work / "source_grpo" if x == 1.0 else work / f"source+{x:g}v"
        if x != 1.0:
            step(steps / f"source-inject-{x:g}.json", lambda x=x: injected(sft_S, vec, f"source+{x:g}v", x), log)
        src_sel[x] = in_domain["source_grpo"] if x == 1.0 else ev(f"select-lam={x:g}", model, source, src_held)
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
    rec["target_grpo"] = step(steps / "target_grpo.json", lambda: grpo(sft_T, target, "target_grpo"), log)
    models["target_grpo"] = work / "target_grpo"
    rec["cosine"] = step(steps / "cosine.json", lambda: _cos(analyze(
        vec, base, sft_T, _fresh(sdir / "analysis") or sdir / "analysis", progress=False)), log)

    scores = {arm: _slim(ev(arm, model, target, target.tasks["heldout"])) for arm, model in models.items()}
    scores["past"] = scores[f"lam={lam:g}"] | {"lam": lam}
    if not keep_models and work.exists():
        shutil.rmtree(work)
    return {"seed": seed, "lam": lam, "lam_selection": {f"{x:g}": _slim(e) for x, e in src_sel.items()},
            "in_domain": {k: _slim(v) for k, v in in_domain.items()}, "arms": scores,
            "steps": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in rec.items()}}


def _slim(e: dict) -> dict:
    return {k: e[k] for k in ("n", *METRICS, "wall_s") if k in e} | {
        "examples": [it["transcript"] for it in e.get("items", [])[:2]]}


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
    arms = list(ARMS) + [f"lam={x:g}" for x in res["budget"]["lams"]]
    names = {"base": "base model", "sft": "target SFT only (docs + first calls)",
             "past": "PaST (θ_sft_T + λ·v, λ chosen on source)", "random": "random vector, same per-tensor norm",
             "target_grpo": "target GRPO (upper bound)"}
    out = [f"Command: `{res['command']}` ({res['date']}, total wall {res['total_wall_s'] / 60:.1f} min, seeds "
           f"{[s['seed'] for s in seeds]}). Greedy episodes on the target's held-out tasks (unseen APIs); "
           "mean ± sample sd over seeds.", "",
           "| arm | pass | finish | first call right | all calls valid |", "|---|---:|---:|---:|---:|"]
    for a in arms:
        out.append(f"| {names.get(a, 'post-hoc ' + a.replace('lam', 'λ '))} | "
                   + " | ".join(_ms([s["arms"][a][m] for s in seeds]) for m in METRICS) + " |")
    out += ["", "| arm − target SFT, paired by seed | Δ pass | Δ finish | seeds with Δ pass > 0 |", "|---|---:|---:|---:|"]
    for a in arms[2:]:
        dp = [s["arms"][a]["pass"] - s["arms"]["sft"]["pass"] for s in seeds]
        df = [s["arms"][a]["finish"] - s["arms"]["sft"]["finish"] for s in seeds]
        out.append(f"| {names.get(a, a)} | {_ms(dp)} | {_ms(df)} | {sum(d > 0 for d in dp)} of {len(seeds)} |")
    out += ["", "| seed | λ chosen (source) | source GRPO: reward first 20 → last 20 (gain / sd) | learning gate | "
            "in-domain pass SFT → GRPO | target GRPO gate | s/step | ‖v‖/‖Δ_SFT_T‖ | cos(v, Δ_SFT_T) |",
            "|---:|---:|---|---|---|---|---:|---:|---:|"]
    for s in seeds:
        g, t = s["steps"]["source_grpo"]["learning"], s["steps"]["target_grpo"]["learning"]
        c = s["steps"]["cosine"]
        out.append(f"| {s['seed']} | {s['lam']:g} | {_n(g.get('first_mean'))} → {_n(g.get('last_mean'))} "
                   f"({_n(g.get('gain_in_sd'), '.1f')} sd) | {'pass' if g['passed'] else 'FAIL'} | "
                   f"{s['in_domain']['source_sft']['pass']:.2f} → {s['in_domain']['source_grpo']['pass']:.2f} | "
                   f"{'pass' if t['passed'] else 'FAIL'} | {s['steps']['source_grpo']['s_per_step']:.1f} | "
                   f"{_n(c['skill_over_knowledge_norm'])} | {_n(c['overall_cosine'])} |")
    return "\n".join(out) + "\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--base", type=Path, default=BASE, help="base model folder (a tiny model for a smoke run)")
    ap.add_argument("--out", type=Path, default=REPO / ".bench" / "tools", help="work + checkpoints; rerun to resume")
    ap.add_argument("--keep-models", action="store_true")
    ap.add_argument("--render", type=Path, default=None, help="re-render the report of a finished run's results.json")
    ap.add_argument("--dev", action="store_true", help=f"domains of seed {DEV_SEED_OFFSET}+S (for choosing settings)")
    ap.add_argument("--in-domain-only", action="store_true",
                    help="stop after source SFT + GRPO and the in-domain check (a dev probe of GRPO settings)")
    ap.add_argument("--sft-only", action="store_true",
                    help="stop after source SFT and its in-domain episodes (does it call, does it finish?)")
    add_budget_args(ap, Budget)
    return ap


def run(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.render:
        res = json.loads(args.render.read_text())
        print(report(res))
        return res
    if args.sft_only:
        if args.in_domain_only:
            raise SystemExit("--sft-only and --in-domain-only exclude each other")
        res = run_seeds(args, Budget, functools.partial(run_seed, sft_only=True), "bench/tools.py", argv)
        for s in res["seeds"]:
            print(json.dumps({"seed": s["seed"], "source_sft": s["in_domain"]["source_sft"],
                              "sampled_train": s.get("sampled_train", {})}, indent=1))
        return res
    res = run_seeds(args, Budget, run_seed, "bench/tools.py", argv)
    if args.in_domain_only:
        return res
    text = report(res)
    (args.out / "report.md").write_text(text)
    print(text)
    return res


if __name__ == "__main__":
    run()
