"""Difference-of-means steering vectors (Unified Concept Editing Eq. 6; NeuronLens App. M)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ce_bench.artifacts import Artifact, ModelIdentity, Provenance, data_hash, timed
from ce_bench.locate.activations import Aggregate, collect_activations
from ce_bench.sites import Site


@dataclass(frozen=True, kw_only=True)
class DiffmeanConfig:
    """`locate_diffmean`'s settings."""

    layer: int  # the residual stream after this block
    aggregate: Aggregate = "last"  # the last token of each text, or the mean over its tokens
    strength: float = 1.0  # k of h + k v, stored as the artifact's default


@timed
def locate_diffmean(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    positive: list[str],
    negative: list[str],
    config: DiffmeanConfig,
    *,
    model_name: str,
) -> Artifact:
    """A `steer` artifact whose vector is mean(h_pos) - mean(h_neg) at `resid_post` of
    `config.layer`.

    Example:
        >>> config = DiffmeanConfig(layer=15)
        >>> art = locate_diffmean(model, tok, happy, neutral, config, model_name="smollm2-135m")
        >>> save_intervention(art, "artifacts/happy_sv")
    """
    if not positive or not negative:
        raise ValueError("diffmean needs at least one positive and one negative text")
    site = Site("resid_post", config.layer)
    pos = collect_activations(model, tokenizer, positive, site, config.aggregate, desc="positive")
    neg = collect_activations(model, tokenizer, negative, site, config.aggregate, desc="negative")
    hash_ = data_hash("\n".join(positive), "\n".join(negative))
    return diffmean_artifact(
        model, model_name, site, pos, neg, hash_, config.aggregate, config.strength
    )


def diffmean_artifact(
    model: nn.Module,
    model_name: str,
    site: Site,
    pos: torch.Tensor,
    neg: torch.Tensor,
    hash_: str,
    aggregate: Aggregate = "last",
    strength: float = 1.0,
) -> Artifact:
    """The `steer` artifact of already collected activations (rows of `pos` and `neg`)."""
    vector = pos.mean(0) - neg.mean(0)
    if not float(vector.norm()) > 0:
        raise ValueError("positive and negative texts have the same mean activation: no direction")
    # k at which k*v is as long as the mean residual: a scale-free unit for strength grids
    mean_norm = float(torch.cat([pos, neg]).norm(dim=-1).mean())
    return Artifact(
        kind="steer",
        site=site,
        params={"strength": strength, "positions": "all"},
        tensors={"vector": vector},
        model=ModelIdentity.of(model, model_name),
        provenance=Provenance(
            method="diffmean",
            data_hash=hash_,
            report={
                "variant": aggregate,
                "mean_norm": mean_norm,
                "strength_unit": mean_norm / float(vector.norm()),
            },
        ),
    )
