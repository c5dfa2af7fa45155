"""Neuron-level interventions on the FFN intermediate activations (`mlp_act`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ce_bench.artifacts import ArtifactError
from ce_bench.interventions.base import (
    ActivationIntervention,
    ActivationParams,
    check_number,
    register_intervention,
)
from ce_bench.sites import site_width


@dataclass(frozen=True)
class NeuronScaleParams(ActivationParams):
    strength: float = 0.0  # beta in seed 000 Eq. 3; 0 masks the neurons

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("strength", self.strength)


@register_intervention
class NeuronScale(ActivationIntervention):
    """w_i <- beta * w_i for each neuron i of a set at `mlp_act` (seed 000 Eq. 3).

    Implemented as one multiplication by a per-neuron scale vector (1 outside the set).
    """

    kind = "neuron_scale"
    Params = NeuronScaleParams
    tensor_names = ("neurons",)

    def check(self, model: nn.Module, source: str) -> None:
        if self.site.name != "mlp_act":
            raise ArtifactError(
                source, "site", f"neuron_scale acts on mlp_act, got {self.site.name}"
            )
        neurons, width = self.tensors["neurons"], site_width(model, self.site)
        if neurons.dtype not in (torch.int32, torch.int64) or neurons.dim() != 1:
            raise ArtifactError(
                source, "neurons", "expected a 1-D integer tensor of neuron indices"
            )
        if neurons.numel() and (int(neurons.min()) < 0 or int(neurons.max()) >= width):
            raise ArtifactError(
                source,
                "neurons",
                f"indices must lie in [0, {width}) for {self.site}, got max {int(neurons.max())}",
            )
        self.width = width

    def prepare(self, device: torch.device, dtype: torch.dtype) -> None:
        scale = torch.ones(self.width, dtype=dtype, device=device)
        scale[self.tensors["neurons"].to(device)] = self.params.strength
        self.scale = scale

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.scale
