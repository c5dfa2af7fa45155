"""Neuron-level consistency (Unified Concept Editing sections 3.2 and 4.5, Table 5, Eq. 13-17 and
22-24).

Every method implies a set of FFN neurons (the inputs of W_down of layer L):

- NE: the located set itself (a `neuron_scale` artifact); its size is J.
- SAE: dn = W_down^+ (h_rec - h) / n (Eq. 16), h_rec - h being the change the `sae_clamp` edit
  makes to the residual after layer L and n the unedited neuron activations of layer L.
- SV: dn = W_down^+ (k v) / n (Eq. 17, 22), the same with the steer edit's constant shift.
- SFT: dw_j = ||W_sft[:, j] - W[:, j]|| / ||W[:, j]|| per column (Eq. 15), W_sft = W + s delta.

Each score vector gives its top J neurons, argsort(score)[-J:] (Eq. 14, 23, 24), and every pair
of methods gets |A ∩ B| / J * 100. A method that is not given (e.g. the SAE had no feature for
the emotion) shows "-", as in Table 5.

SAE and SV are scored at the last prompt token of each prompt, and dn is averaged over prompts.
The division by n is elementwise, as in the paper; only |n| below `eps` is raised to `eps`
(keeping its sign), so a silent neuron yields a large finite rate rather than inf or NaN.

Example:
    >>> report = neuron_overlap(model, tok, prompts, ne=ne, sae=sae, sv=sv, sft=sft)
    >>> show(console, overlap_grid(report))
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ce_bench.analysis.generalization import check_emotion
from ce_bench.artifacts import Artifact, ArtifactError, check_model
from ce_bench.interventions import Intervention, build_intervention
from ce_bench.interventions.base import ActivationIntervention
from ce_bench.sites import Site, attach_hook, module_path, out_in, site_width
from ce_bench.tables import Grid

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

METHODS = ("NE", "SAE", "SV", "SFT")
PAIRS = tuple(f"{a}-{b}" for a, b in combinations(METHODS, 2))  # Table 5's column order
EXPECTED = {  # method -> (artifact kind, site)
    "NE": ("neuron_scale", "mlp_act"),
    "SAE": ("sae_clamp", "resid_post"),
    "SV": ("steer", "resid_post"),
    "SFT": ("weight_delta", "mlp_act"),
}


@dataclass(frozen=True)
class OverlapReport:
    """One row of Table 5 as plain values.

    `neurons[method]` is the sorted top-J neuron indices (None for a missing method);
    `overlaps[pair]` ("NE-SAE", ...) is the overlap in percent (None if either side is missing).
    """

    layer: int
    top_j: int
    prompts: int
    emotion: str | None
    neurons: dict[str, list[int] | None]
    overlaps: dict[str, float | None]


def neuron_overlap(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    ne: Artifact | None = None,
    sae: Artifact | None = None,
    sv: Artifact | None = None,
    sft: Artifact | None = None,
    top_j: int | None = None,
    emotion: str | None = None,
    eps: float = 1e-6,
) -> OverlapReport:
    """Top-J neurons of each given method at their common layer, and their pairwise overlap.

    Args:
        model, tokenizer: the unedited model the artifacts were located on.
        prompts: where SAE and SV are scored (last token); unused without them.
        ne, sae, sv, sft: the methods' artifacts; any may be None.
        top_j: J; defaults to the size of NE's set (Unified Concept Editing 4.5) and is required
        without NE. emotion: if given, artifacts stamped with another emotion are rejected. eps: the
        smallest |n| divided by (see the module docstring).

    Example:
        >>> neuron_overlap(model, tok, ["You feel"], sv=sv, sft=sft, top_j=20).overlaps["SV-SFT"]
    """
    given = {m: a for m, a in zip(METHODS, (ne, sae, sv, sft), strict=True) if a is not None}
    if not given:
        raise ValueError("give at least one of ne, sae, sv, sft")
    layer = _common_layer(given)
    built = {m: _build(m, a, model, emotion) for m, a in given.items()}
    located = built["NE"].tensors["neurons"].unique() if "NE" in built else None
    j = _top_j(located, top_j, model, layer)
    neurons: dict[str, list[int] | None] = dict.fromkeys(METHODS)
    if located is not None:
        neurons["NE"] = located.tolist()
    scores: dict[str, torch.Tensor] = {}
    if "SFT" in built:
        scores["SFT"] = sft_change(model, layer, built["SFT"])
    residual = {m: cast(ActivationIntervention, built[m]) for m in ("SAE", "SV") if m in built}
    if residual:
        if not prompts:
            raise ValueError("SAE and SV are scored on prompts: give at least one")
        scores |= residual_rates(model, tokenizer, prompts, layer, residual, eps)
    for method, score in scores.items():
        neurons[method] = sorted(torch.argsort(score, stable=True)[-j:].tolist())  # Eq. 14/23/24
    overlaps: dict[str, float | None] = {}
    for pair in PAIRS:
        a, b = (neurons[m] for m in pair.split("-"))
        overlaps[pair] = None if a is None or b is None else len(set(a) & set(b)) / j * 100
    n_prompts = len(prompts) if residual else 0
    return OverlapReport(layer, j, n_prompts, emotion, neurons, overlaps)


def down_columns(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """`weight` (or a tensor shaped like it) as W_down in Eq. 11's layout, (d_model, d_mlp).

    Column j is what neuron j writes to the residual stream. nn.Linear stores exactly that;
    GPT-2's Conv1D computes x @ W and stores the transpose.
    """
    return out_in(module, weight)


def sft_change(model: nn.Module, layer: int, intervention: Intervention) -> torch.Tensor:
    """Eq. 15: ||W_sft[:, j] - W[:, j]|| / ||W[:, j]|| for every neuron j, W_sft = W + s delta."""
    module = _down_module(model, layer)
    weight = down_columns(module, module.weight.detach()).float()
    delta = down_columns(module, intervention.tensors["delta"]).float().to(weight.device)
    change = (intervention.params.strength * delta).norm(dim=0)
    # A dead column (norm 0) that the fine-tune touched has an unbounded rate: rank it first.
    return (change / weight.norm(dim=0).clamp_min(torch.finfo(torch.float32).tiny)).cpu()


@torch.no_grad()
def residual_rates(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    layer: int,
    interventions: dict[str, ActivationIntervention],
    eps: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """Eq. 16/17: mean over prompts of W_down^+ (edit(h) - h) / n, per residual intervention.

    h and n are read from the unedited model at the last prompt token; each intervention's own
    `edit` gives h_rec (SAE) or h + k v (SV), so the rates follow whatever the artifact does.
    """
    module = _down_module(model, layer)
    pinv = torch.linalg.pinv(down_columns(module, module.weight.detach()).float())  # once
    device = pinv.device
    for intervention in interventions.values():
        intervention.prepare(device, torch.float32)
    totals = {m: torch.zeros(pinv.shape[0], device=device) for m in interventions}
    for prompt in prompts:
        h, n = _last_token_activations(model, tokenizer, prompt, layer)
        denominator = torch.where(n < 0, -1.0, 1.0) * n.abs().clamp_min(eps)
        for method, intervention in interventions.items():
            shift = intervention.edit(h[None, None])[0, 0] - h
            totals[method] += pinv @ shift / denominator
    return {m: (total / len(prompts)).cpu() for m, total in totals.items()}


def overlap_grid(report: OverlapReport) -> Grid:
    """The report with Unified Concept Editing Table 5's columns."""
    title = f"Neuron overlap (%), layer {report.layer}, J = {report.top_j}"
    return Grid(title, ["", *PAIRS], [_row(report)])


def _row(report: OverlapReport) -> list[str]:
    label = report.emotion or f"layer {report.layer}"
    return [label, *("-" if v is None else f"{v:.2f}" for v in report.overlaps.values())]


def _last_token_activations(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str, layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, n) at the last token of `prompt`: the residual after layer L (Eq. 11's h^(l)) and
    the FFN neurons of layer L (n^(l)), in float32."""
    seen: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        for name in ("resid_post", "mlp_act"):
            handle = attach_hook(model, Site(name, layer), _recorder(seen, name))
            stack.callback(handle.remove)
        device = next(model.parameters()).device
        model(**tokenizer(prompt, return_tensors="pt").to(device))
    return seen["resid_post"], seen["mlp_act"]


def _recorder(seen: dict[str, torch.Tensor], name: str):  # type: ignore[no-untyped-def]
    def record(h: torch.Tensor) -> None:
        seen[name] = h[0, -1].detach().float()

    return record


def _down_module(model: nn.Module, layer: int) -> nn.Module:
    return model.get_submodule(module_path(model, Site("mlp_act", layer)))


def _common_layer(artifacts: dict[str, Artifact]) -> int:
    """The layer every artifact sits at: Eq. 11 ties the residual of L to W_down of L only."""
    (first_method, first), *rest = artifacts.items()
    for method, artifact in rest:
        if artifact.site.layer != first.site.layer:
            raise ArtifactError(
                artifact.source,
                "layer",
                f"{method} sits at layer {artifact.site.layer}, {first_method} ({first.source})"
                f" at layer {first.site.layer}; the methods are compared at one layer",
            )
    return first.site.layer


def _build(method: str, artifact: Artifact, model: nn.Module, emotion: str | None) -> Intervention:
    kind, site = EXPECTED[method]
    if artifact.kind != kind:
        raise ArtifactError(
            artifact.source, "kind", f"{method} expects a {kind} artifact, got {artifact.kind}"
        )
    if artifact.site.name != site:
        raise ArtifactError(
            artifact.source, "site", f"{method} expects site {site}, got {artifact.site.name}"
        )
    if emotion is not None:
        check_emotion(artifact, emotion)
    check_model(artifact, model)
    return build_intervention(artifact, model)


def _top_j(located: torch.Tensor | None, top_j: int | None, model: nn.Module, layer: int) -> int:
    """J = |NE| (Unified Concept Editing 4.5), or the caller's J when NE is missing."""
    if located is not None and top_j is not None and top_j != located.numel():
        raise ValueError(f"top_j={top_j}, but J is the size of NE's set ({located.numel()})")
    j = top_j if located is None else located.numel()
    if j is None:
        raise ValueError("without an NE artifact, give top_j (J, the number of neurons compared)")
    width = site_width(model, Site("mlp_act", layer))
    if not 0 < j <= width:
        raise ValueError(f"J must lie in [1, {width}] (the FFN width), got {j}")
    return j
