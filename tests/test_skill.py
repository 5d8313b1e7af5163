"""Skill vectors on tiny fp32 Llamas: exact round trips, filters, LoRA sources, and every bad input."""

from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import past.tensors
from past.cli import main as cli_main
from past.models import verify_model_dir
from past.skill import MANIFEST, SkillError, analyze, axpy, extract, inject
from past.tensors import TensorIOError, buffer

WEIGHTS = "model.safetensors"


def perturbed(src: Path, dst: Path, scale: float = 1e-3, seed: int = 1, edit=None) -> Path:
    """Copy a model folder with small seeded noise added to every weight (what a short RL/SFT run does)."""
    shutil.copytree(src, dst)
    (dst / "past-model.json").unlink()
    g = torch.Generator().manual_seed(seed)
    sd = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in load_file(src / WEIGHTS).items()}
    if edit:
        sd = edit(sd)
    save_file(sd, dst / WEIGHTS, metadata={"format": "pt"})
    return dst


def nothing_left(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(f".tmp-{out.name}-*"))


@pytest.fixture(scope="module")
def _trio(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Path]:
    from past.models import build_tiny_model

    root = tmp_path_factory.mktemp("trio")
    sft = build_tiny_model(root / "sft", tokenizer_dir, seed=0)
    rl = perturbed(sft, root / "rl")
    return {"sft": sft, "rl": rl, "vec": _extract(rl, sft, root / "vec")}


@pytest.fixture()
def trio(_trio: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """θ_sft_S, θ_rl_S = θ_sft_S + δ, and the vector v between them (built once; the vector is copied per
    test because some tests corrupt it; treat the models as read-only)."""
    return _trio | {"vec": Path(shutil.copytree(_trio["vec"], tmp_path / "vec"))}


def _extract(rl: Path, sft: Path, out: Path, **kw) -> Path:
    extract(rl, sft, out, progress=False, **kw)
    return out


def test_lam1_reproduces_rl_and_lam0_reproduces_target(trio, tmp_path):
    out1 = inject(trio["sft"], trio["vec"], tmp_path / "lam1", lam=1.0, progress=False)
    rl, got = load_file(trio["rl"] / WEIGHTS), load_file(out1 / WEIGHTS)
    assert set(got) == set(rl)
    for k in rl:  # fp32: v = rl − sft is exact (Sterbenz) for these small deltas, so sft + v == rl bit for bit
        assert torch.equal(got[k], rl[k]), k
    out0 = inject(trio["sft"], trio["vec"], tmp_path / "lam0", lam=0.0, progress=False)
    sft = load_file(trio["sft"] / WEIGHTS)
    assert all(torch.equal(v, sft[k]) for k, v in load_file(out0 / WEIGHTS).items())
    assert verify_model_dir(out1) == []
    meta = json.loads((out1 / "past-model.json").read_text())
    assert meta["skill"]["lam"] == 1.0 and meta["skill"]["tensors_grafted"] == len(rl)
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out1 / f).is_file(), f


def test_manifest_fields(trio):
    m = json.loads((trio["vec"] / MANIFEST).read_text())
    assert m["format_version"] == 1 and m["storage_dtype"] == "F32"
    assert m["architecture"]["config"]["num_hidden_layers"] == 2
    assert set(m["lineage"]) >= {"source_corpus_ids", "partitions", "rounds", "reward_summary"}
    assert all(len(s["sha256"]) == 64 for s in m["shards"].values())
    rl, sft = load_file(trio["rl"] / WEIGHTS), load_file(trio["sft"] / WEIGHTS)
    name = "model.layers.0.mlp.up_proj.weight"
    assert m["tensors"][name]["norm"] == pytest.approx(float((rl[name] - sft[name]).norm()), rel=1e-5)


def test_lineage_argument_is_recorded(trio, tmp_path):
    lineage = {"source_corpus_ids": ["c1", "c2"], "partitions": [[0, 1], [2, 3]], "rounds": 2,
               "reward_summary": {"mean": 0.4}}
    v = _extract(trio["rl"], trio["sft"], tmp_path / "v2", lineage=lineage, dtype="float16")
    assert json.loads((v / MANIFEST).read_text())["lineage"] == lineage


def test_filters_and_per_module_lambda(trio, tmp_path):
    out = inject(trio["sft"], trio["vec"], tmp_path / "out", lam=1.0, exclude=["*embed_tokens*"],
                 overrides=[("*mlp*", 0.5), ("*", 2.0)], progress=False)
    got, rl, sft = (load_file(p / WEIGHTS) for p in (out, trio["rl"], trio["sft"]))
    assert torch.equal(got["model.embed_tokens.weight"], sft["model.embed_tokens.weight"])
    k = "model.layers.1.mlp.down_proj.weight"
    torch.testing.assert_close(got[k], sft[k] + 0.5 * (rl[k] - sft[k]), rtol=0, atol=1e-7)
    k = "model.layers.1.self_attn.q_proj.weight"  # first matching override wins: "*" → 2.0
    torch.testing.assert_close(got[k], sft[k] + 2.0 * (rl[k] - sft[k]), rtol=0, atol=1e-7)
    only = inject(trio["sft"], trio["vec"], tmp_path / "only", include=["*layers.0.*"], progress=False)
    got = load_file(only / WEIGHTS)
    assert torch.equal(got["model.layers.1.mlp.up_proj.weight"], sft["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(got["model.layers.0.mlp.up_proj.weight"], rl["model.layers.0.mlp.up_proj.weight"])


def test_sharded_output_loads_with_transformers(trio, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = inject(trio["sft"], trio["vec"], tmp_path / "out", lam=1.0, max_shard_bytes=8 << 20, progress=False)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(trio["rl"], dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(out)("Hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    # a sharded folder is also a valid input, e.g. to extract from
    v = _extract(out, trio["sft"], tmp_path / "v-from-sharded", dtype="bfloat16")
    assert json.loads((v / MANIFEST).read_text())["storage_dtype"] == "BF16"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha", [1.0, -1.0, 0.5, 0.7])
def test_axpy_rounds_once_from_fp32(dtype, alpha):
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(100_000, generator=g).to(dtype) for _ in range(2))
    got = axpy(a, b, alpha, torch.empty_like(a), (buffer(1 << 20), buffer(1 << 20)))
    ref = (a.double() + alpha * b.double()).float().to(dtype)  # fp32 fma ≈ exact, then one rounding
    assert (got != ref).float().mean() < 1e-3  # double rounding (f64→f32→bf16) may differ on rare ties
    torch.testing.assert_close(got, (a.double() + alpha * b.double()).to(dtype), rtol=2 ** -7, atol=1e-6)


def test_lora_adapter_delta_matches_peft_merge(make_tiny, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    sft = make_tiny("sft", seed=0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)  # B starts at 0; give the adapter an effect
    model.save_pretrained(tmp_path / "adapter")
    merged = {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}
    v = _extract(tmp_path / "adapter", sft, tmp_path / "vec")
    m = json.loads((v / MANIFEST).read_text())
    assert m["source"]["kind"] == "lora" and len(m["tensors"]) == 4  # 2 layers × (q_proj, down_proj)
    out = inject(sft, v, tmp_path / "out", progress=False)
    got = load_file(out / WEIGHTS)
    for k, t in got.items():
        torch.testing.assert_close(t, merged[k], rtol=0, atol=1e-6)


def test_analyze_report(trio, tmp_path):
    tuned = perturbed(trio["sft"], tmp_path / "tuned", seed=7)
    r = analyze(trio["vec"], trio["sft"], tuned, tmp_path / "rep", progress=False)
    assert {"report.json", "report.md", "cosine.png"} <= {p.name for p in (tmp_path / "rep").iterdir()}
    assert abs(r["overall"]["cosine"]) < 0.05  # independent random deltas are nearly orthogonal
    k = "model.layers.0.mlp.up_proj.weight"
    kd = load_file(tuned / WEIGHTS)[k] - load_file(trio["sft"] / WEIGHTS)[k]
    vd = load_file(trio["rl"] / WEIGHTS)[k] - load_file(trio["sft"] / WEIGHTS)[k]
    assert r["tensors"][k]["cosine"] == pytest.approx(float(torch.nn.functional.cosine_similarity(
        kd.flatten(), vd.flatten(), dim=0)), abs=1e-4)
    assert set(r["layers"]) == {"layer 000", "layer 001", "other"}
    same = analyze(trio["vec"], trio["sft"], trio["rl"], tmp_path / "rep2", progress=False)
    assert same["overall"]["cosine"] == pytest.approx(1.0, abs=1e-5)


def test_cli_round_trip_and_one_line_errors(trio, tmp_path, capsys):
    out = tmp_path / "cli-out"
    assert cli_main(["skill", "inject", "--model", str(trio["sft"]), "--vector", str(trio["vec"]),
                     "--lam", "1", "--out", str(out), "--lam-for", "*mlp*=0.5"]) == 0
    assert cli_main(["skill", "extract", "--rl", str(trio["rl"]), "--sft", str(trio["sft"]),
                     "--out", str(tmp_path / "cli-vec")]) == 0
    assert cli_main(["skill", "analyze", "--vector", str(trio["vec"]), "--base", str(trio["sft"]),
                     "--tuned", str(trio["rl"]), "--out", str(tmp_path / "cli-rep")]) == 0
    capsys.readouterr()
    assert cli_main(["skill", "inject", "--model", str(trio["sft"]), "--vector", str(trio["vec"]),
                     "--lam", "nan", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "λ" in err[0]


# --- bad input: a clear error naming the tensor/file, and nothing at the destination ---------------------------
def _drop(name):
    return lambda sd: {k: v for k, v in sd.items() if k != name}


BAD_MODELS = {
    "shape": (lambda sd: sd | {"model.norm.weight": torch.ones(64)}, SkillError, "model.norm.weight"),
    "missing": (_drop("model.layers.1.mlp.up_proj.weight"), SkillError, "model.layers.1.mlp.up_proj.weight"),
    "extra": (lambda sd: sd | {"model.extra.weight": torch.ones(3)}, SkillError, "model.extra.weight"),
    "dtype": (lambda sd: sd | {"model.norm.weight": sd["model.norm.weight"].half()}, SkillError, "dtype"),
    "nan": (lambda sd: sd | {"model.norm.weight": sd["model.norm.weight"].index_fill(0, torch.tensor([3]),
                                                                                       float("nan"))},
            SkillError, "NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_extract_refuses_bad_model(case, make_tiny, tmp_path):
    edit, exc, match = BAD_MODELS[case]
    sft = make_tiny("sft", seed=0)
    rl = perturbed(sft, tmp_path / "rl", edit=edit)
    with pytest.raises(exc, match=match):
        extract(rl, sft, tmp_path / "vec", progress=False)
    assert nothing_left(tmp_path / "vec")


@pytest.mark.parametrize("case", ["shape", "missing", "extra", "dtype", "nan", "inf", "config"])
def test_inject_refuses_bad_target(case, trio, tmp_path):
    if case == "config":
        target = perturbed(trio["sft"], tmp_path / "t")
        cfg = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps(cfg | {"num_hidden_layers": 3}))
        exc, match = SkillError, "num_hidden_layers"
    elif case == "inf":
        target = perturbed(trio["sft"], tmp_path / "t", edit=lambda sd: sd | {
            "model.layers.0.mlp.up_proj.weight": sd["model.layers.0.mlp.up_proj.weight"] * float("inf")})
        exc, match = SkillError, "model.layers.0.mlp.up_proj.weight.*NaN or Inf"
    else:
        edit, exc, match = BAD_MODELS[case]
        target = perturbed(trio["sft"], tmp_path / "t", edit=edit)
    with pytest.raises(exc, match=match):
        inject(target, trio["vec"], tmp_path / "out", progress=False)
    assert nothing_left(tmp_path / "out")


def _rewrite_vector(vec: Path, edit) -> None:
    """Change a vector's values and re-sign its manifest (a consistent but poisoned vector)."""
    from past.models import sha256_file

    m = json.loads((vec / MANIFEST).read_text())
    (shard,) = m["shards"]
    sd = edit(load_file(vec / shard))
    (vec / shard).unlink()
    save_file(sd, vec / shard, metadata={"format": "pt"})
    m["shards"][shard] = {"sha256": sha256_file(vec / shard), "bytes": (vec / shard).stat().st_size}
    (vec / MANIFEST).write_text(json.dumps(m))


def test_inject_refuses_nan_vector(trio, tmp_path):
    name = "model.layers.1.self_attn.o_proj.weight"
    _rewrite_vector(trio["vec"], lambda sd: sd | {name: sd[name] * float("nan")})
    with pytest.raises(SkillError, match=f"{name}.*NaN or Inf"):
        inject(trio["sft"], trio["vec"], tmp_path / "out", progress=False)
    assert nothing_left(tmp_path / "out")


def test_inject_refuses_vector_with_wrong_dtype(trio, tmp_path):
    _rewrite_vector(trio["vec"], lambda sd: {k: v.half() for k, v in sd.items()})
    with pytest.raises(SkillError, match="does not match the manifest"):
        inject(trio["sft"], trio["vec"], tmp_path / "out", progress=False)
    assert nothing_left(tmp_path / "out")


def test_inject_refuses_checksum_mismatch(trio, tmp_path):
    (shard,) = trio["vec"].glob("*.safetensors")
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x01  # one flipped bit in the last tensor's data; size unchanged
    shard.write_bytes(bytes(data))
    with pytest.raises(SkillError, match="sha256"):
        inject(trio["sft"], trio["vec"], tmp_path / "out", progress=False)
    assert nothing_left(tmp_path / "out")
    shard.write_bytes(bytes(data[:-100]))  # truncated: caught before any work, by size
    with pytest.raises(SkillError, match="truncated"):
        inject(trio["sft"], trio["vec"], tmp_path / "out", progress=False)
    assert nothing_left(tmp_path / "out")


@pytest.mark.parametrize("lam", [float("nan"), float("inf"), -float("inf"), 1e6])
def test_inject_refuses_bad_lambda(trio, tmp_path, lam):
    with pytest.raises(SkillError, match="λ"):
        inject(trio["sft"], trio["vec"], tmp_path / "out", lam=lam, progress=False)
    with pytest.raises(SkillError, match="mlp"):
        inject(trio["sft"], trio["vec"], tmp_path / "out", overrides=[("*mlp*", lam)], progress=False)
    assert nothing_left(tmp_path / "out")


def test_pickle_weights_refused(trio, tmp_path):
    pick = tmp_path / "pickled"
    shutil.copytree(trio["sft"], pick)
    (pick / WEIGHTS).unlink()
    torch.save(load_file(trio["sft"] / WEIGHTS), pick / "pytorch_model.bin")
    with pytest.raises(TensorIOError, match="pickle"):
        inject(pick, trio["vec"], tmp_path / "out", progress=False)
    assert nothing_left(tmp_path / "out")
    (pick / "pytorch_model.bin").rename(pick / WEIGHTS)  # a pickle disguised as safetensors
    with pytest.raises(TensorIOError, match="not a safetensors file"):
        extract(trio["rl"], pick, tmp_path / "vec2", progress=False)
    assert nothing_left(tmp_path / "vec2")


def test_existing_output_refused_and_untouched(trio, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for call in (lambda: inject(trio["sft"], trio["vec"], out, progress=False),
                 lambda: extract(trio["rl"], trio["sft"], out, progress=False),
                 lambda: analyze(trio["vec"], trio["sft"], trio["rl"], out, progress=False)):
        with pytest.raises(SkillError, match="already exists"):
            call()
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("op", ["inject", "extract"])
def test_disk_full_half_way_leaves_nothing(trio, tmp_path, monkeypatch, op):
    real, calls = past.tensors._write_all, {"n": 0}

    def full_disk(fd, data):
        calls["n"] += 1
        if calls["n"] > 3:  # the header and a couple of chunks went through
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(past.tensors, "CHUNK_BYTES", 1 << 20)  # many chunks even on a tiny model
    monkeypatch.setattr(past.tensors, "_write_all", full_disk)
    out = tmp_path / "out"
    with pytest.raises(TensorIOError, match="No space left"):
        if op == "inject":
            inject(trio["sft"], trio["vec"], out, progress=False)
        else:
            extract(trio["rl"], trio["sft"], out, progress=False)
    assert calls["n"] > 3 and nothing_left(out)


def test_reader_names_missing_shard(trio, tmp_path):
    sharded = inject(trio["sft"], trio["vec"], tmp_path / "sh", max_shard_bytes=8 << 20, progress=False)
    next(sharded.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(TensorIOError, match="model-00002"):
        inject(sharded, trio["vec"], tmp_path / "out", progress=False)
    assert nothing_left(tmp_path / "out")
    assert math.isfinite(json.loads((trio["vec"] / MANIFEST).read_text())["norm"])
