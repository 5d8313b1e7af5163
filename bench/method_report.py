"""Tables, plots and docs/RESULTS.md for bench/method.py (pure functions of its results JSON).

    .venv/bin/python bench/method_report.py bench/results/method/results.json   # re-render without re-running
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

KINDS = ("paraphrase", "doc_only", "two_fact")
NOTES_MARKER = "<!-- generated above; hand-written notes below this line are kept when the report is re-rendered -->"
METRICS = ("correct", "exact_match", "token_f1", "contains")
ORDER = ("base", "sft", "past", "k1", "pre_injection", "sequential", "source_sft_seq", "random", "target_grpo")
LABELS = {"base": "base model", "sft": "target SFT only", "past": "PaST post-hoc (SFT_T + λ·v_K)",
          "k1": "PaST single round (SFT_T + λ·v_1)", "pre_injection": "pre-injection (base + λ·v_K, then SFT_T)",
          "sequential": "sequential (source SFT+GRPO, then SFT_T)",
          "source_sft_seq": "sequential without GRPO (source SFT, then SFT_T)", "random": "random vector, same per-tensor norm",
          "target_grpo": "target GRPO (upper bound)"}


def arm_names(results: dict) -> list[str]:
    present = {a for s in results["seeds"] for a in s["arms"]}
    lams = sorted((a for a in present if a.startswith("lam=")), key=lambda a: float(a[4:]))
    return [a for a in ORDER if a in present] + lams


def values(results: dict, arm: str, kind: str, metric: str) -> list[float]:
    return [s["arms"][arm]["summary"][kind][metric] for s in results["seeds"]
            if arm in s["arms"] and metric in s["arms"][arm]["summary"][kind]]


def mean_sd(xs: list[float | None]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]  # e.g. the cosine of a zero vector is None
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def fmt(xs: list[float], digits: int = 3) -> str:
    m, sd = mean_sd(xs)
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {sd:.{digits}f}"


def cost(results: dict, arm: str, key: str) -> list[float]:
    return [s["arms"][arm][key] for s in results["seeds"] if arm in s["arms"] and key in s["arms"][arm]]


def dev_choice(results: dict) -> dict:
    """The λ with the best mean dev accuracy (gate rule), ties to the smaller λ. Only ever called on dev runs."""
    assert results["dev"], "settings are chosen on dev data only"
    sweep = [a for a in arm_names(results) if a.startswith("lam=")]
    best = max(sweep, key=lambda a: (round(mean_sd(values(results, a, "overall", "correct"))[0], 6), -float(a[4:])))
    return {"lam": float(best[4:]), "dev_accuracy": mean_sd(values(results, best, "overall", "correct"))[0]}


def main_table(results: dict) -> list[str]:
    rows = ["| arm | accuracy | exact match | token-F1 | contains | answer words (mean) | marginal s | one-off s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for a in arm_names(results):
        label = LABELS.get(a, f"post-hoc λ = {a[4:]}")
        cells = [fmt(values(results, a, "overall", m)) for m in METRICS]
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {fmt(values(results, a, 'overall', 'words_mean'), 1)} | "
                    f"{fmt(cost(results, a, 'marginal_s'), 0)} | {fmt(cost(results, a, 'one_off_s'), 0)} |")
    return rows


def kind_table(results: dict) -> list[str]:
    n = results["seeds"][0]["n_heldout"] if results["seeds"] else {}
    head = " | ".join(f"{k} acc (n={n.get(k, '?')}) | {k} F1" for k in KINDS)
    rows = [f"| arm | {head} |", "|---|" + "---:|" * (2 * len(KINDS))]
    for a in arm_names(results):
        cells = [c for k in KINDS for c in (fmt(values(results, a, k, "correct")), fmt(values(results, a, k, "token_f1")))]
        rows.append(f"| {LABELS.get(a, 'λ = ' + a[4:])} | " + " | ".join(cells) + " |")
    return rows


def paired_table(results: dict) -> list[str]:
    """Arm − target SFT, paired within each seed (same target domain, same questions): mean ± sd over seeds."""
    rows = ["| arm − target SFT (paired by seed) | Δ accuracy | Δ exact match | Δ token-F1 | seeds where Δ accuracy > 0 |",
            "|---|---:|---:|---:|---:|"]
    for a in arm_names(results):
        if a in ("sft", "lam=0"):
            continue
        d = {m: [x - y for x, y in zip(values(results, a, "overall", m), values(results, "sft", "overall", m))]
             for m in ("correct", "exact_match", "token_f1")}
        wins = sum(x > 1e-9 for x in d["correct"])
        rows.append(f"| {LABELS.get(a, 'post-hoc λ = ' + a[4:])} | " + " | ".join(fmt(d[m]) for m in d)
                    + f" | {wins} of {len(d['correct'])} |")
    return rows


def grpo_table(results: dict) -> list[str]:
    """Did GRPO learn? Mean reward over the first and last 5 logged steps of each GRPO run, mean ± sd over seeds."""
    runs: dict[str, list[tuple[float, float, float]]] = {}
    for s in results["seeds"]:
        curves = [(f"refresh round {r['round']}", r["grpo"]) for r in s["steps"].get("refresh", {}).get("rounds", [])]
        if "target_grpo" in s["steps"]:
            curves.append(("target GRPO", s["steps"]["target_grpo"]["grpo"]))
        for name, g in curves:
            c, sd = g.get("reward_curve") or [], g.get("reward_std_curve") or []
            if c:
                runs.setdefault(name, []).append((statistics.fmean(c[:5]), statistics.fmean(c[-5:]),
                                                  statistics.fmean(x for x in sd if not math.isnan(x)) if sd else math.nan))
    rows = ["| GRPO run | steps | reward, first 5 steps | reward, last 5 steps | mean within-group reward sd |",
            "|---|---:|---:|---:|---:|"]
    steps = results["budget"]["grpo_steps"]
    for name, xs in runs.items():
        rows.append(f"| {name} | {steps} | {fmt([x[0] for x in xs])} | {fmt([x[1] for x in xs])} | {fmt([x[2] for x in xs])} |")
    return rows


def wall_table(results: dict) -> list[str]:
    """Wall seconds of every checkpointed step (mean ± sd over seeds); evaluations are in the main table."""
    names: dict[str, list[float]] = {}
    for s in results["seeds"]:
        for name, rec in s["steps"].items():
            if isinstance(rec, dict) and "wall_s" in rec:
                names.setdefault(name, []).append(rec["wall_s"])
    return ["| step | wall s |", "|---|---:|"] + [f"| {n} | {fmt(v, 0)} |" for n, v in names.items()]


def ratios(results: dict) -> dict:
    out = {}
    g, p = cost(results, "target_grpo", "marginal_s"), cost(results, "past", "marginal_s")
    if g and p:
        out["target_grpo_over_past_marginal"] = statistics.fmean(x / y for x, y in zip(g, p) if y > 0)
    for a in ("past", "random", "target_grpo", "sequential", "source_sft_seq", "pre_injection", "k1"):
        if values(results, a, "overall", "token_f1") and values(results, "sft", "overall", "token_f1"):
            out[f"{a}_minus_sft_f1"] = statistics.fmean(
                x - y for x, y in zip(values(results, a, "overall", "token_f1"), values(results, "sft", "overall", "token_f1")))
    return out


def cosine_layers(results: dict, tag: str = "K") -> dict[str, list[float]]:
    per: dict[str, list[float]] = {}
    for s in results["seeds"]:
        c = s["steps"].get(f"cosine_{tag}")
        for layer, v in (c or {}).get("per_layer_cosine", {}).items():
            if v is not None:
                per.setdefault(layer, []).append(v)
    return per


def plots(results: dict, dest: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dest.mkdir(parents=True, exist_ok=True)
    paths = {}
    sweep = [a for a in arm_names(results) if a.startswith("lam=")]
    if sweep:
        xs = [float(a[4:]) for a in sweep]
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in METRICS:
            ms = [mean_sd(values(results, a, "overall", m)) for a in sweep]
            ax.errorbar(xs, [x[0] for x in ms], yerr=[x[1] for x in ms], marker="o", capsize=3, label=m)
        for a, style in (("random", ":"), ("target_grpo", "--")):
            if values(results, a, "overall", "correct"):
                ax.axhline(mean_sd(values(results, a, "overall", "correct"))[0], ls=style, color="grey",
                           label=f"{a} (accuracy)")
        ax.set_xlabel("λ  (θ_sft_T + λ·v_K)")
        ax.set_ylabel("held-out target score (mean ± sd over seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths["lambda"] = dest / "results-lambda.png"
        fig.savefig(paths["lambda"], dpi=100)
        plt.close(fig)
    per = cosine_layers(results)
    if per:
        names = sorted(per)
        fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(names)), 3.5))
        ax.bar(names, [mean_sd(per[n])[0] for n in names], yerr=[mean_sd(per[n])[1] for n in names], capsize=2)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_ylabel("cos(Δ_SFT_T, v_K)")
        ax.set_title("per-layer cosine, mean ± sd over seeds")
        ax.tick_params(axis="x", rotation=90)
        fig.tight_layout()
        paths["cosine"] = dest / "results-cosine.png"
        fig.savefig(paths["cosine"], dpi=100)
        plt.close(fig)
    return paths


def print_table(results: dict) -> None:
    print("\n".join(main_table(results) + [""] + kind_table(results) + [""] + paired_table(results)
                    + [""] + grpo_table(results)))
    print(json.dumps(ratios(results), indent=1))


def write_report(results: dict, md: Path) -> None:
    assert not results["dev"], "a dev run never writes the results page"
    md = Path(md)
    figs = plots(results, md.parent)
    b, r = results["budget"], ratios(results)
    cos_all = [s["steps"]["cosine_K"]["overall_cosine"] for s in results["seeds"] if "cosine_K" in s["steps"]]
    norm = [s["steps"]["cosine_K"]["skill_over_knowledge_norm"] for s in results["seeds"] if "cosine_K" in s["steps"]]
    lines = [
        "# Method results: PaST in miniature (SmolLM2-135M, synthetic support domains)", "",
        f"Measured {results['date']} by `bench/method.py`, {len(results['seeds'])} seeds "
        f"({', '.join(str(s['seed']) for s in results['seeds'])}), recorded compute {sum(s['compute_s'] for s in results['seeds']) / 60:.1f} min "
        f"(steps + evaluations; this invocation {results['total_wall_s'] / 60:.1f} min, less when it resumed). "
        "Command (run under the exclusive CPU lock):", "",
        f"    flock -x /tmp/past-cpu.lock .venv/bin/{results['command']}", "",
        f"Base model: `{results['base']}`. Settings from: {results['settings_provenance']}. "
        "Scores are on held-out target questions only; mean ± sample sd over seeds. "
        "`accuracy` is the gate's rule without a judge (token-F1 ≥ 0.6 or reference contained), and a comparison "
        "answer that names both products is wrong.", "",
        "## Overall", "", *main_table(results), "",
        "`marginal s`: wall time one more target corpus costs with the arm (target SFT, inject, target GRPO); "
        "`one-off s`: the shared source refresh it needs. λ = 0 is the target-SFT model itself.", "",
        "## Per question kind", "", *kind_table(results), "",
        "A two_fact question names both products, so its `contains` column credits an answer that repeats both "
        "names (the base model scores this way); `accuracy` does not.", "",
        "## Against target SFT, paired by seed", "", *paired_table(results), "",
        "## Did GRPO learn?", "", *grpo_table(results), "",
        "## Cost and effect", "",
        f"- target GRPO / PaST marginal wall time: **{r.get('target_grpo_over_past_marginal', math.nan):.2f}×**",
        *[f"- {k.replace('_minus_sft_f1', '')} − target SFT, overall token-F1: {v:+.4f}" for k, v in r.items()
          if k.endswith("_minus_sft_f1")],
        f"- cos(Δ_SFT_T, v_K) overall: {fmt(cos_all, 4)}; ‖v_K‖ / ‖Δ_SFT_T‖: {fmt(norm, 4)}", "",
        "## Plots", "", *[f"![{k}]({p.name})" for k, p in figs.items()], "",
        "## Wall time per step", "", *wall_table(results), "",
        "## Budget", "", "```", json.dumps(b, indent=1), "```", "",
        "Reuse: one K-round refresh per seed gives v_1 (the single-round arm is round 1, i.e. half the source data "
        "and GRPO steps), v_K and θ_rl_K (sequential); the λ sweep only re-injects into θ_sft_T. Raw numbers, "
        "answers included: `results.json` in the run's --out folder.", ""]
    keep = md.read_text().split(NOTES_MARKER, 1)[1] if md.is_file() and NOTES_MARKER in md.read_text() else "\n"
    md.write_text("\n".join(lines) + NOTES_MARKER + keep)


if __name__ == "__main__":
    res = json.loads(Path(sys.argv[1]).read_text())
    print_table(res)
    if len(sys.argv) > 2 and not res["dev"]:
        write_report(res, Path(sys.argv[2]))
