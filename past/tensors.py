"""Streaming safetensors I/O for whole-model arithmetic in bounded memory.

Skill-vector math (past/skill.py) touches every weight of two or three models. Holding them in memory, or
even keeping them memory-mapped, costs the model size in RSS (mapped pages count as resident once touched).
So this module reads and writes *chunks* of tensors through small reusable buffers:

- `ModelReader`: a folder of safetensors shards (single file or `*.index.json`). It parses each shard's header
  (8-byte little-endian length, JSON table of dtype/shape/offsets - the documented safetensors layout) and
  maps one chunk's byte range at a time, unmapped as soon as the chunk is dropped (a whole-file mmap, as
  `safe_open` keeps, would grow RSS to the model size). Only safetensors is ever read; pickle checkpoints
  (`*.bin`, `*.pt`, ...) are refused.
- `ShardedWriter`: because every output tensor's dtype and shape are known before any value is computed, the
  shard layout and headers are planned up front and values are appended in order as they are produced. A
  background thread writes and sha256-hashes the chunks (file I/O and hashlib release the GIL) while the
  caller computes the next one; at most `POOL` output buffers are in flight.

safetensors' own API loads or saves whole tensors (save_file needs everything in memory at once) and has no
chunked writer, hence this small layer; what it writes is validated by loading it back with
`safetensors.safe_open` and transformers in the tests.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import mmap
import os
import queue
import struct
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from past.errors import PastError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}
FLOATS = {"F64", "F32", "F16", "BF16"}
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
CHUNK_BYTES = 32 << 20  # one read/compute/write step; buffers are a few of these
POOL = 3  # output chunks in flight between the compute thread and the writer thread
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux; elsewhere pages fault in lazily


class TensorIOError(PastError):
    """Weights that cannot be read (missing, malformed, pickle) or written (disk full, I/O error)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype name, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def itemsize(dtype: str) -> int:
    return torch.empty(0, dtype=DTYPES[dtype]).element_size()


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor table of one .safetensors file, validated (every problem names the file and tensor)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise TensorIOError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100 << 20):
            raise TensorIOError(f"{path}: not a safetensors file (bad header length {n}; pickle or truncated?)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TensorIOError(f"{path}: not a safetensors file (unreadable header: {e})") from None
    if not isinstance(header, dict):
        raise TensorIOError(f"{path}: not a safetensors file (header is not a table)")
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = meta["dtype"], tuple(int(d) for d in meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise TensorIOError(f"{path}: tensor {name!r} has a malformed header entry ({e})") from None
        if dtype not in DTYPES:
            raise TensorIOError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        info = TensorInfo(name, dtype, shape, path, 8 + n + a, b - a)
        if b - a != info.numel * itemsize(dtype) or info.offset + info.nbytes > size:
            raise TensorIOError(f"{path}: tensor {name!r} data is truncated or inconsistent with its shape")
        out[name] = info
    return out


def weight_files(folder: Path) -> list[Path]:
    """The safetensors shards of a model folder (via its index when there is one). Refuses pickle weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TensorIOError(f"{folder}: no such model folder")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise TensorIOError(f"{index}: unreadable index ({e})") from None
        files = [folder / n for n in names]
        for f in files:
            if not f.is_file():
                raise TensorIOError(f"{f}: shard listed in {index.name} is missing")
        return files
    files = sorted(p for p in folder.glob("*.safetensors") if p.name != "adapter_model.safetensors")
    if not files:
        pickles = [p.name for p in folder.iterdir() if any(fnmatch.fnmatch(p.name, g) for g in PICKLE_PATTERNS)]
        if pickles:
            raise TensorIOError(f"{folder}: pickle-format weights refused ({', '.join(pickles)}); "
                                "convert them to safetensors first")
        raise TensorIOError(f"{folder}: no .safetensors weights found")
    return files


class ModelReader:
    """All tensors of a set of safetensors files, read in byte ranges into caller-provided buffers."""

    def __init__(self, files: list[Path], index: Path | None = None):
        self.tensors: dict[str, TensorInfo] = {}
        for f in files:
            for name, info in read_header(Path(f)).items():
                if name in self.tensors:
                    raise TensorIOError(f"tensor {name!r} appears in both {self.tensors[name].file} and {f}")
                self.tensors[name] = info
        if index is not None and index.is_file():
            listed = set(json.loads(index.read_text())["weight_map"])
            if missing := sorted(listed - set(self.tensors)):
                raise TensorIOError(f"{index}: tensor {missing[0]!r} is listed but absent from the shards")
        self._fds: dict[Path, int] = {}

    @classmethod
    def open_model(cls, folder: Path) -> "ModelReader":
        return cls(weight_files(folder), Path(folder) / "model.safetensors.index.json")

    def read(self, info: TensorInfo, start: int, count: int) -> torch.Tensor:
        """Elements [start, start+count) of a tensor (flattened), as a read-only view of a fresh mapping.

        Each call maps only that byte range (MAP_POPULATE maps the cached pages in one go, ~2x faster than
        pread + copy here); the mapping is unmapped as soon as the returned tensor is dropped, so resident
        memory stays at a chunk or two however large the model. Do not write into the result.
        """
        size = itemsize(info.dtype)
        fd = self._fds.get(info.file)
        if fd is None:
            fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
        pos = info.offset + start * size
        base = pos - pos % mmap.ALLOCATIONGRANULARITY
        try:
            mm = mmap.mmap(fd, pos - base + count * size, flags=mmap.MAP_SHARED | MAP_POPULATE,
                           prot=mmap.PROT_READ, offset=base)
        except (OSError, ValueError) as e:
            raise TensorIOError(f"{info.file}: cannot read tensor {info.name!r} ({e})") from None
        with warnings.catch_warnings():  # torch warns that the mapping is read-only; we never write to it
            warnings.simplefilter("ignore", UserWarning)
            return torch.frombuffer(mm, dtype=info.torch_dtype, count=count, offset=pos - base)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "ModelReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chunk_ranges(info: TensorInfo, chunk_bytes: int | None = None):
    """(start, count) element ranges covering a tensor; a chunk fits a buffer even when widened to F64."""
    step = max(1, (chunk_bytes or CHUNK_BYTES) // 8)
    n = info.numel
    for start in range(0, n, step):
        yield start, min(step, n - start)


def buffer(nbytes: int | None = None) -> torch.Tensor:
    """A reusable uint8 scratch buffer of one chunk, touched once so later writes never page-fault."""
    return torch.zeros(nbytes or CHUNK_BYTES, dtype=torch.uint8)


# --- writing ---------------------------------------------------------------------------------------------
def plan_shards(tensors: list[tuple[str, str, tuple[int, ...]]], max_shard_bytes: int) -> list[list[int]]:
    """Group tensor indices (in order) into shards of at most max_shard_bytes (one oversized tensor alone)."""
    shards, cur, cur_bytes = [], [], 0
    for i, (_, dtype, shape) in enumerate(tensors):
        nb = math.prod(shape) * itemsize(dtype)
        if cur and cur_bytes + nb > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(i)
        cur_bytes += nb
    if cur or not shards:
        shards.append(cur)
    return shards


def _write_all(fd: int, data: memoryview) -> None:
    """Write every byte (a module-level hook so tests can simulate a full disk)."""
    while data:
        n = os.write(fd, data)
        data = data[n:]


class ShardedWriter:
    """Write tensors, whose dtypes and shapes are declared up front, chunk by chunk into safetensors shards.

    Usage: `buf = w.buffer()` (blocks while POOL buffers are in flight), fill `buf` with the next elements of
    the next tensor in declared order, `w.put(buf, nbytes)`; finally `w.close()` returns
    {file: {"sha256", "bytes"}} and writes `<prefix>.safetensors.index.json` when there are several shards.
    """

    def __init__(self, out_dir: Path, tensors: list[tuple[str, str, tuple[int, ...]]], prefix: str = "model",
                 max_shard_bytes: int = 4 << 30, metadata: dict[str, str] | None = None):
        self.out_dir, self.prefix = Path(out_dir), prefix
        groups = plan_shards(tensors, max_shard_bytes)
        n = len(groups)
        self.files: list[tuple[str, bytes, int]] = []  # (file name, header bytes, data bytes)
        self.weight_map: dict[str, str] = {}
        for k, group in enumerate(groups):
            fname = f"{prefix}.safetensors" if n == 1 else f"{prefix}-{k + 1:05d}-of-{n:05d}.safetensors"
            header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
            pos = 0
            for i in group:
                name, dtype, shape = tensors[i]
                nb = math.prod(shape) * itemsize(dtype)
                header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nb]}
                pos += nb
                self.weight_map[name] = fname
            hb = json.dumps(header, separators=(",", ":")).encode()
            hb += b" " * (-len(hb) % 8)  # data starts 8-byte aligned, as safetensors itself writes
            self.files.append((fname, struct.pack("<Q", len(hb)) + hb, pos))
        self.total_bytes = sum(f[2] for f in self.files)
        self.result: dict[str, dict[str, object]] = {}
        self._pool: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(POOL):
            self._pool.put(buffer())
        self._todo: queue.Queue[tuple[torch.Tensor, int] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="past-shard-writer", daemon=True)
        self._thread.start()

    def buffer(self) -> torch.Tensor:
        """A free CHUNK_BYTES uint8 buffer (waits while POOL are queued; raises the writer's error if any)."""
        while True:
            self._raise()
            try:
                return self._pool.get(timeout=0.2)
            except queue.Empty:
                pass

    def put(self, buf: torch.Tensor, nbytes: int) -> None:
        """Append the first `nbytes` of `buf` (from `buffer()`) to the output; the buffer returns to the pool."""
        self._raise()
        self._todo.put((buf, nbytes))

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        fd, path = -1, self.out_dir
        hasher = ThreadPoolExecutor(1, thread_name_prefix="past-shard-sha256")
        try:
            for fname, header, data_bytes in self.files:
                path = self.out_dir / fname
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                h, left = hashlib.sha256(header), data_bytes
                _write_all(fd, memoryview(header))
                while left > 0:
                    item = self._todo.get()
                    if item is None:
                        raise TensorIOError(f"{path}: closed {left} bytes before the shard was complete")
                    buf, nbytes = item
                    if nbytes > left:
                        raise TensorIOError(f"{path}: {nbytes - left} bytes more than the planned tensors")
                    mem = memoryview(buf.numpy())[:nbytes]
                    # hashing here saves re-reading the output for its manifest; beside the write (both let go
                    # of the GIL), not after it: a 2 GB inject spent ~0.9 s hashing while no byte was written
                    hashed = hasher.submit(h.update, mem)
                    _write_all(fd, mem)
                    hashed.result()
                    left -= nbytes
                    self._pool.put(buf)
                os.close(fd)
                fd = -1
                self.result[fname] = {"sha256": h.hexdigest(), "bytes": len(header) + data_bytes}
        except OSError as e:
            self._error = TensorIOError(f"writing {path} failed: {e}")
        except BaseException as e:  # noqa: BLE001 - handed over to the producer thread
            self._error = e
        finally:
            hasher.shutdown(wait=True)
            if fd >= 0:
                os.close(fd)

    def close(self) -> dict[str, dict[str, object]]:
        """Wait for every byte to be written; raise the writer's error if any; write the index if sharded."""
        self._todo.put(None)
        self._thread.join()
        self._raise()
        if self._todo.get() is not None:
            raise TensorIOError(f"{self.out_dir}: more data than the planned tensors")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": self.weight_map}
            (self.out_dir / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return self.result

    def abort(self) -> None:
        """Stop the writer thread (the caller removes the staging folder)."""
        self._error = self._error or TensorIOError("aborted")
        self._todo.put(None)
        self._thread.join(timeout=30)
