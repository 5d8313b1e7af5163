"""The registry through a real MLflow tracking server (HTTP, artifact storage), as nodes of a cluster use it:
versions are uploaded as run artifacts (the server refuses in-place folders), and a node that does not have
the folder downloads a verified copy once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from past.config import load_settings
from past.models import verify_model_dir
from past.registry import LOCAL_SOURCE_TAG, Registry, RegistryError
from tests.test_registry import model_folder, report


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from past.serving import free_port

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{root / 'db.sqlite'}", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-2000:]
            time.sleep(0.5)
    yield url, root / "artifacts"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def node(server, home: Path) -> Registry:
    """A node: its own home (no shared disk with the other node), the one server."""
    return Registry(load_settings(home=home, mlflow_tracking_uri=server[0], gate_min_accuracy=0.5,
                                  gate_min_new_items=4))


def test_a_version_uploaded_on_one_node_is_served_verified_on_another(server, tmp_path: Path, monkeypatch) -> None:
    import mlflow.artifacts

    a, b = node(server, tmp_path / "a"), node(server, tmp_path / "b")
    run_id = a.start_run("c", {"base_model": "tiny"})
    folder = model_folder(tmp_path, "-up")
    v1 = a.register_candidate("remote-model", folder, run_id, "c")
    mv = a.version("remote-model", v1)
    assert mv.source == f"runs:/{run_id}/model" and mv.tags[LOCAL_SOURCE_TAG] == str(folder.resolve())
    stored = [p for p in server[1].rglob("model.safetensors") if run_id in str(p)]
    assert len(stored) == 1 and stored[0].read_bytes() == (folder / "model.safetensors").read_bytes()
    assert a.local_path(mv) == folder.resolve()  # the uploading node uses its own folder: no second copy

    out = a.conclude("remote-model", v1, run_id, report(a, 4, None))
    assert out.promoted, out.reason
    assert (folder / "README.md").is_file()  # the model card, here and beside the uploaded weights

    folder.rename(tmp_path / "on-node-a")  # node b's disk does not have node a's folder
    champ = b.champion_ref("remote-model")
    assert champ.model_dir == tmp_path / "b" / "mlflow" / "cache" / "remote-model" / v1 / "model"
    assert verify_model_dir(champ.model_dir) == [] and (champ.model_dir / "README.md").is_file()
    assert (champ.model_dir / "MLmodel").is_file()  # mlflow.pyfunc loads it from the registry
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", lambda **kw: pytest.fail("downloaded twice"))
    assert b.champion_ref("remote-model").model_dir == champ.model_dir


def test_a_tampered_upload_is_refused_and_leaves_no_copy(server, tmp_path: Path) -> None:
    a, b = node(server, tmp_path / "a"), node(server, tmp_path / "b")
    run_id = a.start_run("c", {})
    folder = model_folder(tmp_path, "-t")
    v = a.register_candidate("tamper-model", folder, run_id, "c")
    folder.rename(tmp_path / "on-node-a")
    (stored,) = [p for p in server[1].rglob("model.safetensors") if run_id in str(p)]
    stored.write_bytes(b"\1" * 70)
    with pytest.raises(RegistryError, match="does not verify"):
        b.local_path(b.version("tamper-model", v))
    cache = tmp_path / "b" / "mlflow" / "cache" / "tamper-model"
    assert [p.name for p in cache.iterdir()] == [f"{v}.lock"]  # no half-written or unverified folder


def test_skill_vectors_and_refusals_through_the_server(server, tmp_path: Path) -> None:
    a, b = node(server, tmp_path / "a"), node(server, tmp_path / "b")
    vec = tmp_path / "v.safetensors"
    vec.write_bytes(b"vector bytes")
    with pytest.raises(RegistryError, match="needs a run"):
        a.register_skill_vector(vec)
    run_id = a.start_run("src", {})
    version = a.register_skill_vector(vec, run_id=run_id, name="vec-model")
    assert a.current_skill_vector("vec-model") == (version, vec.resolve())
    vec.rename(tmp_path / "on-node-a")
    got_version, path = b.current_skill_vector("vec-model")
    assert got_version == version and path.name == "v.safetensors" and path.read_bytes() == b"vector bytes"
    assert path.parent == tmp_path / "b" / "mlflow" / "cache" / "vec-model" / version


def test_mlflow_loads_an_uploaded_champion_on_a_node_without_the_folder(server, tmp_path: Path, make_tiny) -> None:
    """`past review`'s loader check (`models:/NAME@champion` through mlflow.pyfunc) against the server."""
    from past.registry import CHAMPION
    from past.review import _load_check

    a, b = node(server, tmp_path / "a"), node(server, tmp_path / "b")
    run_id = a.start_run("c", {})
    folder = make_tiny("loadable-remote", seed=4)
    v = a.register_candidate("loadable-remote", folder, run_id, "c")
    a.client.set_registered_model_alias("loadable-remote", CHAMPION, v)
    folder.rename(tmp_path / "on-node-a")
    finding = _load_check(b, "loadable-remote")
    assert finding.ok, finding
