"""Probe: does hashing beside the write (past.tensors.ShardedWriter, sixteenth session) make inject faster than
hashing after it (the writer before)? Same process, same inputs, alternating A/B, each inject followed by `sync`.

    flock -x /tmp/past-cpu.lock .venv/bin/python bench/writer_overlap.py   (after bench/skill_inject.py made its scratch)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from past import tensors
from past.skill import inject

SCRATCH = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/past-bench-skill")


def _run_hash_after(self) -> None:  # the writer before: write a chunk, then hash it, one after the other
    import hashlib

    fd, path = -1, self.out_dir
    try:
        for fname, header, data_bytes in self.files:
            path = self.out_dir / fname
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            h, left = hashlib.sha256(header), data_bytes
            tensors._write_all(fd, memoryview(header))
            while left > 0:
                buf, nbytes = self._todo.get()
                mem = memoryview(buf.numpy())[:nbytes]
                tensors._write_all(fd, mem)
                h.update(mem)
                left -= nbytes
                self._pool.put(buf)
            os.close(fd)
            fd = -1
            self.result[fname] = {"sha256": h.hexdigest(), "bytes": len(header) + data_bytes}
    except BaseException as e:  # noqa: BLE001
        self._error = e


def main() -> None:
    model, vector = SCRATCH / "models-20l" / "sft_T", SCRATCH / "vector-float32"
    new_run, times = tensors.ShardedWriter._run, {"hash after write (before)": [], "hash beside write (now)": []}
    for rep in range(4):
        for label, run in (("hash after write (before)", _run_hash_after), ("hash beside write (now)", new_run)):
            out = Path(f"/tmp/past-writer-overlap-{rep}")
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            tensors.ShardedWriter._run = run
            t0 = time.perf_counter()
            inject(model, vector, out, progress=False)
            subprocess.run(["sync"], check=True)
            times[label].append(time.perf_counter() - t0)
            shutil.rmtree(out)
            print(f"repeat {rep + 1}: {label}: {times[label][-1]:.2f} s", flush=True)
    before, now = (statistics.median(v) for v in times.values())
    paired = statistics.median(b / n for b, n in zip(*times.values()))
    print(f"median inject + sync: before {before:.2f} s, now {now:.2f} s: {before / now:.2f}x (paired {paired:.2f}x)")


if __name__ == "__main__":
    main()
