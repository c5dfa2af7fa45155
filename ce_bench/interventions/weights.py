"""Weight edits: an edited copy of W_down, present while the switch is on and gone when off."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ce_bench.artifacts import ArtifactError
from ce_bench.interventions.base import (
    Intervention,
    Switch,
    check_number,
    register_intervention,
)
from ce_bench.sites import ModelDims, module_path


@dataclass(frozen=True)
class WeightDeltaParams:
    strength: float = 1.0  # W <- W + strength * delta; 1 gives the fine-tuned weights exactly

    def __post_init__(self) -> None:
        check_number("strength", self.strength)


class WeightEdit(Intervention):
    """An edited copy of W_down of layer L, present while the switch is on and gone when off.

    The site is `mlp_act` because W_down is the projection that reads it. The edited and the
    original weights are both kept, and a pre-hook on W_down's module copies in whichever one
    the switch asks for before the forward pass uses it: switching off restores the original
    tensor exactly (no add-then-subtract rounding), and detaching restores it for good.
    Weights act at every position, so weight edits take no `positions` parameter.
    """

    def check_dims(self, dims: ModelDims, source: str) -> None:
        if self.site.name != "mlp_act":
            raise ArtifactError(
                source, "site", f"{self.kind} edits the W_down reading mlp_act, got {self.site}"
            )

    @abstractmethod
    def edited(self, original: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """The edited weight, from the original `module.weight`."""

    def attach(self, model: nn.Module, switch: Switch) -> list[RemovableHandle]:
        module = model.get_submodule(module_path(model, self.site))
        self.swapped = SwappedWeight(module.weight)
        self.swapped.set_edited(self.edited(self.swapped.original, module))
        hook = module.register_forward_pre_hook(lambda *_: self.swapped.sync(switch.on_for(self)))
        return [hook, self.swapped]


@register_intervention
class WeightDelta(WeightEdit):
    """W_down of layer L <- W_down + s * delta (Unified Concept Editing's SFT of W_down, section
    2)."""

    kind = "weight_delta"
    Params = WeightDeltaParams
    tensor_names = ("delta",)

    def check(self, model: nn.Module, source: str) -> None:
        """The delta's shape against W_down's own (GPT-2's Conv1D stores it transposed)."""
        weight = model.get_submodule(module_path(model, self.site)).weight
        delta = self.tensors["delta"]
        if delta.shape != weight.shape:
            raise ArtifactError(
                source,
                "delta",
                f"expected shape {tuple(weight.shape)} (W_down of layer {self.site.layer}),"
                f" got {tuple(delta.shape)}",
            )

    def edited(self, original: torch.Tensor, module: nn.Module) -> torch.Tensor:
        delta = self.tensors["delta"].to(device=original.device, dtype=torch.float32)
        return original.float() + self.params.strength * delta


class SwappedWeight:
    """A weight that holds its edited or its original values, whichever `sync` asks for.

    Both are kept whole, so switching off restores the original tensor exactly (no
    add-then-subtract rounding); `remove()` puts the original back for good.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight, self.original = weight, weight.detach().clone()
        self.edited = self.original
        self.holds: bool | None = False  # True: edited values, False: original, None: unknown

    def set_edited(self, edited: torch.Tensor) -> None:
        self.edited = edited.to(self.weight.dtype)
        self.holds = None

    def sync(self, edited: bool) -> None:
        if self.holds != edited:
            with torch.no_grad():
                self.weight.copy_(self.edited if edited else self.original)
            self.holds = edited

    def remove(self) -> None:
        self.sync(False)
