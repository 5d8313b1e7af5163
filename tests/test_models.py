from __future__ import annotations

import json
from pathlib import Path

import pytest

from past.models import (
    MANIFEST, ModelError, build_tiny_model, check_loads, prepare_base_model, publish_dir, resolve_model,
    staging_dir, verify_model_dir,
)


def test_tiny_model_loads_and_verifies(tiny_model_dir: Path) -> None:
    assert verify_model_dir(tiny_model_dir) == []
    check_loads(tiny_model_dir)
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["vocab_size"] == 49152 and cfg["hidden_size"] // cfg["num_attention_heads"] == 64
    assert (tiny_model_dir / "chat_template.jinja").exists()


def test_truncated_weights_are_detected(make_tiny) -> None:
    d = make_tiny("m")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    problems = verify_model_dir(d)
    assert problems and "truncated" in problems[0]


def test_bitflip_is_detected(make_tiny) -> None:
    d = make_tiny("m")
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-100] ^= 0xFF
    w.write_bytes(bytes(data))
    assert any("sha256" in p for p in verify_model_dir(d))


def test_sha256_stamp_skips_unchanged_files_and_never_hides_a_write(tmp_path: Path, monkeypatch) -> None:
    import time

    import past.models as pm

    f = tmp_path / "shard.bin"
    f.write_bytes(b"a" * 4096)
    assert pm.sha256_stamped(f) == pm.sha256_file(f)
    assert not list((tmp_path / "sha256-stamps").glob("*.json"))  # just written: racy, never stamped
    monkeypatch.setattr(pm, "RACY_S", 0.0)
    first = pm.sha256_stamped(f)
    assert len(list((tmp_path / "sha256-stamps").glob("*.json"))) == 1
    real = pm.sha256_file
    monkeypatch.setattr(pm, "sha256_file", lambda p, chunk=0: pytest.fail(f"{p} read again"))
    assert pm.sha256_stamped(f) == first  # unchanged: the stamp answers
    monkeypatch.setattr(pm, "sha256_file", real)
    time.sleep(0.05)
    f.write_bytes(b"b" * 4096)  # same size, new bytes: ctime moves, the stamp no longer matches
    assert pm.sha256_stamped(f) == real(f) != first


def test_a_verified_model_corrupted_in_place_is_still_caught(make_tiny, monkeypatch) -> None:
    import time

    import past.models as pm

    monkeypatch.setattr(pm, "RACY_S", 0.0)
    d = make_tiny("m")
    assert verify_model_dir(d) == []  # stamps every file
    time.sleep(0.05)
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-100] ^= 0xFF
    w.write_bytes(bytes(data))
    assert any("sha256" in p for p in verify_model_dir(d))
    assert any("sha256" in p for p in verify_model_dir(d, full=True))


def test_missing_manifest_is_a_problem(make_tiny) -> None:
    d = make_tiny("m")
    (d / MANIFEST).unlink()
    assert verify_model_dir(d)


def test_resolve_model_refuses_damaged_folder(make_tiny) -> None:
    d = make_tiny("m")
    (d / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelError, match="manifest"):
        resolve_model(str(d), d.parent)
    with pytest.raises(ModelError, match="neither"):
        resolve_model("no-such-model", d.parent)


def test_publish_dir_is_atomic_and_refuses_overwrite(tmp_path: Path) -> None:
    final = tmp_path / "out"
    tmp = staging_dir(final)
    (tmp / "a").write_text("1")
    publish_dir(tmp, final)
    tmp2 = staging_dir(final)
    (tmp2 / "a").write_text("2")
    with pytest.raises(FileExistsError):
        publish_dir(tmp2, final)
    assert (final / "a").read_text() == "1"
    assert not tmp2.exists(), "a refused staging folder is cleaned up"


@pytest.mark.slow
def test_real_base_model_is_rebuilt_when_corrupt(tmp_path: Path) -> None:
    models = tmp_path / "models"
    d = prepare_base_model("smollm2-135m-instruct", models)
    assert verify_model_dir(d) == []
    w = d / "model.safetensors"
    with open(w, "r+b") as f:  # truncate the cached weights
        f.truncate(w.stat().st_size - 4096)
    messages: list[str] = []
    d2 = prepare_base_model("smollm2-135m-instruct", models, log=messages.append)
    assert d2 == d and verify_model_dir(d) == []
    assert any("damaged" in m for m in messages)
