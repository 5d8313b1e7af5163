"""The managed vLLM server's command line (no server started: `make test-fast` runs these)."""

from __future__ import annotations

from pathlib import Path

from past.serving import VLLMServer, _cuda_visible


def test_eager_mode_only_without_cuda(tmp_path: Path) -> None:
    auto = VLLMServer(tmp_path, "m").command(8000)
    assert ("--enforce-eager" in auto) == (not _cuda_visible())  # this CPU machine: eager; a GPU node: CUDA graphs
    assert "--enforce-eager" not in VLLMServer(tmp_path, "m", enforce_eager=False).command(8000)
    assert "--enforce-eager" in VLLMServer(tmp_path, "m", enforce_eager=True).command(8000)
