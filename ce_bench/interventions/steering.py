"""Residual-direction interventions: additive steering and directional ablation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ce_bench.artifacts import ArtifactError
from ce_bench.interventions.base import (
    ActivationIntervention,
    ActivationParams,
    check_number,
    register_intervention,
)
from ce_bench.sites import ModelDims


@dataclass(frozen=True)
class SteerParams(ActivationParams):
    strength: float = 1.0  # k in Unified Concept Editing Eq. 7

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("strength", self.strength)


@register_intervention
class Steer(ActivationIntervention):
    """h <- h + k * v (Unified Concept Editing Eq. 7; NeuronLens App. M: x <- x + a * r)."""

    kind = "steer"
    Params = SteerParams
    tensor_names = ("vector",)

    def check_dims(self, dims: ModelDims, source: str) -> None:
        self.check_vector(dims, source, "vector")

    def prepare(self, device: torch.device, dtype: torch.dtype) -> None:
        super().prepare(device, dtype)
        self.shift = self.params.strength * self.tensors["vector"]

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.shift


@dataclass(frozen=True)
class AblationParams(ActivationParams):
    strength: float = 1.0  # share of the projection removed; 1 = full ablation

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("strength", self.strength)


@register_intervention
class DirectionalAblation(ActivationIntervention):
    """h <- h - r r^T h with r of unit norm (NeuronLens App. M.1, after Arditi et al. 2024).

    The stored direction is normalised on load, so any non-zero vector is accepted.
    """

    kind = "directional_ablation"
    Params = AblationParams
    tensor_names = ("direction",)

    def check_dims(self, dims: ModelDims, source: str) -> None:
        self.check_vector(dims, source, "direction")
        norm = self.tensors["direction"].float().norm()
        if norm == 0:
            raise ArtifactError(source, "direction", "the direction has zero norm")

    def prepare(self, device: torch.device, dtype: torch.dtype) -> None:
        direction = self.tensors["direction"].float()
        self.tensors["direction"] = direction / direction.norm()
        super().prepare(device, dtype)

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        r = self.tensors["direction"]
        return h - self.params.strength * (h @ r)[..., None] * r
