"""Neuron-level interventions on the FFN intermediate activations (`mlp_act`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ce_bench.artifacts import ArtifactError
from ce_bench.interventions.base import (
    ActivationIntervention,
    ActivationParams,
    check_indices,
    check_number,
    register_intervention,
)
from ce_bench.sites import ModelDims, width_at


@dataclass(frozen=True)
class NeuronScaleParams(ActivationParams):
    strength: float = 0.0  # beta in Unified Concept Editing Eq. 3; 0 masks the neurons

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("strength", self.strength)


@register_intervention
class NeuronScale(ActivationIntervention):
    """w_i <- beta * w_i for each neuron i of a set at `mlp_act` (Unified Concept Editing Eq. 3).

    Implemented as one multiplication by a per-neuron scale vector (1 outside the set).
    """

    kind = "neuron_scale"
    Params = NeuronScaleParams
    tensor_names = ("neurons",)

    def check_dims(self, dims: ModelDims, source: str) -> None:
        if self.site.name != "mlp_act":
            raise ArtifactError(
                source, "site", f"neuron_scale acts on mlp_act, got {self.site.name}"
            )
        self.width = width_at(dims, self.site)
        check_indices(source, "neurons", self.tensors["neurons"], self.width)

    def prepare(self, device: torch.device, dtype: torch.dtype) -> None:
        scale = torch.ones(self.width, dtype=dtype, device=device)
        scale[self.tensors["neurons"].to(device)] = self.params.strength
        self.scale = scale

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.scale
