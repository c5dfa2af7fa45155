"""SAE feature clamping through a sae-lens SAE: encode, set feature k to C, decode."""

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
    check_integer,
    check_number,
    register_intervention,
)
from ce_bench.sites import SiteError, site_from_hook_name, site_width

if TYPE_CHECKING:
    from sae_lens import SAE

ClampMode = Literal["replace", "delta"]
# Attention sinks (the first token, BOS) carry residual norms ~100x the others; SAEs are trained
# without them and reconstruct them badly, so a clamp leaves positions this far above the
# median norm of their sequence untouched.
SINK_RATIO = 10.0


@dataclass(frozen=True)
class SAEClampParams(ActivationParams):
    feature: int = -1  # index k of the clamped feature
    strength: float = 0.0  # the value C the feature is set to
    mode: ClampMode = "replace"
    sae_path: str = ""  # a local sae-lens SAE directory (offline use), or:
    sae_release: str = ""  # a sae-lens release and id (hub use)
    sae_id: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("strength", self.strength)
        check_choice("mode", self.mode, get_args(ClampMode))
        check_integer("feature", self.feature, 0)
        if bool(self.sae_path) == bool(self.sae_release and self.sae_id):
            raise ValueError("give either sae_path, or sae_release and sae_id")


def load_sae(sae_path: str = "", sae_release: str = "", sae_id: str = "") -> SAE:
    """Load a sae-lens SAE from a local directory, or from a release and id (hub)."""
    from sae_lens import SAE

    if sae_path:
        return SAE.load_from_disk(sae_path, device="cpu")
    if not (sae_release and sae_id):
        raise ValueError("give either sae_path, or sae_release and sae_id")
    return SAE.from_pretrained(sae_release, sae_id, device="cpu")


@register_intervention
class SAEClamp(ActivationIntervention):
    """Clamp SAE feature k to C (Unified Concept Editing 3.1 and App. A.1, Eq. 18).

    Modes:
        replace: h <- decode(c'), the paper's edit; it drops the SAE's reconstruction error, so
            even C = c_k changes h by that error.
    Attention-sink positions (norm > SINK_RATIO x the sequence's median) are left as they are.
        delta: h <- h + decode(c') - decode(c) = h + W_dec[k] (C - c_k) for an SAE without
            activation normalisation; keeps the error term, so C = c_k is the identity.
    """

    kind = "sae_clamp"
    Params = SAEClampParams

    def check(self, model: nn.Module, source: str) -> None:
        try:
            p = self.params
            self.sae = load_sae(p.sae_path, p.sae_release, p.sae_id)
        except Exception as err:  # sae-lens raises many types for a missing or bad SAE
            raise ArtifactError(source, "params.sae_path", f"cannot load the SAE ({err})") from err
        cfg = self.sae.cfg
        hook_name = cfg.metadata.hook_name
        try:
            sae_site = site_from_hook_name(model, hook_name)
        except SiteError as err:
            raise ArtifactError(source, "site", str(err)) from err
        if sae_site != self.site:
            raise ArtifactError(
                source,
                "site",
                f"the SAE reads {sae_site} ({hook_name}), the artifact says {self.site}",
            )
        if cfg.d_in != site_width(model, self.site):
            raise ArtifactError(
                source,
                "params.sae_path",
                f"SAE d_in={cfg.d_in}, site width {site_width(model, self.site)}",
            )
        if self.params.feature >= cfg.d_sae:
            raise ArtifactError(
                source, "params.feature", f"feature {self.params.feature} >= SAE width {cfg.d_sae}"
            )

    def prepare(self, device: torch.device, dtype: torch.dtype) -> None:
        self.sae = self.sae.to(device=device, dtype=dtype)
        k, value = self.params.feature, self.params.strength
        self.feature = torch.tensor(k, device=device)
        self.value = torch.tensor(value, device=device, dtype=dtype)

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        return clamp_features(self.sae, h, self.feature, self.value, self.params.mode)


def clamp_features(
    sae: SAE, h: torch.Tensor, feature: torch.Tensor, value: torch.Tensor, mode: ClampMode
) -> torch.Tensor:
    """h (batch, ..., d) with SAE feature `feature` set to `value` at every position.

    `feature` and `value` are 0-d (the same for every row) or (batch,) (one per row, as the
    Reinforcer's batch of candidates needs). Attention-sink positions are left as they are.
    """
    return torch.where(sink_positions(h)[..., None], h, _clamp(sae, h, feature, value, mode))


def sink_positions(h: torch.Tensor) -> torch.Tensor:
    """(batch, seq) True at attention sinks: residual norm > SINK_RATIO x the row's median."""
    norms = h.norm(dim=-1)
    return norms > SINK_RATIO * norms.median(dim=-1, keepdim=True).values


def _clamp(
    sae: SAE, h: torch.Tensor, feature: torch.Tensor, value: torch.Tensor, mode: ClampMode
) -> torch.Tensor:
    per_row = (-1,) + (1,) * (h.dim() - 1)  # broadcasts over every position of a row
    index = feature.reshape(per_row).expand(*h.shape[:-1], 1)
    value = value.to(h.dtype).reshape(per_row)
    codes = sae.encode(h)
    # Without run-time normalisation decode is affine, so the delta is one row of W_dec.
    if mode == "delta" and sae.cfg.normalize_activations in (None, "none"):
        rows = sae.W_dec[feature].reshape(*per_row[:-1], h.shape[-1])
        return h + (value - codes.gather(-1, index)) * rows
    clamped = codes.scatter(-1, index, value.expand_as(index))
    if mode == "replace":
        return sae.decode(clamped)
    both = sae.decode(torch.stack([clamped, codes]))  # one decode, shared normalisation
    return h + (both[0] - both[1])
