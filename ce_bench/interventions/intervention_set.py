"""`InterventionSet`: the public way to edit a loaded model, with or without lm-eval.

    from ce_bench import InterventionSet
    with InterventionSet.attach(model, ["artifacts/anger_sv"], strength=4) as edits:
        on = model.generate(**batch)            # edited
        with edits.off():
            off = model.generate(**batch)       # exactly the unedited model
    # after the block every hook is gone and every weight is the original, bit for bit

It owns the whole life of the edits on one model: build each artifact's intervention, check it
against the model, attach it once, switch all of it on and off, and detach it. `edited_hf` is an
lm-eval adapter over one of these; lifelong editors join it with `add`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from ce_bench.artifacts import Artifact, check_model, load_artifact
from ce_bench.interventions.base import (
    Intervention,
    Switch,
    build_intervention,
    track_cache_offset,
)

Strength = float | str | Sequence[float] | None


class InterventionSet:
    """Interventions attached to one model and switched on and off together (see the module
    docstring). Build it with `attach`; use it as a context manager, or call `close`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.switch = Switch()
        self.artifacts: list[Artifact] = []
        self.overrides: list[dict[str, Any]] = []
        self.interventions: list[Intervention] = []  # one per artifact, in order
        self.editors: list[Intervention] = []  # added with `add`, built without an artifact
        self._hooks = ExitStack()
        self._hooks.callback(track_cache_offset(model, self.switch).remove)

    @classmethod
    def attach(
        cls,
        model: nn.Module,
        artifacts: Sequence[str | Path | Artifact] = (),
        *,
        strength: Strength = None,
        positions: str | None = None,
    ) -> InterventionSet:
        """Load, check and attach `artifacts` (directories or loaded) to `model`, switched ON.

        `strength` overrides each artifact's strength (k / C / beta): one value for all, one per
        artifact, or lm-eval's form "4+2"; `positions` overrides where activation edits apply
        (all | prompt | generated | last). Nothing stays attached if any artifact fails a check.
        """
        loaded = [a if isinstance(a, Artifact) else load_artifact(a) for a in artifacts]
        overrides = parameter_overrides(strength, positions, len(loaded))
        edits = cls(model)
        try:
            for artifact, override in zip(loaded, overrides, strict=True):
                check_model(artifact, model)
                intervention = build_intervention(artifact, model, override)
                intervention.target = artifact.provenance.report.get("target")
                edits._attach(intervention)
                edits.artifacts.append(artifact)
                edits.overrides.append(override)
                edits.interventions.append(intervention)
        except BaseException:
            edits.close()
            raise
        return edits

    def add(self, intervention: Intervention) -> None:
        """Attach one more intervention built without an artifact (a fresh lifelong editor)."""
        self._attach(intervention)
        self.editors.append(intervention)

    def _attach(self, intervention: Intervention) -> None:
        for handle in intervention.attach(self.model, self.switch):
            self._hooks.callback(handle.remove)

    @property
    def empty(self) -> bool:
        """True when nothing edits the model (ON is then OFF)."""
        return not self.interventions and not self.editors

    @contextmanager
    def off(self) -> Iterator[None]:
        """Inside the block the model is exactly the unedited one."""
        with self.switch.set(False):
            yield

    @contextmanager
    def only(self, target: str | None) -> Iterator[None]:
        """Inside the block only the interventions located for `target` (and those located for
        no target) are on; None: all of them."""
        known = sorted({i.target for i in self.interventions if i.target})
        if target is not None and target not in known:
            raise ValueError(
                f"no intervention was located for target {target!r} (loaded: {known or 'none'});"
                " give one artifact per target, joined by '+'"
            )
        with self.switch.select(target):
            yield

    def close(self) -> None:
        """Detach every hook and restore every weight; the model is the unedited one again."""
        self._hooks.close()

    def __enter__(self) -> InterventionSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parameter_overrides(
    strength: Strength, positions: str | None, count: int
) -> list[dict[str, Any]]:
    """Per-artifact parameter overrides (`strength`, `positions`) for `count` artifacts."""
    strengths: list[Any] = [None] * count
    if strength is not None and strength != "":
        if isinstance(strength, str):
            values = [float(s) for s in strength.split("+")]
        elif isinstance(strength, (int, float)):
            values = [float(strength)]
        else:
            values = [float(s) for s in strength]
        if len(values) not in (1, count):
            raise ValueError(
                f"strength={strength!r} gives {len(values)} values for {count} interventions"
            )
        strengths = values * count if len(values) == 1 else values
    if count == 0 and (strength not in (None, "") or positions):
        raise ValueError("strength/positions given but no intervention= artifact")
    return [
        {k: v for k, v in (("strength", s), ("positions", positions)) if v not in (None, "")}
        for s in strengths
    ]
