"""FeatureEdit (Knowledge Microscope, "The Knowledge Microscope"): zero the W_down positions a
feature marks.

For each fact to erase, `ce_bench.locate.privacy` picks the SAE feature that carries it (the one
whose ablation lowers the fact's probability most, Knowledge Microscope's Delta-Prob). Its decoder
direction h = W_dec^T p (p the feature's one-hot probe; d_model wide, since the SAE reads the
residual stream after block L, Knowledge Microscope's best site) marks the positions |h_i| > tau_2,
and those positions of W_down of layer L are zeroed.

Which entries are "those positions": Knowledge Microscope (as summarised) says that positions of h
are zeroed in the second MLP matrix, contrasting this with neuron editing, which zeroes whole
columns (one column per FFN neuron). h is indexed by residual coordinates, and the axis of W_down
indexed by residual coordinates is its output axis, so position i of h is row i of W_down (HF's
`down_proj.weight`, shape (d_model, d_ff)): every weight through which block L's MLP writes residual
coordinate i. We zero those rows. The alternative readings need something Knowledge Microscope does
not give: zeroing single entries (i, j) needs a second, neuron-side selection, and mapping h into
neuron space (W_down^+ h) to zero columns would make FeatureEdit another neuron-zeroing method,
which is what it is compared against.

tau_2 applies to the unit-normalised direction (|h_i| / ||h||), so it does not depend on how an
SAE scales its decoder. A direction spread evenly over d_model coordinates has |h_i| = d^-1/2
(0.042 for SmolLM2's 576); the default tau_2 = 0.1 keeps the coordinates carrying at least 2.4
times that, a median of 13 per feature of the project's layer-20 SAE (10 at layer 27). Knowledge
Microscope sets tau_2 by hand and gives no value. Several facts erase the union of their rows: on
the injected SmolLM2 (results/privacy/table.md) the 18 features chosen for the 42 facts mark 116 of
576 rows at 0.1, and tau_2 = 0.15 / 0.1 / 0.05 gave Reliability 0.10 / 0.43 / 1.00 at Locality
0.74 / 0.58 / 0.21.

The artifact stores the directions, not the rows, so tau_2 is a parameter: the same artifact with
another tau_2 (edit `params.tau_2` in intervention.json) marks other rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ce_bench.artifacts import ArtifactError
from ce_bench.interventions.base import check_number, register_intervention
from ce_bench.interventions.weights import WeightEdit
from ce_bench.sites import ModelDims, module_path

DEFAULT_TAU_2 = 0.1


@dataclass(frozen=True)
class FeatureEditParams:
    tau_2: float = DEFAULT_TAU_2  # threshold on |h_i| / ||h||

    def __post_init__(self) -> None:
        check_number("tau_2", self.tau_2)
        if not 0 <= self.tau_2 < 1:
            raise ValueError(
                f"tau_2 must lie in [0, 1) (a unit vector's entries), got {self.tau_2}"
            )


def marked_rows(directions: torch.Tensor, tau_2: float) -> torch.Tensor:
    """(d_model,) bool: the residual coordinates i where some direction (a row of `directions`,
    (facts, d_model)) has |h_i| / ||h|| > tau_2."""
    unit = directions.float() / directions.float().norm(dim=-1, keepdim=True)
    return (unit.abs() > tau_2).any(0)


@register_intervention
class FeatureEdit(WeightEdit):
    """W_down of layer L with the rows `marked_rows(directions, tau_2)` zeroed (Knowledge
    Microscope)."""

    kind = "featureedit"
    Params = FeatureEditParams
    tensor_names = ("directions",)

    def check_dims(self, dims: ModelDims, source: str) -> None:
        super().check_dims(dims, source)
        directions, width = self.tensors["directions"], dims.hidden_size
        if directions.dim() != 2 or directions.shape[0] == 0 or directions.shape[1] != width:
            raise ArtifactError(
                source,
                "directions",
                f"expected (facts, {width}) decoder directions, got {tuple(directions.shape)}",
            )
        if not directions.is_floating_point() or bool((directions.norm(dim=-1) == 0).any()):
            raise ArtifactError(source, "directions", "expected float rows, none of them zero")

    def check(self, model: nn.Module, source: str) -> None:
        """W_down must have an output axis as wide as the directions (its layout decides which)."""
        width = self.tensors["directions"].shape[1]
        module = model.get_submodule(module_path(model, self.site))
        if module.weight.shape[_output_axis(module)] != width:
            raise ArtifactError(source, "site", f"W_down at {self.site} has no {width}-wide axis")

    def edited(self, original: torch.Tensor, module: nn.Module) -> torch.Tensor:
        rows = marked_rows(self.tensors["directions"], self.params.tau_2)
        index = rows.nonzero().flatten().to(original.device)
        return original.index_fill(_output_axis(module), index, 0.0)


def _output_axis(module: nn.Module) -> int:
    """The weight axis indexed by output coordinates: 0 for nn.Linear's (out, in), 1 for
    GPT-2's Conv1D, which stores (in, out)."""
    return 0 if isinstance(module, nn.Linear) else 1
