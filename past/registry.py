"""MLflow tracking and model registry: one run per adaptation, candidates as model versions, promotion.

Layout in MLflow (embedded default: `sqlite:///<home>/mlflow/mlflow.db`, artifacts under
`<home>/mlflow/artifacts`):
- experiment `past-adapt`: one run per adaptation - params (corpus id, base model, skill vector version, λ,
  SFT config), metrics (losses, gate scores, timings), artifacts (`gate/items.json` per-item table,
  `gate/decision.json`, `gate/gate-report.json`, plus any report files passed in).
- registered model NAME: one version per candidate; `source` is the model folder itself (file:// URI, nothing
  is copied; an MLflow HTTP server, which refuses in-place sources and serves nodes that share no disk, gets
  the folder uploaded as artifacts of the run, `runs:/<run>/model`, and other nodes download a verified copy
  once: `Registry.local_path`) and tags carry the manifest sha256, corpus id, skill vector version, λ, the gate verdict and the
  reason. The alias `champion` moves only on a pass (or a deliberate `past promote`/`past rollback`); its
  history is the registered-model tag `champion_history` (a JSON list of versions, newest last).
- registered model `past-skill-vector`: one version per skill vector, alias `current`.

Alias moves are serialised and compare-and-set: a gate compared against champion X may promote only while X is
still the champion, so two promotions racing never both win and never leave the alias pointing at a version
nobody gated against. The serialisation is held in MLflow itself (`past.lease`: a registered model that exists
while an alias moves; its unique name is enforced by the store's database), so processes on different machines
that share only the MLflow server exclude each other; a file lock (`filelock`, `<home>/mlflow/registry.lock`)
in front of it keeps processes of one home from polling the store.

Note: `mlflow.register_model("runs:/.../dir")` on a plain artifact folder fails in MLflow 3.17;
`MlflowClient.create_model_version(name, source=..., run_id=...)` works, aliases included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from past.errors import PastError

EXPERIMENT = "past-adapt"
REFRESH_EXPERIMENT = "past-refresh"
CHAMPION = "champion"
CHALLENGER = "challenger"
CURRENT = "current"
SKILL_MODEL = "past-skill-vector"
HISTORY_TAG = "champion_history"
_ANY = object()  # promote(): "whatever the champion is now" (manual promotion)


class RegistryError(PastError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to, ...)."""


class PromotionConflict(RegistryError):
    """The champion moved after the gate compared against it: re-gate against the new champion."""


def ref(name: str, version: str | int) -> str:
    """Registry-wide id of a model version, also its served model name and its gate cache key."""
    return f"{name}/{version}"


@dataclass
class Outcome:
    version: str
    promoted: bool
    reason: str


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten(v, key + ".")
        else:
            out[key] = str(v)[:6000]
    return out


VECTOR_MANIFEST = "skill.json"  # = past.skill.MANIFEST, not imported here: past.skill loads torch


def folder_sha256(path: Path) -> str:
    """sha256 of a folder's checksum manifest (a model's past-model.json or a skill vector's skill.json, each
    listing every file's sha256), or of a single file. Hashing the manifest, not the gigabytes it lists, is
    what keeps an adapt from reading the whole vector three times (the shards are verified during inject)."""
    from past.models import MANIFEST, sha256_file

    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    for name in (MANIFEST, VECTOR_MANIFEST):
        if (path / name).is_file():
            return sha256_file(path / name)
    h = hashlib.sha256()  # no manifest: hash of the (relative path, file hash) list
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def source_path(source: str) -> Path:
    """The local folder behind a model version's source (a file:// URI or a plain path)."""
    u = urllib.parse.urlparse(source)
    return Path(urllib.parse.unquote(u.path)) if u.scheme == "file" else Path(source)


def is_remote(uri: str) -> bool:
    """An MLflow HTTP server: it refuses file:// version sources, and its clients may share no disk."""
    return urllib.parse.urlparse(uri).scheme in ("http", "https")


MODEL_ARTIFACTS, VECTOR_ARTIFACTS = "model", "skill-vector"  # run artifact folders of uploaded versions
LOCAL_SOURCE_TAG = "local_source"  # the folder a remote version was uploaded from, used where it still verifies


def _uploaded(mv) -> bool:
    """A version whose files live in the tracking server's artifact store (not a folder in place)."""
    return urllib.parse.urlparse(mv.source).scheme not in ("", "file")


class Registry:
    """Thin, typed wrapper over `MlflowClient` for PaST's runs, candidates, aliases and skill vectors."""

    def __init__(self, settings) -> None:
        from mlflow import MlflowClient

        self.settings = settings
        self.uri = settings.mlflow_uri
        self.store_dir = settings.home / "mlflow"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.lock_path = self.store_dir / "registry.lock"

    # -- locking -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        from filelock import FileLock

        from past.lease import mlflow_lease

        # a fresh file lock (own file descriptor) per caller: threads exclude too; the lease covers other hosts
        with FileLock(self.lock_path), mlflow_lease(self.client):
            yield

    # -- runs ----------------------------------------------------------------------------------------------
    def experiment_id(self, name: str = EXPERIMENT) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        # a server keeps artifacts in its own store; a local path here would be this node's disk
        art = None if is_remote(self.uri) else (self.store_dir / "artifacts" / name).resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=art)
        except Exception:  # noqa: BLE001 - another process created it first
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def start_run(self, corpus_id: str, params: dict[str, Any] | None = None, run_name: str | None = None,
                  experiment: str = EXPERIMENT) -> str:
        """One run per adaptation; nested dicts (e.g. the SFT config) become dotted params."""
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name or f"adapt-{corpus_id}",
                                     tags={"corpus_id": corpus_id})
        flat = _flatten({"corpus_id": corpus_id, **(params or {})})
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flat.items()])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None]
        if ms:
            self.client.log_batch(run_id, metrics=ms)

    def log_curves(self, run_id: str, curves: dict[str, list[float]]) -> None:
        """Training curves as step metrics (step = the trainer's logged step index), so the UI draws them."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, i) for k, vs in curves.items() for i, v in enumerate(vs or [])
              if v is not None and v == v]  # NaN-free
        for i in range(0, len(ms), 1000):  # MLflow's batch limit
            self.client.log_batch(run_id, metrics=ms[i:i + 1000])

    def record_refresh(self, source_corpus_id: str, params: dict[str, Any], records: list[dict]) -> str:
        """One MLflow run per skill refresh (experiment `past-refresh`) with one nested run per round: its
        partition, GRPO reward curves as step metrics, the learning gate, the orthogonality figures and the
        per-layer cosine plot. Returns the parent run id (the skill vector's version links to it)."""
        parent = self.start_run(source_corpus_id, params, run_name=f"refresh-{source_corpus_id[:16]}",
                                experiment=REFRESH_EXPERIMENT)
        for r in records:
            g, o = r["grpo"], (r["orthogonality"].get("summary") or {})
            child = self.client.create_run(self.experiment_id(REFRESH_EXPERIMENT), run_name=f"round-{r['round']}",
                                           tags={"mlflow.parentRunId": parent, "corpus_id": source_corpus_id,
                                                 "partition": r["partition"],
                                                 "learning_gate": "passed" if g["learning"].get("passed") else "failed",
                                                 "learning_reason": str(g["learning"].get("reason", ""))[:4900]})
            cid = child.info.run_id
            self.log_curves(cid, {"grpo_reward": g["reward_curve"], "grpo_reward_std": g["reward_std_curve"],
                                  **{f"grpo_{k}": v for k, v in (g.get("per_reward_curves") or {}).items()}})
            self.log_metrics(cid, {**{f"orthogonality_{k}": v for k, v in o.items() if isinstance(v, (int, float))},
                                   "grpo_steps": g["steps"], "wall_s": r["wall_s"],
                                   **{f"phase_{k}": v for k, v in (r.get("phases") or {}).items()}})
            plot = Path(r["orthogonality"].get("report_dir", "")) / "cosine.png"
            if plot.is_file():
                self.client.log_artifact(cid, str(plot), "orthogonality")
            self.end_run(cid)
        self.log_metrics(parent, {"rounds": len(records)})
        self.end_run(parent)
        return parent

    def log_artifacts(self, run_id: str, paths: list[str | Path], artifact_path: str = "reports") -> None:
        for p in map(Path, paths):
            if p.is_dir():
                self.client.log_artifacts(run_id, str(p), f"{artifact_path}/{p.name}")
            elif p.is_file():
                self.client.log_artifact(run_id, str(p), artifact_path)
            else:
                raise RegistryError(f"report file {p} does not exist")

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def fail_run(self, run_id: str, error: str) -> None:
        """A run whose adaptation raised: the error as a tag, status FAILED (a resumed run ends FINISHED)."""
        self.client.set_tag(run_id, "error", error[:5000])
        self.client.set_terminated(run_id, "FAILED")

    # -- candidates ------------------------------------------------------------------------------------------
    def register_candidate(self, name: str, model_dir: str | Path, run_id: str | None, corpus_id: str,
                           skill_version: str = "", lam: float | None = None,
                           tags: dict[str, str] | None = None) -> str:
        """A new version of NAME pointing at the model folder in place (verified first, never copied), with an
        MLmodel beside the weights so MLflow's own loader can load it (past.mlflow_model)."""
        from past.mlflow_model import write_mlmodel
        from past.models import verify_model_dir

        model_dir = Path(model_dir).resolve()
        problems = verify_model_dir(model_dir)
        if problems:
            raise RegistryError(f"refusing to register {model_dir}: " + "; ".join(problems))
        write_mlmodel(model_dir)
        self._ensure_model(name)
        all_tags = {"manifest_sha256": folder_sha256(model_dir), "corpus_id": corpus_id,
                    "skill_vector_version": skill_version, "lambda": "" if lam is None else str(lam),
                    "gate": "pending", **(tags or {})}
        source, extra = self._source(model_dir, run_id, MODEL_ARTIFACTS)
        mv = self.client.create_model_version(name, source=source, run_id=run_id, tags=all_tags | extra,
                                              description=f"corpus {corpus_id}, skill vector {skill_version or '-'}")
        return str(mv.version)

    def _source(self, path: Path, run_id: str | None, artifact_path: str) -> tuple[str, dict[str, str]]:
        """A new version's source, and the tags that go with it: the folder in place for a registry database;
        for an MLflow HTTP server, the folder (or file) uploaded as artifacts of `run_id` first."""
        if not is_remote(self.uri):
            return path.as_uri(), {}
        if not run_id:
            raise RegistryError(f"registering {path} on the MLflow server {self.uri} needs a run to upload it to")
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
            where = artifact_path
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)
            where = f"{artifact_path}/{path.name}"
        return f"runs:/{run_id}/{where}", {LOCAL_SOURCE_TAG: str(path)}

    def local_path(self, mv) -> Path:
        """A version's files on this machine. In place for a file:// source. For an uploaded one: the folder it
        was uploaded from if it is here and still matches the version's checksum tag, else a copy downloaded
        once into <home>/mlflow/cache/<name>/<version> and checked against that tag before it is used."""
        if not _uploaded(mv):
            return source_path(mv.source)
        from filelock import FileLock

        want = mv.tags.get("manifest_sha256") or mv.tags.get("sha256", "")
        here = Path(mv.tags.get(LOCAL_SOURCE_TAG, "") or "/nonexistent")
        if here.exists() and folder_sha256(here) == want:
            return here
        leaf = urllib.parse.urlparse(mv.source).path.rstrip("/").rsplit("/", 1)[-1]
        final = self.store_dir / "cache" / mv.name / str(mv.version)
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):  # one download per version per home, however many callers
            if not (final / leaf).exists():
                self._download(mv, final, leaf, want)
        return final / leaf

    def _download(self, mv, final: Path, leaf: str, want: str) -> None:
        import shutil
        import tempfile

        import mlflow.artifacts

        from past.models import MANIFEST, verify_model_dir

        stage = Path(tempfile.mkdtemp(prefix=f".{mv.version}-", dir=final.parent))
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(stage),
                                                           tracking_uri=self.uri))
            have = folder_sha256(got)
            problems = [] if have == want else [f"checksum {have[:12]} != tag {want[:12]}"]
            if got.is_dir() and (got / MANIFEST).is_file():
                problems += verify_model_dir(got)  # every file against the manifest, not just the manifest
            if problems:
                raise RegistryError(f"{mv.name} v{mv.version} from {mv.source} does not verify: " + "; ".join(problems))
            if got.name != leaf:
                raise RegistryError(f"{mv.source} downloaded as {got.name!r}, expected {leaf!r}")
            stage.rename(final)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(name)
            except MlflowException:  # created concurrently
                self.client.get_registered_model(name)

    def version(self, name: str, version: str | int):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException:
            raise RegistryError(f"no version {version} of registered model {name!r}") from None

    def alias(self, name: str, alias: str):
        """The model version an alias points at, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def champion(self, name: str):
        return self.alias(name, CHAMPION)

    def champion_ref(self, name: str):
        """The current champion as the gate's `Champion` (served from its folder), or None."""
        from past.evaluation import Champion

        mv = self.champion(name)
        return None if mv is None else Champion(ref(name, mv.version), self.local_path(mv))

    # -- gate results and promotion ----------------------------------------------------------------------------
    def record_gate(self, name: str, version: str, run_id: str | None, report) -> None:
        """Gate metrics, the per-item table and the decision go on the run; the verdict goes on the version."""
        d = report.decision
        if run_id:
            self.log_metrics(run_id, {**d.metrics, **{f"gate_{k}": v for k, v in report.timings.items()}})
            self.client.log_table(run_id, data=_columns(report.table_rows()), artifact_file="gate/items.json")
            self.client.log_dict(run_id, report.to_dict()["decision"] | {"timings": report.timings},
                                 "gate/decision.json")
            self.client.log_dict(run_id, report.to_dict(), "gate/gate-report.json")
            self.client.set_tag(run_id, "gate", "passed" if d.passed else "failed")
        for k, v in {"gate": "passed" if d.passed else "failed", "gate_reason": d.reason[:4900],
                     "eval_hash": d.eval_hash, "compared_with": d.compared_with or "none"}.items():
            self.client.set_model_version_tag(name, version, k, v)

    def write_card(self, name: str, version: str, run_id: str | None, report) -> Path:
        """The version's model card (past.model_card) into its folder, beside the weights and outside their
        checksum manifest, and onto its run as `model-card/README.md`."""
        from past.corpus import atomic_write
        from past.model_card import CARD, render

        mv = self.version(name, version)
        params = self.client.get_run(run_id).data.params if run_id else {}
        text = render(name, str(version), dict(mv.tags), dict(params), report.to_dict()["decision"])
        path = self.local_path(mv) / CARD
        atomic_write(path, text)
        if run_id:
            self.client.log_text(run_id, text, "model-card/README.md")
            if _uploaded(mv):  # and beside the uploaded weights
                self.client.log_text(run_id, text, f"{MODEL_ARTIFACTS}/{CARD}")
        return path

    def conclude(self, name: str, version: str, run_id: str | None, report) -> Outcome:
        """Record the gate and the model card, then promote on a pass (compare-and-set on the champion it was
        compared with)."""
        self.record_gate(name, version, run_id, report)
        self.write_card(name, version, run_id, report)
        with self._locked():  # the latest gated candidate, whatever its verdict (MLflow's champion/challenger)
            self.client.set_registered_model_alias(name, CHALLENGER, str(version))
        if not report.decision.passed:
            self.reject(name, version, report.decision.reason)
            return Outcome(version, False, report.decision.reason)
        try:
            self.promote(name, version, expected=report.decision.champion_version, reason="gate passed")
        except PromotionConflict as e:
            self.reject(name, version, str(e))
            return Outcome(version, False, str(e))
        return Outcome(version, True, "gate passed")

    def reject(self, name: str, version: str, reason: str) -> None:
        for k, v in {"rejected": "true", "rejected_reason": reason[:4900], "rejected_at": _now()}.items():
            self.client.set_model_version_tag(name, version, k, v)

    def champion_history(self, name: str) -> list[str]:
        tags = self.client.get_registered_model(name).tags
        try:
            return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]
        except json.JSONDecodeError:
            raise RegistryError(f"tag {HISTORY_TAG} of {name!r} is not JSON; fix it in the MLflow UI") from None

    def promote(self, name: str, version: str | int, expected: Any = _ANY, reason: str = "manual",
                force: bool = False) -> str:
        """Point `champion` at VERSION if the champion is still `expected` (a `ref()` string, or None for
        "no champion yet"); otherwise raise PromotionConflict and change nothing. A version whose gate failed
        is refused unless `force`."""
        version = str(version)
        with self._locked():
            mv = self.version(name, version)
            if mv.tags.get("gate") == "failed" and not force:
                raise RegistryError(f"{ref(name, version)} failed its gate ({mv.tags.get('gate_reason', '?')}); "
                                    "use --force to promote it anyway")
            cur = self.champion(name)
            cur_ref = None if cur is None else ref(name, cur.version)
            if expected is not _ANY and cur_ref != expected:
                raise PromotionConflict(f"champion of {name!r} is now {cur_ref or 'none'}, but the gate compared "
                                        f"against {expected or 'none'}: re-gate against the new champion")
            if cur is not None and str(cur.version) == version:
                return version
            history = self.champion_history(name)
            self.client.set_registered_model_alias(name, CHAMPION, version)
            self.client.set_registered_model_tag(name, HISTORY_TAG, json.dumps((history + [version])[-200:]))
            tags = {"promoted_at": _now(), "promoted_reason": reason,
                    "previous_champion": cur_ref or "none"}
            for k, v in tags.items():
                self.client.set_model_version_tag(name, version, k, v)
            if mv.tags.get("rejected"):  # a forced promotion overrides an earlier rejection
                self.client.delete_model_version_tag(name, version, "rejected")
            return version

    def rollback(self, name: str) -> str:
        """Move `champion` back to the previous champion; the demoted version is tagged `rolled_back_at`."""
        with self._locked():
            history = self.champion_history(name)
            cur = self.champion(name)
            if cur is None or len(history) < 2:
                raise RegistryError(f"{name!r} has no previous champion to roll back to")
            if history[-1] != str(cur.version):
                raise RegistryError(f"{name!r}: alias {CHAMPION} points at {cur.version} but the history ends at "
                                    f"{history[-1]}; fix the alias in the MLflow UI or `past promote`")
            prev = history[-2]
            self.version(name, prev)
            self.client.set_registered_model_alias(name, CHAMPION, prev)
            self.client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[:-1]))
            self.client.set_model_version_tag(name, str(cur.version), "rolled_back_at", _now())
            self.client.set_model_version_tag(name, prev, "restored_at", _now())
            return prev

    def history(self, name: str) -> list[dict[str, str]]:
        """Every version of NAME, oldest first, with its gate verdict and promotion marks."""
        self.client.get_registered_model(name)  # raises a clear MLflow error for an unknown name
        champ = self.champion(name)
        rows = []
        for mv in self.client.search_model_versions(f"name = '{name}'"):
            t = mv.tags
            rows.append({"version": str(mv.version), "champion": "*" if champ and champ.version == mv.version else "",
                         "corpus_id": t.get("corpus_id", ""), "skill": t.get("skill_vector_version", ""),
                         "lambda": t.get("lambda", ""), "gate": t.get("gate", ""),
                         "reason": t.get("rejected_reason") or t.get("gate_reason", ""),
                         "promoted_at": t.get("promoted_at", ""), "rolled_back_at": t.get("rolled_back_at", ""),
                         "source": mv.source})
        return sorted(rows, key=lambda r: int(r["version"]))

    # -- skill vectors ----------------------------------------------------------------------------------------
    def register_skill_vector(self, path: str | Path, run_id: str | None = None, tags: dict[str, str] | None = None,
                              name: str = SKILL_MODEL, make_current: bool = True) -> str:
        """A new version of the skill-vector model pointing at `path` (folder or file), alias `current`."""
        path = Path(path).resolve()
        if not path.exists():
            raise RegistryError(f"skill vector {path} does not exist")
        self._ensure_model(name)
        source, extra = self._source(path, run_id, VECTOR_ARTIFACTS)
        mv = self.client.create_model_version(
            name, source=source, run_id=run_id,
            tags={"sha256": folder_sha256(path), **{k: str(v) for k, v in (tags or {}).items()}} | extra)
        if make_current:
            with self._locked():
                self.client.set_registered_model_alias(name, CURRENT, str(mv.version))
        return str(mv.version)

    def current_skill_vector(self, name: str = SKILL_MODEL):
        """(version, local path) of the `current` skill vector, or None."""
        mv = self.alias(name, CURRENT)
        return None if mv is None else (str(mv.version), self.local_path(mv))


def _columns(rows: list[dict]) -> dict[str, list]:
    """Row dicts → column lists (what `log_table` takes without pandas); missing cells are None."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    return {k: [r.get(k) for r in rows] for k in keys}
