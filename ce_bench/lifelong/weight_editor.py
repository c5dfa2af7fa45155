"""Editors whose state is a change of W_down at one layer (FT, FT-EWC, ROME).

The state is `delta`, W_down(edited) - W_down, like a `weight_delta` artifact. The edited
weight is swapped in while the switch is on (`SwappedWeight`), so the unedited model is one
switch away, and the state saved after a stream is the weight difference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ce_bench.interventions.base import Switch
from ce_bench.interventions.weights import SwappedWeight
from ce_bench.lifelong.editor import Editor
from ce_bench.sites import Site, module_path


class WeightDeltaEditor(Editor):
    """An editor that rewrites W_down of its layer (see the module docstring)."""

    tensor_names = ("delta",)
    site_name = "mlp_act"  # W_down reads it

    @classmethod
    def initial_tensors(cls, model: nn.Module, site: Site, params: Any) -> dict[str, torch.Tensor]:
        weight = model.get_submodule(module_path(model, site)).weight
        return {"delta": torch.zeros(weight.shape, dtype=torch.float32)}

    def check(self, model: nn.Module, source: str) -> None:
        weight = model.get_submodule(module_path(model, self.site)).weight
        self.check_shapes(source, {"delta": tuple(weight.shape)})

    def attach(self, model: nn.Module, switch: Switch) -> list[RemovableHandle]:
        module = model.get_submodule(module_path(model, self.site))
        self.swapped = SwappedWeight(module.weight)
        self.editing = False  # while an edit runs, the weight holds what the editor put there
        self._take_state()

        def sync(*_: Any) -> None:
            if not self.editing:
                self.swapped.sync(switch.on_for(self))

        return [module.register_forward_pre_hook(sync), self.swapped]

    def _take_state(self) -> None:
        """Make the swapped weight's edited values W_down + delta."""
        delta = self.tensors["delta"].to(self.swapped.weight.device)
        self.swapped.set_edited(self.swapped.original.float() + delta)

    def reset(self) -> None:
        super().reset()
        self._take_state()

    def commit(self, edited: torch.Tensor) -> None:
        """Make `edited` the edited W_down (and the state its difference from the original)."""
        self.swapped.set_edited(edited.detach().clone())
        self.tensors["delta"] = (edited.detach().float() - self.swapped.original.float()).cpu()
        self.edits_applied += 1
