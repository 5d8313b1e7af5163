"""Benchmark: skill-vector inject vs mergekit task_arithmetic vs `cp -r`, on synthetic ~1B bf16 Llamas.

    flock -x /tmp/past-cpu.lock .venv/bin/python bench/skill_inject.py   (or `make bench-skill`)

Generates θ_sft_S, θ_rl_S = θ_sft_S + δ_rl, θ_sft_T = θ_sft_S + δ_T (random, bf16, sharded safetensors) in a
scratch folder outside the repo (kept between runs), extracts v once per storage dtype (time + size), then per
repeat, side by side: our inject (`past skill inject` CLI in a subprocess), mergekit task_arithmetic computing
the same θ_final = θ_sft_S + 1·(θ_sft_T − θ_sft_S) + λ·(θ_rl_S − θ_sft_S) in its own venv, and `cp -r` of one
checkpoint as the floor. Before each timed command: `sync`, then its inputs are read once (page cache
warmed the same way for each). Wall time and peak RSS come from /usr/bin/time. Every output tensor
is then checked against a float64 reference: |out − ref| must not exceed one bf16 ulp of ref.

`--sync` (the default since 2026-12-06) times each command *and a `sync` after it*: every contender's output is
on disk when its clock stops. Without it, how much of a 2 GB write the kernel flushes inside the timed window
is chance, and `cp` of the same bytes varied 1.56–6.29 s between repeats (docs/BENCHMARKS.md). The ratio to `cp`
is also taken per repeat (this repeat's inject / this repeat's cp), so a slow disk moment hits both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from past.tensors import ModelReader, chunk_ranges  # noqa: E402
from past.skill import read_vector, verify_vector  # noqa: E402

CONFIG = dict(  # Llama-shaped, 20 layers, untied head: 1.01B parameters
    architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048, intermediate_size=5632,
    num_hidden_layers=20, num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
    max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="bfloat16",
    bos_token_id=1, eos_token_id=2,
)


def shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, i, v, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_key_value_heads"]
    hd = h // cfg["num_attention_heads"]
    out = {"model.embed_tokens.weight": (v, h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv * hd, h),
                p + "self_attn.v_proj.weight": (kv * hd, h), p + "self_attn.o_proj.weight": (h, h),
                p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i)}
    return out | {"model.norm.weight": (h,), "lm_head.weight": (v, h)}


def generate(root: Path, cfg: dict, shard_bytes: int = 1 << 30) -> dict[str, Path]:
    """Three checkpoints sharing one random draw per tensor (seeded), written as ~1 GB safetensors shards."""
    from safetensors.torch import save_file

    dirs = {k: root / k for k in ("sft_S", "rl_S", "sft_T")}
    if (root / "done").exists():
        return dirs
    shutil.rmtree(root, ignore_errors=True)
    for d in dirs.values():
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
        (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    g = torch.Generator().manual_seed(0)
    cur: dict[str, dict[str, torch.Tensor]] = {k: {} for k in dirs}
    n, size, weight_map = 0, 0, {}

    def flush() -> None:
        for key, d in dirs.items():
            save_file(cur[key], d / f"part-{n}", metadata={"format": "pt"})
            cur[key] = {}

    for name, shape in shapes(cfg).items():
        base = torch.randn(shape, generator=g) * 0.02 if len(shape) > 1 else torch.ones(shape)
        rl = base + torch.randn(shape, generator=g) * 2e-4  # RL: a small update (~1% of the weights)
        tgt = base + torch.randn(shape, generator=g) * 2e-4  # target SFT: another small update
        if size and size + base.numel() * 2 > shard_bytes:  # keep about one shard per checkpoint in memory
            flush()
            n, size = n + 1, 0
        for k, t in (("sft_S", base), ("rl_S", rl), ("sft_T", tgt)):
            cur[k][name] = t.to(torch.bfloat16)
        size += base.numel() * 2
        weight_map[name] = n
    flush()
    n += 1
    for d in dirs.values():
        for k in range(n):
            os.rename(d / f"part-{k}", d / f"model-{k + 1:05d}-of-{n:05d}.safetensors")
        wm = {name: f"model-{s + 1:05d}-of-{n:05d}.safetensors" for name, s in weight_map.items()}
        total = sum(p.stat().st_size for p in d.glob("*.safetensors"))
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": wm}, indent=2))
    (root / "done").write_text("ok")
    return dirs


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def warm(*dirs: Path) -> None:
    """sync dirty pages, then read the inputs once so every contender starts from the same warm cache."""
    subprocess.run(["sync"], check=True)
    for d in dirs:
        for p in sorted(d.glob("*")):
            if p.is_file():
                with open(p, "rb") as f:
                    while f.read(1 << 24):
                        pass


def timed(cmd: list[str], env: dict | None = None, sync: bool = False) -> tuple[float, float]:
    """Run a command under /usr/bin/time: (wall seconds, peak RSS in MB of the command's process).

    /usr/bin/time is a small process, so the figure is not polluted by this script's own memory (a child
    forked from a big parent inherits its RSS high-water mark through exec). `sync`: the clock also covers a
    `sync` after the command (its output on disk); the shell's peak RSS includes the command's (wait4).
    """
    if sync:
        cmd = ["sh", "-c", '"$@" && sync', "sh", *cmd]
    p = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, env=env, text=True)
    if p.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    _, wall, kb = p.stderr.strip().splitlines()[-1].split()
    return float(wall), float(kb) / 1024


def check_close(out: Path, dirs: dict[str, Path], lam: float, strict: bool = True) -> dict[str, float]:
    """Stream every tensor: |out − ref64| ≤ one bf16 ulp of ref64, ref64 = sft_T + λ(rl_S − sft_S) in float64."""
    readers = {k: ModelReader.open_model(d) for k, d in dirs.items()} | {"out": ModelReader.open_model(out)}
    worst, exact, total = 0.0, 0, 0
    for name, info in readers["sft_T"].tensors.items():
        for start, n in chunk_ranges(info):
            x = {k: r.read(r.tensors[name], start, n).double() for k, r in readers.items()}
            ref = x["sft_T"] + lam * (x["rl_S"] - x["sft_S"])
            _, e = torch.frexp(ref.to(torch.bfloat16).double())
            ulp = torch.ldexp(torch.ones_like(ref), e - 8)  # |r| in [2^(e-1), 2^e): bf16 spacing 2^(e-8)
            err = ((x["out"] - ref).abs() / ulp).max().item()
            if err > 1.0 and strict:
                raise SystemExit(f"{out}: tensor {name} is {err:.2f} bf16 ulps from the float64 reference")
            worst = max(worst, err)
            exact += int((x["out"] == ref.to(torch.bfloat16).double()).sum())
            total += n
    for r in readers.values():
        r.close()
    return {"max_ulp": worst, "exact_fraction": exact / total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/past-bench-skill"), help="scratch folder")
    ap.add_argument("--mergekit-python", type=Path, default=Path("/tmp/mergekit-venv/bin/python"),
                    help="python of a venv with mergekit installed")
    ap.add_argument("--lam", type=float, default=1.0, help="λ")
    ap.add_argument("--repeats", type=int, default=3, help="side-by-side repeats")
    ap.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"], help="decoder layers (20 = 1.01B)")
    ap.add_argument("--no-verify", action="store_true", help="skip the float64 check of the outputs")
    ap.add_argument("--sync", action=argparse.BooleanOptionalAction, default=True,
                    help="time each command with a sync after it (its output on disk)")
    args = ap.parse_args()
    past_bin = str(REPO / ".venv" / "bin" / "past")
    stamps = args.scratch / "sha256-stamps"  # past.models.sha256_stamped: verified shards are not re-read
    shutil.rmtree(stamps, ignore_errors=True)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PAST_HOME": str(args.scratch / "home"), "PAST_SHA256_CACHE": str(stamps)}

    t0 = time.perf_counter()
    dirs = generate(args.scratch / f"models-{args.layers}l", CONFIG | {"num_hidden_layers": args.layers})
    n_params = sum(i.numel for i in ModelReader.open_model(dirs["sft_S"]).tensors.values())
    print(f"checkpoints: {n_params / 1e9:.3f}B params, {dir_bytes(dirs['sft_S']) / 1e9:.2f} GB each "
          f"(ready in {time.perf_counter() - t0:.0f} s)")

    vectors, rows = {}, {}
    for dtype in ("float32", "bfloat16"):
        v = args.scratch / f"vector-{dtype}"
        shutil.rmtree(v, ignore_errors=True)
        warm(dirs["rl_S"], dirs["sft_S"])
        wall, rss = timed([past_bin, "skill", "extract", "--rl", str(dirs["rl_S"]), "--sft", str(dirs["sft_S"]),
                           "--out", str(v), "--dtype", dtype], env)
        vectors[dtype] = v
        print(f"extract ({dtype} vector): {wall:.1f} s, {rss:.0f} MB peak RSS, {dir_bytes(v) / 1e9:.2f} GB")
    # A stored vector is verified once (by its first inject) and then stamped; "first use" turns stamps off and
    # so reads the whole vector again, as every inject did before stamps.
    time.sleep(2.5)  # past.models.RACY_S: a file written in the last 2 s is never stamped
    os.environ["PAST_SHA256_CACHE"] = str(stamps)
    for v in vectors.values():
        verify_vector(v, read_vector(v)[0])

    mk_cfg = args.scratch / "mergekit.yml"
    mk_cfg.write_text(json.dumps({  # JSON is valid YAML
        "merge_method": "task_arithmetic", "base_model": str(dirs["sft_S"]),
        "models": [{"model": str(dirs["sft_T"]), "parameters": {"weight": 1.0}},
                   {"model": str(dirs["rl_S"]), "parameters": {"weight": args.lam}}],
        "parameters": {"normalize": False}, "dtype": "float32", "out_dtype": "bfloat16",
    }, indent=2))
    outs = {k: args.scratch / f"out-{k}" for k in ("past-f32v", "past-f32v-cold", "past-bf16v", "mergekit", "cp")}
    inject_f32 = lambda o: [past_bin, "skill", "inject", "--model", str(dirs["sft_T"]),  # noqa: E731
                            "--vector", str(vectors["float32"]), "--lam", str(args.lam), "--out", str(o)]
    contenders = {
        "past inject (fp32 vector)": ("past-f32v", [dirs["sft_T"], vectors["float32"]], inject_f32),
        "past inject (fp32 vector, first use: stamps off)": ("past-f32v-cold", [dirs["sft_T"], vectors["float32"]],
                                                             inject_f32),
        "past inject (bf16 vector)": ("past-bf16v", [dirs["sft_T"], vectors["bfloat16"]], lambda o: [
            past_bin, "skill", "inject", "--model", str(dirs["sft_T"]), "--vector", str(vectors["bfloat16"]),
            "--lam", str(args.lam), "--out", str(o)]),
        "mergekit task_arithmetic": ("mergekit", [dirs["sft_S"], dirs["sft_T"], dirs["rl_S"]], lambda o: [
            str(args.mergekit_python.parent / "mergekit-yaml"), str(mk_cfg), str(o), "--quiet"]),
        "cp -r (floor)": ("cp", [dirs["sft_T"]], lambda o: ["cp", "-r", str(dirs["sft_T"]), str(o)]),
    }
    for rep in range(args.repeats):
        for label, (key, inputs, cmd) in contenders.items():
            shutil.rmtree(outs[key], ignore_errors=True)
            warm(*inputs)
            wall, rss = timed(cmd(outs[key]), env | ({"PAST_SHA256_CACHE": "off"} if key.endswith("-cold") else {}),
                              sync=args.sync)
            rows.setdefault(label, []).append((wall, rss))
            print(f"  repeat {rep + 1}: {label}: {wall:.2f} s, {rss:.0f} MB")
        if rep == 0 and not args.no_verify:
            for key in ("past-f32v", "past-bf16v", "mergekit"):  # a bf16-stored vector is lossy: report only
                stats = check_close(outs[key], dirs, args.lam, strict=key != "past-bf16v")
                print(f"  check {key} vs float64 reference (max error in bf16 ulps): {stats}")

    med = {k: statistics.median(w for w, _ in v) for k, v in rows.items()}
    ours, mk, cp = med["past inject (fp32 vector)"], med["mergekit task_arithmetic"], med["cp -r (floor)"]
    print(f"\n| contender | wall s (median of {args.repeats}) | min–max | peak RSS MB (max) | "
          "mergekit / this | this / cp |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, v in rows.items():
        walls = [w for w, _ in v]
        print(f"| {label} | {med[label]:.2f} | {min(walls):.2f}–{max(walls):.2f} | {max(r for _, r in v):.0f} | "
              f"{mk / med[label]:.2f}× | {med[label] / cp:.2f}× |")
    paired = statistics.median(o / c for (o, _), (c, _) in zip(rows["past inject (fp32 vector)"], rows["cp -r (floor)"]))
    print(f"\ntargets ({'with' if args.sync else 'without'} a sync in each timing): ≥3× faster than mergekit: "
          f"{mk / ours:.2f}× ; within 3× of cp: {ours / cp:.2f}× by medians, {paired:.2f}× paired per repeat "
          f"(median) ; RSS < 1 GB: {max(r for _, r in rows['past inject (fp32 vector)']):.0f} MB")
    for o in outs.values():
        shutil.rmtree(o, ignore_errors=True)


if __name__ == "__main__":
    main()
