"""Intervention artifacts: one directory = `intervention.json` + `tensors.safetensors`.

This module alone reads, writes and validates artifacts. Nothing is pickled. Validation against a
loaded model happens before any evaluation starts and names the file, the field, the expected
and the actual value.

Example:
    >>> art = Artifact(kind="steer", site=Site("resid_post", 12), params={"strength": 4.0},
    ...                tensors={"vector": v}, model=ModelIdentity.of(model, "smollm2-135m"),
    ...                provenance=Provenance(method="diffmean", data_hash="..."))
    >>> save_artifact(art, "artifacts/anger_sv")
    >>> art = load_artifact("artifacts/anger_sv")
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ParamSpec

import torch
from safetensors.torch import load_file, save_file

from ce_bench.sites import ModelDims, Site, SiteError, model_dims

P = ParamSpec("P")

FORMAT_VERSION = 1
MANIFEST = "intervention.json"
TENSORS = "tensors.safetensors"
_SAMPLE_ROWS, _SAMPLE_COLS = 4, 8  # embedding entries stored to tell models apart


class ArtifactError(ValueError):
    """An artifact that cannot be used: names the file, the field, expected and actual values."""

    def __init__(self, path: Path | str, field_name: str, problem: str) -> None:
        super().__init__(f"{path}: field {field_name!r}: {problem}")
        self.path, self.field = str(path), field_name


@dataclass(frozen=True)
class ModelIdentity:
    """The model an artifact was located on: its sizes and a sample of its embedding weights.

    The embedding sample tells two models with the same shapes apart (e.g. a base model and an
    unrelated fine-tune) regardless of the path or hub id each was loaded from.
    """

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    d_mlp: int
    embedding_sample: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, model: torch.nn.Module, name: str) -> ModelIdentity:
        dims = model_dims(model)
        emb = model.get_input_embeddings().weight[:_SAMPLE_ROWS, :_SAMPLE_COLS]
        sample = [round(x, 6) for x in emb.detach().float().cpu().flatten().tolist()]
        return cls(name, dims.model_type, dims.num_layers, dims.hidden_size, dims.d_mlp, sample)

    def dims(self) -> ModelDims:
        """The recorded sizes, to check an artifact without loading its model (`ce-bench show`)."""
        return ModelDims(self.model_type, self.num_layers, self.hidden_size, self.d_mlp)


@dataclass(frozen=True)
class Provenance:
    """How an artifact was made.

    `report` holds what the locate method wants a reader to see (JSON values only): the data
    split and its hash, candidate tables, training statistics.
    """

    method: str
    data_hash: str = ""
    ce_bench_version: str = ""
    date: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None  # how long locating took (`timed`); the board's locate cost

    def stamped(self) -> Provenance:
        """A copy with the current ce-bench version and date filled in."""
        from ce_bench import __version__

        date = self.date or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        return replace(self, ce_bench_version=self.ce_bench_version or __version__, date=date)


def timed(locate: Callable[P, Artifact]) -> Callable[P, Artifact]:
    """`locate`, its artifacts recording the seconds it took in `provenance.seconds`, plus
    any seconds `locate` put there for work done before the call (activations read once and
    shared between artifacts)."""

    @functools.wraps(locate)
    def run(*args: P.args, **kwargs: P.kwargs) -> Artifact:
        start = time.perf_counter()
        artifact = locate(*args, **kwargs)
        earlier = artifact.provenance.seconds or 0.0
        seconds = round(time.perf_counter() - start + earlier, 3)
        return replace(artifact, provenance=replace(artifact.provenance, seconds=seconds))

    return run


@dataclass
class Artifact:
    """An intervention as plain values: what kind, where, with which parameters and tensors."""

    kind: str
    site: Site
    params: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    model: ModelIdentity
    provenance: Provenance
    path: Path | None = None  # where it was loaded from, for error messages

    @property
    def source(self) -> str:
        return str(self.path / MANIFEST) if self.path else f"<{self.kind} artifact>"


def save_artifact(artifact: Artifact, directory: str | Path) -> Path:
    """Write `artifact` to `directory` (created if needed); returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": artifact.kind,
        "site": artifact.site.name,
        "layer": artifact.site.layer,
        "params": artifact.params,
        "model": asdict(artifact.model),
        "provenance": asdict(artifact.provenance.stamped()),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in artifact.tensors.items()}
    save_file(tensors, str(out / TENSORS))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def load_artifact(directory: str | Path) -> Artifact:
    """Read and check an artifact directory; every problem names its file and field."""
    root = Path(directory)
    manifest_path, tensors_path = root / MANIFEST, root / TENSORS
    if not root.is_dir():
        raise ArtifactError(root, "intervention", "artifact directory not found")
    if not manifest_path.is_file():
        raise ArtifactError(manifest_path, MANIFEST, "file not found")
    if not tensors_path.is_file():
        raise ArtifactError(tensors_path, TENSORS, "file not found (every artifact has one)")
    for path in (manifest_path, tensors_path):
        _check_inside(root, path)
    try:
        raw = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(manifest_path, MANIFEST, f"not valid JSON ({err})") from err
    manifest = _Fields(raw, manifest_path)
    version = manifest.take("format_version", int)
    if version != FORMAT_VERSION:
        raise ArtifactError(
            manifest_path, "format_version", f"expected {FORMAT_VERSION}, got {version}"
        )
    try:
        site = Site(manifest.take("site", str), manifest.take("layer", int))
    except SiteError as err:
        raise ArtifactError(manifest_path, "site", str(err)) from err
    artifact = Artifact(
        kind=manifest.take("kind", str),
        site=site,
        params=manifest.take("params", dict),
        tensors=_load_tensors(tensors_path),
        model=_dataclass_from(ModelIdentity, manifest.take("model", dict), manifest_path, "model"),
        provenance=_dataclass_from(
            Provenance, manifest.take("provenance", dict), manifest_path, "provenance"
        ),
        path=root,
    )
    manifest.reject_rest()
    return artifact


def check_model(artifact: Artifact, model: torch.nn.Module) -> None:
    """Fail unless `artifact` was located on a model with `model`'s shapes and weights.

    Whether the artifact fits those shapes (its layer, its tensors) is
    `ce_bench.interventions.build_intervention`'s check.
    """
    here = ModelIdentity.of(model, artifact.model.name)
    for name in ("model_type", "num_layers", "hidden_size", "d_mlp"):
        expected, actual = getattr(here, name), getattr(artifact.model, name)
        if expected != actual:
            raise ArtifactError(
                artifact.source,
                f"model.{name}",
                f"artifact was located on a model with {name}={actual!r}, the loaded model has"
                f" {expected!r}",
            )
    if artifact.model.embedding_sample and not torch.allclose(
        torch.tensor(artifact.model.embedding_sample),
        torch.tensor(here.embedding_sample),
        rtol=2e-2,
        atol=1e-3,
    ):
        raise ArtifactError(
            artifact.source,
            "model.embedding_sample",
            f"artifact was located on another model ({artifact.model.name!r}): its embedding"
            " weights differ from the loaded model's; locate it again on this model",
        )


def fingerprint(artifacts: list[Artifact], overrides: dict[str, Any]) -> str:
    """A short hash of the artifacts' contents plus the run's overrides (for results and caches)."""
    digest = hashlib.sha256()
    for art in artifacts:
        digest.update(json.dumps([art.kind, str(art.site), art.params], sort_keys=True).encode())
        for name in sorted(art.tensors):
            digest.update(name.encode())
            digest.update(art.tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy())
    digest.update(json.dumps(overrides, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def data_hash(*texts: str) -> str:
    """Hash of the data a method located from, stored in provenance."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _check_inside(root: Path, path: Path) -> None:
    """Fail if `path` is a symlink to a file outside `root`: an artifact is its directory, and a
    link out of it would load whatever file it points to."""
    target = path.resolve()
    if not target.is_relative_to(root.resolve()):
        raise ArtifactError(
            path, path.name, f"a symlink to {target}, outside the artifact directory"
        )


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises several error types for corrupt files
        raise ArtifactError(path, TENSORS, f"not a readable safetensors file ({err})") from err
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ArtifactError(path, name, "contains NaN or infinite values")
    return tensors


class _Fields:
    """Take fields out of a JSON object one by one; leftovers are errors (no silent ignoring)."""

    def __init__(self, raw: Any, path: Path) -> None:
        if not isinstance(raw, dict):
            raise ArtifactError(path, MANIFEST, "expected a JSON object")
        self.raw, self.path = dict(raw), path

    def take(self, name: str, kind: type) -> Any:
        if name not in self.raw:
            raise ArtifactError(self.path, name, "missing")
        value = self.raw.pop(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ArtifactError(
                self.path, name, f"expected {kind.__name__}, got {type(value).__name__}"
            )
        return value

    def reject_rest(self) -> None:
        if self.raw:
            raise ArtifactError(self.path, sorted(self.raw)[0], "unknown field")


def _dataclass_from(cls: type, raw: dict[str, Any], path: Path, prefix: str) -> Any:
    known = {f.name for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise ArtifactError(path, f"{prefix}.{key}", "unknown field")
    try:
        return cls(**raw)
    except TypeError as err:
        raise ArtifactError(path, prefix, str(err)) from err
