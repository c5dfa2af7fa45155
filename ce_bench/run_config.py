"""`config.ce_bench` of a results file: what an `edited_hf` run edited.

`edited_hf` writes it (`RunConfig.to_json`, through lm-eval's `get_model_info`); the board, the
gate and the reports read it (`RunConfig.from_json`). Nothing else knows its layout.

A method has one name everywhere: the `ce-bench locate <name>` command that located the
artifact, or the lifelong editor (`editor=<name>`); it is the artifact's `provenance.method`. A
method with several variants (NeuronLens's saliency rankings, a diffmean's aggregation) keeps the
variant in `provenance.report["variant"]`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ce_bench.artifacts import Artifact

# Artifacts written before methods had one name said "<old>/<variant>"; read them as today's.
_RENAMED = {
    "neuronlens": "ranges",
    "class_diffmean": "class-steering",
    "knowledge_neurons": "knowledge-neurons",
    "sae_features": "sae-features",
}


@dataclass(frozen=True)
class AttachedArtifact:
    """One artifact an `edited_hf` run attached, with the parameters it ran with."""

    artifact: str | None  # the directory, resolved; None when built in memory
    kind: str
    site: str
    layer: int
    params: dict[str, Any]
    located_on: str
    provenance: dict[str, Any]

    @classmethod
    def of(cls, artifact: Artifact, params: Any) -> AttachedArtifact:
        """`artifact` as attached with its intervention's (overridden) `params`."""
        return cls(
            artifact=str(Path(artifact.path).resolve()) if artifact.path else None,
            kind=artifact.kind,
            site=artifact.site.name,
            layer=artifact.site.layer,
            params=dict(vars(params)),
            located_on=artifact.model.name,
            provenance=dict(vars(artifact.provenance)),
        )

    @property
    def report(self) -> dict[str, Any]:
        return self.provenance.get("report") or {}

    @property
    def method(self) -> str:
        """The method's one name (see the module docstring)."""
        return method_of(self.provenance)[0] or self.kind

    @property
    def variant(self) -> str:
        return method_of(self.provenance)[1]


def method_of(provenance: dict[str, Any]) -> tuple[str, str]:
    """(the one name of the method that located an artifact, its variant or ''), from its
    provenance as saved in a manifest or a results file, older spellings included."""
    report = provenance.get("report") or {}
    old, _, suffix = str(provenance.get("method") or "").partition("/")
    if report.get("locate_method"):  # emotion jobs before the rename: the job's method
        name, suffix = str(report["locate_method"]), ""
    elif old == "lifelong":  # "lifelong/ft": the editor
        name, suffix = suffix, ""
    elif old == "privacy":  # "privacy/featureedit", "privacy/knowledge_neurons"
        name, suffix = {"knowledge_neurons": "fact-neurons"}.get(suffix, suffix), ""
    else:
        name = _RENAMED.get(old, old)
    return name, str(report.get("variant", suffix))


@dataclass(frozen=True)
class RunConfig:
    """`config.ce_bench` (see the module docstring)."""

    base_model: str
    fingerprint: str
    interventions: list[AttachedArtifact] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    lifelong: dict[str, Any] | None = None  # `LifelongSession.describe()`: editor, edits, ...

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.lifelong is None:
            del data["lifelong"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        """Read `config.ce_bench` as any ce-bench version wrote it (absent fields: empty)."""
        return cls(
            base_model=str(data.get("base_model") or ""),
            fingerprint=str(data.get("fingerprint") or ""),
            interventions=[
                AttachedArtifact(
                    artifact=item.get("artifact"),
                    kind=str(item.get("kind", "?")),
                    site=str(item.get("site", "")),
                    layer=item.get("layer"),
                    params=dict(item.get("params") or {}),
                    located_on=str(item.get("located_on", "")),
                    provenance=dict(item.get("provenance") or {}),
                )
                for item in data.get("interventions") or []
            ],
            versions={str(k): str(v) for k, v in (data.get("versions") or {}).items()},
            lifelong=data.get("lifelong") or None,
        )
