"""Activation-range interventions (NeuronLens): edit a unit only inside its class range.

For each selected unit j (a residual-stream neuron, or an SAE latent when the artifact names an
SAE) the artifact stores the target class's mean mu_j and standard deviation sigma_j; the
attribution range is [mu - tau*sigma, mu + tau*sigma] (5.1, tau = 2.5). With `gate="range"` the
operator phi applies only when the activation falls inside that range (Eq. 2, Algorithm 1);
`gate="always"` is the neuron-masking baseline (the same units, the same phi, every value).

phi (5.2, Appendix G, M.2):
    zero      x <- 0
    dampen    x <- alpha * x
    mean      x <- mu
    adaptive  x <- a(x) * x with a(x) = beta * |x - mu| / (tau * sigma)   (G.3, beta = 0.5)
    steer     x <- x + strength * r_j, r = the class's difference of means (M.2, strength -2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import torch
from torch import nn

from ce_bench.artifacts import ArtifactError
from ce_bench.interventions.base import (
    ActivationIntervention,
    ActivationParams,
    check_choice,
    check_indices,
    check_number,
    register_intervention,
)
from ce_bench.interventions.sae import load_sae
from ce_bench.sites import ModelDims, width_at

if TYPE_CHECKING:
    from sae_lens import SAE

Phi = Literal["zero", "dampen", "mean", "adaptive", "steer"]
Gate = Literal["range", "always"]
DEFAULT_TAU = 2.5  # NeuronLens 5.3: about 98.8% of a Gaussian
DEFAULT_ALPHA = 0.125  # NeuronLens Table 12's dampening factor
DEFAULT_BETA = 0.5  # NeuronLens G.3
DEFAULT_STEER = -2.0  # NeuronLens M: a = -2 removes the concept most precisely


@dataclass(frozen=True)
class RangeMaskParams(ActivationParams):
    phi: Phi = "zero"
    gate: Gate = "range"
    tau: float = DEFAULT_TAU
    alpha: float = DEFAULT_ALPHA  # for phi=dampen
    beta: float = DEFAULT_BETA  # for phi=adaptive
    strength: float = DEFAULT_STEER  # for phi=steer: the multiple of r added
    sae_path: str = ""  # units are this SAE's latents (NeuronLens Appendix N), or:
    sae_release: str = ""
    sae_id: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("phi", self.phi, get_args(Phi))
        check_choice("gate", self.gate, get_args(Gate))
        for name in ("tau", "alpha", "beta", "strength"):
            check_number(name, getattr(self, name))
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")


@register_intervention
class RangeMask(ActivationIntervention):
    """Range-gated phi on selected units of a site (NeuronLens Eq. 2, Algorithm 1, Appendix N)."""

    kind = "range_mask"
    Params = RangeMaskParams
    tensor_names = ("neurons", "mu", "sigma", "direction")

    @property
    def on_sae(self) -> bool:
        """Whether the units are an SAE's latents (their count is known once it is loaded)."""
        return bool(self.params.sae_path or self.params.sae_release)

    def check_dims(self, dims: ModelDims, source: str) -> None:
        neurons = self.tensors["neurons"]
        if not self.on_sae:
            check_indices(source, "neurons", neurons, width_at(dims, self.site))
        for name in ("mu", "sigma", "direction"):
            if self.tensors[name].shape != neurons.shape:
                raise ArtifactError(
                    source,
                    name,
                    f"expected shape {tuple(neurons.shape)} (one value per unit),"
                    f" got {tuple(self.tensors[name].shape)}",
                )
        if bool((self.tensors["sigma"] < 0).any()):
            raise ArtifactError(source, "sigma", "standard deviations must be >= 0")

    def check(self, model: nn.Module, source: str) -> None:
        p = self.params
        self.sae: SAE | None = None
        if self.on_sae:
            try:
                self.sae = load_sae(p.sae_path, p.sae_release, p.sae_id)
            except Exception as err:  # sae-lens raises many types for a missing or bad SAE
                raise ArtifactError(source, "params.sae_path", f"cannot load ({err})") from err
            check_indices(source, "neurons", self.tensors["neurons"], self.sae.cfg.d_sae)

    def prepare(self, device: torch.device, dtype: torch.dtype) -> None:
        super().prepare(device, dtype)
        self.tensors["neurons"] = self.tensors["neurons"].long()
        if self.sae is not None:
            self.sae = self.sae.to(device=device, dtype=dtype)

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        if self.sae is None:
            return mask_units(h, self.tensors, self.params)
        codes = self.sae.encode(h)
        edited = mask_units(codes, self.tensors, self.params)
        both = self.sae.decode(torch.stack([edited, codes]))  # keeps the reconstruction error
        return h + (both[0] - both[1])


def mask_units(
    h: torch.Tensor, tensors: dict[str, torch.Tensor], params: RangeMaskParams
) -> torch.Tensor:
    """`h` with phi applied to the selected units (last dimension), gated by their ranges."""
    neurons, mu, sigma = tensors["neurons"], tensors["mu"], tensors["sigma"]
    x = h[..., neurons]
    half_width = params.tau * sigma
    inside = (x - mu).abs() <= half_width
    if params.gate == "always":
        inside = torch.ones_like(inside)
    out = h.clone()
    out[..., neurons] = torch.where(inside, _phi(x, mu, half_width, tensors, params), x)
    return out


def _phi(
    x: torch.Tensor,
    mu: torch.Tensor,
    half_width: torch.Tensor,
    tensors: dict[str, torch.Tensor],
    params: RangeMaskParams,
) -> torch.Tensor:
    if params.phi == "zero":
        return torch.zeros_like(x)
    if params.phi == "dampen":
        return params.alpha * x
    if params.phi == "mean":
        return mu.expand_as(x)
    if params.phi == "adaptive":  # a(mu) = 0; a = beta at the range's edges (G.3)
        scale = params.beta * (x - mu).abs() / half_width.clamp(min=torch.finfo(x.dtype).tiny)
        return scale * x
    return x + params.strength * tensors["direction"]
