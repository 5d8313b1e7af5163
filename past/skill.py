"""Skill vectors: extract `v = θ_rl − θ_sft`, inject `θ_final = θ_sft_T + λ·v`, analyze orthogonality.

Every operation streams tensors chunk by chunk (past/tensors.py), so memory stays at a few small buffers
whatever the model size. All arithmetic is `a + α·b` accumulated in fp32 (fp64 if an operand is fp64) and
rounded once into the output dtype.

A skill-vector folder holds safetensors shards (`skill*.safetensors`) and `skill.json`: format version,
architecture fingerprint of the source models (config essentials + every tensor's name, shape, dtype),
storage dtype, sha256 and size per shard, per-tensor L2 norms, and lineage fields that the refresh flow fills
(source corpus ids, partitions, rounds, reward summary). Non-float tensors and (for LoRA sources) modules
the adapter does not touch are absent from the vector: inject copies those from the target.

Bad input raises `SkillError` (semantics) or `TensorIOError` (files) naming the tensor or file, and nothing
is left at the destination: outputs are written into a staging folder that is renamed only when complete.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from past.errors import PastError
from past.models import MANIFEST as MODEL_MANIFEST, publish_dir, sha256_stamped, staging_dir, write_manifest
from past.tensors import DTYPES, FLOATS, NAMES, ModelReader, ShardedWriter, TensorInfo, buffer, chunk_ranges

FORMAT, FORMAT_VERSION, MANIFEST = "past-skill-vector", 1, "skill.json"
MAX_ABS_LAM = 10.0  # |λ| beyond this is a typo, not a choice (the method uses λ = 1)
CONFIG_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings")
LINEAGE_DEFAULTS = {"source_corpus_ids": [], "partitions": [], "rounds": None, "reward_summary": {}}
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", MODEL_MANIFEST, "*.bin", "*.pt", "*.pth",
                "*.ckpt", "*.pkl", "adapter_config.json")


class SkillError(PastError):
    """A skill vector, model or argument that does not fit: mismatch, non-finite value, bad λ, bad manifest."""


# --- the arithmetic ------------------------------------------------------------------------------------------
def axpy(a: torch.Tensor, b: torch.Tensor, alpha: float, out: torch.Tensor, scratch: tuple) -> torch.Tensor:
    """out = a + alpha·b, accumulated in fp32 (fp64 if any operand is fp64), rounded once to out.dtype.

    Same-dtype operands take torch's fused kernel: for bf16/fp16 on CPU it widens to fp32 (opmath), does a
    fused multiply-add and rounds once, which is the same result as the explicit path below, only faster.
    That kernel first casts alpha to the tensors' dtype, so it is used only when alpha survives the cast
    (λ = ±1, 0.5, ...); a λ like 0.7 goes through the explicit fp32 path.
    """
    if a.dtype == b.dtype == out.dtype and float(torch.tensor(alpha, dtype=a.dtype)) == alpha:
        return torch.add(a, b, alpha=alpha, out=out)
    wide = torch.float64 if torch.float64 in (a.dtype, b.dtype, out.dtype) else torch.float32
    acc = scratch[0].view(wide)[: a.numel()].copy_(a)
    if b.dtype != wide:
        b = scratch[1].view(wide)[: b.numel()].copy_(b)
    acc.add_(b, alpha=alpha)
    return out.copy_(acc)


def _finite(x: torch.Tensor) -> bool:
    """No NaN/Inf in x. A sum is one cheap pass that NaN/Inf always poison; only when it is not finite
    (or overflowed) is the exact, slower element-wise test run."""
    return not x.is_floating_point() or math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


@contextmanager
def _compute_threads():
    """Leave two cores to the writer (write + sha256) and checksum threads: hashing, not arithmetic, is
    the larger cost, and on a 2-core box torch's second thread only fights them (measured: ~1.6x faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, (os.cpu_count() or 1) - 2)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not _finite(x):
        raise SkillError(f"{what} contains NaN or Inf")


# --- fingerprints and manifests --------------------------------------------------------------------------------
def config_essentials(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SkillError(f"{path}: unreadable model config ({e})") from None
    return {k: cfg[k] for k in CONFIG_KEYS if k in cfg}


def fingerprint(model_dir: Path, reader: ModelReader) -> dict:
    return {"config": config_essentials(model_dir),
            "tensors": {n: {"dtype": i.dtype, "shape": list(i.shape)} for n, i in reader.tensors.items()}}


def check_same_architecture(expected: dict, got: dict, what: str) -> None:
    """Config essentials, tensor names, shapes and dtypes must all agree; the first difference is named."""
    for key in sorted(set(expected["config"]) | set(got["config"])):
        if expected["config"].get(key) != got["config"].get(key):
            raise SkillError(f"{what}: architecture mismatch on config {key!r}: "
                             f"{got['config'].get(key)!r} (expected {expected['config'].get(key)!r})")
    exp, have = expected["tensors"], got["tensors"]
    if missing := sorted(set(exp) - set(have)):
        raise SkillError(f"{what}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    if extra := sorted(set(have) - set(exp)):
        raise SkillError(f"{what}: unexpected extra tensor {extra[0]!r} ({len(extra)} extra)")
    for name in exp:
        if exp[name]["shape"] != have[name]["shape"]:
            raise SkillError(f"{what}: tensor {name!r} has shape {have[name]['shape']} "
                             f"(expected {exp[name]['shape']})")
        if exp[name]["dtype"] != have[name]["dtype"]:
            raise SkillError(f"{what}: tensor {name!r} has dtype {have[name]['dtype']} "
                             f"(expected {exp[name]['dtype']}); convert the model first")


def read_vector(vector_dir: Path) -> tuple[dict, ModelReader]:
    """Load a skill vector's manifest and open its shards; checks format, sizes and tensor headers (not sha256)."""
    vector_dir = Path(vector_dir)
    path = vector_dir / MANIFEST
    try:
        m = json.loads(path.read_text())
        assert m["format"] == FORMAT, f"format is {m['format']!r}, not {FORMAT!r}"
        assert m["format_version"] == FORMAT_VERSION, f"unsupported format_version {m['format_version']}"
        storage, shards, tensors = m["storage_dtype"], m["shards"], m["tensors"]
        arch = m["architecture"]["tensors"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AssertionError) as e:
        raise SkillError(f"{path}: not a readable skill-vector manifest ({e})") from None
    for fname, meta in shards.items():
        f = vector_dir / fname
        if not f.is_file():
            raise SkillError(f"{f}: shard listed in {MANIFEST} is missing")
        if f.stat().st_size != meta["bytes"]:
            raise SkillError(f"{f}: {f.stat().st_size} bytes but {MANIFEST} says {meta['bytes']} (truncated?)")
    reader = ModelReader([vector_dir / f for f in shards])
    if set(reader.tensors) != set(tensors):
        odd = sorted(set(reader.tensors) ^ set(tensors))[0]
        raise SkillError(f"{vector_dir}: tensor {odd!r} is in the shards or the manifest but not both")
    for name, info in reader.tensors.items():
        if name not in arch or list(info.shape) != arch[name]["shape"] or info.dtype != storage:
            raise SkillError(f"{info.file}: tensor {name!r} ({info.dtype} {list(info.shape)}) does not match "
                             f"the manifest (storage {storage}, fingerprint {arch.get(name)})")
    return m, reader


def verify_vector(vector_dir: Path, manifest: dict) -> None:
    """sha256 of every shard against the manifest (run in a background thread during inject); an unchanged
    shard already verified is not read again (`past.models.sha256_stamped`)."""
    for fname, meta in manifest["shards"].items():
        if sha256_stamped(Path(vector_dir) / fname) != meta["sha256"]:
            raise SkillError(f"{Path(vector_dir) / fname}: sha256 does not match {MANIFEST}; the vector is corrupt")


def _refuse_existing(out: Path) -> None:
    if Path(out).exists():
        raise SkillError(f"{out} already exists; choose a new output folder")


def _bar(total: int, desc: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not progress, leave=False)


# --- extract -------------------------------------------------------------------------------------------------
def extract(rl: Path, sft: Path, out: Path, dtype: str = "float32", lineage: dict | None = None,
            max_shard_bytes: int = 4 << 30, progress: bool = True) -> dict:
    """Write the skill vector v = θ_rl − θ_sft to `out`; returns its manifest.

    `rl` is a model folder, or a PEFT LoRA adapter trained on top of `sft` (then v is the merged adapter
    delta B·A·scaling per target module). `dtype` is the storage dtype (float32 keeps the difference of bf16
    or fp32 weights exact in practice; bfloat16 halves the size). `lineage` fills the manifest's lineage
    fields (keys: source_corpus_ids, partitions, rounds, reward_summary; extra keys are kept).
    """
    rl, sft, out = Path(rl), Path(sft), Path(out)
    _refuse_existing(out)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise SkillError(f"storage dtype {dtype!r} not supported (float32, bfloat16, float16)")
    storage = NAMES[getattr(torch, dtype)]
    with ModelReader.open_model(sft) as base:
        arch = fingerprint(sft, base)
        rl_r: ModelReader | None = None
        if (rl / "adapter_config.json").is_file():
            source, deltas = "lora", lora_deltas(rl, base)
            plan = [(n, storage, base.tensors[n].shape) for n in deltas]
        else:
            source, deltas = "full", None
            rl_r = ModelReader.open_model(rl)
            try:
                check_same_architecture(arch, fingerprint(rl, rl_r), f"{rl} vs {sft}")
            except BaseException:
                rl_r.close()
                raise
            plan = [(n, storage, i.shape) for n, i in base.tensors.items() if i.dtype in FLOATS]
        tmp = staging_dir(out)
        writer = ShardedWriter(tmp, plan, prefix="skill", max_shard_bytes=max_shard_bytes)
        norms: dict[str, float] = {}
        try:
            scratch = (buffer(), buffer())
            with _bar(writer.total_bytes, "extract", progress) as bar, _compute_threads():
                for name, _, shape in plan:
                    sq = 0.0
                    if deltas is not None:
                        full = deltas[name]().reshape(-1)
                    for start, n in chunk_ranges(base.tensors[name]):
                        o = writer.buffer()
                        dst = o.view(DTYPES[storage])[:n]
                        if deltas is not None:
                            dst.copy_(full[start:start + n])
                        else:
                            a = rl_r.read(rl_r.tensors[name], start, n)
                            b = base.read(base.tensors[name], start, n)
                            axpy(a, b, -1.0, dst, scratch)
                        _check_finite(dst, f"skill delta of tensor {name!r} (from {rl} and {sft})")
                        sq += float(torch.linalg.vector_norm(dst, dtype=torch.float32)) ** 2
                        writer.put(o, n * dst.element_size())
                        bar.update(n * dst.element_size())
                    norms[name] = math.sqrt(sq)
            shards = writer.close()
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "created": time.time(),
                "storage_dtype": storage, "source": {"kind": source, "rl": str(rl), "sft": str(sft)},
                "architecture": arch, "shards": shards,
                "tensors": {n: {"shard": writer.weight_map[n], "norm": norms[n]} for n, _, _ in plan},
                "norm": math.sqrt(sum(v * v for v in norms.values())),
                "lineage": {**LINEAGE_DEFAULTS, **(lineage or {})},
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            publish_dir(tmp, out)
            return manifest
        except BaseException:
            writer.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if rl_r is not None:
                rl_r.close()


def lora_deltas(adapter_dir: Path, base: ModelReader) -> dict[str, Callable[[], torch.Tensor]]:
    """Merged-adapter deltas of a PEFT LoRA adapter: {base tensor name: () -> B·A·scaling in fp32}.

    The config is read by PEFT itself (rank/alpha patterns and rsLoRA included); weights only from
    adapter_model.safetensors. DoRA, embedding adapters and modules_to_save are refused: their effect is not
    a plain B·A delta.
    """
    from peft import PeftConfig  # noqa: PLC0415 - only LoRA sources need PEFT
    from peft.utils.other import get_pattern_key  # noqa: PLC0415
    from safetensors import safe_open  # noqa: PLC0415

    try:
        cfg = PeftConfig.from_pretrained(str(adapter_dir))
    except Exception as e:  # noqa: BLE001 - PEFT raises many kinds
        raise SkillError(f"{adapter_dir}/adapter_config.json: unreadable PEFT config ({e})") from None
    if str(getattr(cfg.peft_type, "value", cfg.peft_type)) != "LORA" or getattr(cfg, "use_dora", False):
        raise SkillError(f"{adapter_dir}: only plain LoRA adapters are supported (got {cfg.peft_type}, "
                         f"use_dora={getattr(cfg, 'use_dora', False)})")
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        raise SkillError(f"{weights} missing (pickle adapter_model.bin is refused: safetensors only)")
    pairs: dict[str, dict[str, TensorInfo]] = {}
    for key, info in ModelReader([weights]).tensors.items():
        m = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
        if not m:
            raise SkillError(f"{weights}: adapter tensor {key!r} is not a LoRA A/B matrix "
                             "(embedding adapters and modules_to_save are not supported)")
        pairs.setdefault(m.group(1), {})[m.group(2)] = info
    deltas = {}
    for module, ab in pairs.items():
        name = f"{module}.weight"
        if name not in base.tensors or set(ab) != {"A", "B"}:
            raise SkillError(f"{weights}: LoRA module {module!r} has no base tensor {name!r} or lacks A/B")
        (r, fan_in), (fan_out, r_b) = ab["A"].shape, ab["B"].shape
        shape = (fan_in, fan_out) if cfg.fan_in_fan_out else (fan_out, fan_in)
        if r != r_b or tuple(base.tensors[name].shape) != shape:
            raise SkillError(f"{weights}: LoRA module {module!r} (A {ab['A'].shape}, B {ab['B'].shape}) does not "
                             f"fit base tensor {name!r} {base.tensors[name].shape}")
        alpha = cfg.alpha_pattern.get(get_pattern_key(cfg.alpha_pattern.keys(), module), cfg.lora_alpha)
        scale = alpha / (math.sqrt(r) if cfg.use_rslora else r)

        def delta(ab=ab, scale=scale) -> torch.Tensor:
            with safe_open(weights, "pt") as f:
                d = f.get_tensor(ab["B"].name).float() @ f.get_tensor(ab["A"].name).float() * scale
            return d.T if cfg.fan_in_fan_out else d

        deltas[name] = delta
    return deltas


# --- inject --------------------------------------------------------------------------------------------------
def check_lam(lam: float, what: str = "λ") -> float:
    lam = float(lam)
    if not math.isfinite(lam) or abs(lam) > MAX_ABS_LAM:
        raise SkillError(f"{what} = {lam} is not a finite number within ±{MAX_ABS_LAM}")
    return lam


def lam_for(name: str, lam: float, include: Iterable[str], exclude: Iterable[str],
            overrides: Iterable[tuple[str, float]]) -> float:
    """λ applied to one tensor: 0 if filtered out, else the first matching override, else the global λ."""
    if not any(fnmatch.fnmatchcase(name, g) for g in include) or any(fnmatch.fnmatchcase(name, g) for g in exclude):
        return 0.0
    return next((lam_g for g, lam_g in overrides if fnmatch.fnmatchcase(name, g)), lam)


def inject(model: Path, vector: Path, out: Path, lam: float = 1.0, include: Iterable[str] = ("*",),
           exclude: Iterable[str] = (), overrides: Iterable[tuple[str, float]] = (),
           max_shard_bytes: int = 4 << 30, progress: bool = True) -> Path:
    """Write θ_final = θ_sft_T + λ·v as a complete model folder at `out` (weights, config, tokenizer,
    generation config, chat template, past-model.json checksums).

    Tensors absent from the vector, filtered out by include/exclude globs, or with λ = 0 are copied bit for
    bit; `overrides` is a list of (glob, λ) pairs, the first match wins over the global λ.
    """
    model, vector, out = Path(model), Path(vector), Path(out)
    _refuse_existing(out)
    lam = check_lam(lam)
    include, exclude = list(include), list(exclude)
    overrides = [(g, check_lam(v, f"λ for {g!r}")) for g, v in overrides]
    manifest, vec = read_vector(vector)
    pool = ThreadPoolExecutor(1, thread_name_prefix="past-verify")
    tmp: Path | None = None
    writer: ShardedWriter | None = None
    try:
        checksums = pool.submit(verify_vector, vector, manifest)  # overlaps with the arithmetic below
        with ModelReader.open_model(model) as target:
            check_same_architecture(manifest["architecture"], fingerprint(model, target),
                                    f"{model} vs the skill vector's source")
            tmp = staging_dir(out)
            plan = [(n, i.dtype, i.shape) for n, i in target.tensors.items()]
            writer = ShardedWriter(tmp, plan, prefix="model", max_shard_bytes=max_shard_bytes)
            scratch = (buffer(), buffer())
            grafted = 0
            with _bar(writer.total_bytes, "inject", progress) as bar, _compute_threads():
                for name, info in target.tensors.items():
                    lam_t = lam_for(name, lam, include, exclude, overrides) if name in vec.tensors else 0.0
                    grafted += lam_t != 0.0
                    for start, n in chunk_ranges(info):
                        o = writer.buffer()
                        dst = o.view(info.torch_dtype)[:n]
                        if lam_t == 0.0:
                            _check_finite(dst.copy_(target.read(info, start, n)), f"{info.file}: tensor {name!r}")
                        else:
                            t = target.read(info, start, n)
                            v = vec.read(vec.tensors[name], start, n)
                            axpy(t, v, lam_t, dst, scratch)
                            if not _finite(dst):
                                _check_finite(t, f"{info.file}: tensor {name!r}")
                                _check_finite(v, f"{vec.tensors[name].file}: tensor {name!r}")
                                raise SkillError(f"tensor {name!r} overflows {info.dtype} with λ = {lam_t}")
                        writer.put(o, n * dst.element_size())
                        bar.update(n * dst.element_size())
            hashes = {f: meta["sha256"] for f, meta in writer.close().items()}
        for f in sorted(model.iterdir()):  # config, tokenizer, generation config, chat template, ...
            if f.is_file() and not any(fnmatch.fnmatch(f.name, g) for g in WEIGHT_FILES):
                shutil.copy2(f, tmp / f.name)
        checksums.result()
        write_manifest(tmp, hashes=hashes, source="past skill inject", skill={
            "model": str(model), "vector": str(vector), "vector_sha256": {k: v["sha256"] for k, v in
                                                                          manifest["shards"].items()},
            "lam": lam, "include": include, "exclude": exclude, "overrides": overrides,
            "tensors_grafted": grafted})
        return publish_dir(tmp, out)
    except BaseException:
        if writer is not None:
            writer.abort()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        pool.shutdown(wait=True)
        vec.close()


# --- analyze -------------------------------------------------------------------------------------------------
def _layer(name: str) -> str:
    m = re.search(r"layers\.(\d+)\.", name)
    return f"layer {int(m.group(1)):03d}" if m else "other"


def analyze(vector: Path, base: Path, tuned: Path, out: Path, progress: bool = True) -> dict:
    """Orthogonality report: cosine between the knowledge delta k = θ_tuned − θ_base and the skill vector v,
    per tensor and per layer, with norms relative to the base weights. Writes report.json, report.md and
    cosine.png to `out`; returns the report."""
    vector, base, tuned, out = Path(vector), Path(base), Path(tuned), Path(out)
    _refuse_existing(out)
    manifest, vec = read_vector(vector)
    verify_vector(vector, manifest)
    rows: dict[str, dict[str, float]] = {}
    with vec, ModelReader.open_model(base) as b_r, ModelReader.open_model(tuned) as t_r:
        arch = manifest["architecture"]
        check_same_architecture(arch, fingerprint(base, b_r), f"{base} vs the skill vector's source")
        check_same_architecture(arch, fingerprint(tuned, t_r), f"{tuned} vs the skill vector's source")
        bufs = [buffer() for _ in range(5)]
        total = sum(i.numel for i in vec.tensors.values())
        with tqdm(total=total, desc="analyze", unit="param", unit_scale=True, disable=not progress) as bar:
            for name, vi in vec.tensors.items():
                acc = dict.fromkeys(("kv", "kk", "vv", "bb"), 0.0)
                for start, n in chunk_ranges(vi):
                    bw = bufs[0].view(torch.float32)[:n].copy_(b_r.read(b_r.tensors[name], start, n))
                    k = axpy(t_r.read(t_r.tensors[name], start, n), bw, -1.0, bufs[1].view(torch.float32)[:n],
                             bufs[2:4])
                    v = bufs[4].view(torch.float32)[:n].copy_(vec.read(vi, start, n))
                    acc["kv"] += float(torch.dot(k, v))
                    acc["kk"] += float(torch.dot(k, k))
                    acc["vv"] += float(torch.dot(v, v))
                    acc["bb"] += float(torch.dot(bw, bw))
                    bar.update(n)
                rows[name] = acc
    report = {"vector": str(vector), "base": str(base), "tuned": str(tuned),
              "tensors": {n: _summary(a) for n, a in rows.items()},
              "layers": {}, "overall": _summary({k: sum(a[k] for a in rows.values()) for k in ("kv", "kk", "vv", "bb")})}
    for layer in sorted({_layer(n) for n in rows}):
        members = [a for n, a in rows.items() if _layer(n) == layer]
        report["layers"][layer] = _summary({k: sum(a[k] for a in members) for k in ("kv", "kk", "vv", "bb")})
    tmp = staging_dir(out)
    try:
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        (tmp / "report.md").write_text(_markdown(report))
        _plot(report, tmp / "cosine.png")
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _summary(a: dict[str, float]) -> dict[str, float | None]:
    denom = math.sqrt(a["kk"] * a["vv"])
    nb = math.sqrt(a["bb"]) or float("nan")
    return {"cosine": a["kv"] / denom if denom > 0 else None, "knowledge_norm": math.sqrt(a["kk"]),
            "skill_norm": math.sqrt(a["vv"]), "knowledge_rel": math.sqrt(a["kk"]) / nb,
            "skill_rel": math.sqrt(a["vv"]) / nb}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _markdown(report: dict) -> str:
    head = "| {} | cosine(k, v) | ‖k‖/‖θ_base‖ | ‖v‖/‖θ_base‖ |\n|---|---:|---:|---:|\n"
    lines = ["# Orthogonality report", "",
             f"Knowledge delta k = `{report['tuned']}` − `{report['base']}`; skill vector v = `{report['vector']}`.",
             "Cosine near 0 means the two updates are orthogonal, the premise of adding v linearly.", "",
             f"Overall cosine: {_fmt(report['overall']['cosine'])}", "", "## Per layer", "", head.format("layer")]
    for name, s in report["layers"].items():
        lines.append(f"| {name} | {_fmt(s['cosine'])} | {_fmt(s['knowledge_rel'])} | {_fmt(s['skill_rel'])} |")
    lines += ["", "## Per tensor", "", head.format("tensor")]
    for name, s in report["tensors"].items():
        lines.append(f"| `{name}` | {_fmt(s['cosine'])} | {_fmt(s['knowledge_rel'])} | {_fmt(s['skill_rel'])} |")
    return "\n".join(lines).replace("|\n\n|", "|\n|") + "\n"


def _plot(report: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only analyze needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(report["layers"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6, 0.35 * len(names)), 6), sharex=True)
    ax1.bar(names, [report["layers"][n]["cosine"] or 0.0 for n in names])
    ax1.axhline(0, color="black", lw=0.5)
    ax1.set_ylabel("cosine(k, v)")
    ax1.set_title("Knowledge delta vs skill vector, per layer")
    ax2.plot(names, [report["layers"][n]["knowledge_rel"] for n in names], "o-", label="‖k‖/‖θ_base‖")
    ax2.plot(names, [report["layers"][n]["skill_rel"] for n in names], "s-", label="‖v‖/‖θ_base‖")
    ax2.set_ylabel("relative norm")
    ax2.legend()
    ax2.tick_params(axis="x", rotation=90)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
