"""Editors whose state is a change of W_down at one layer or a run of layers (FT, FT-EWC, ROME,
MEMIT, AlphaEdit).

The state is `delta`, W_down(edited) - W_down: shaped like W_down for one layer (like a
`weight_delta` artifact), stacked (layers, *W_down's shape) for several. The edited weights are
swapped in while the switch is on (`SwappedWeight`), so the unedited model is one switch away,
and the state saved after a stream is the weight difference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ce_bench.interventions.base import Switch
from ce_bench.interventions.weights import SwappedWeight
from ce_bench.lifelong.editor import Editor
from ce_bench.sites import Site, module_path


class WeightDeltaEditor(Editor):
    """An editor that rewrites W_down of its layers (see the module docstring)."""

    tensor_names = ("delta",)
    site_name = "mlp_act"  # W_down reads it

    @staticmethod
    def span(params: Any) -> int:
        """How many layers, from the editor's own, it rewrites."""
        return int(getattr(params, "layers", 1))

    @classmethod
    def delta_shape(cls, model: nn.Module, site: Site, params: Any) -> tuple[int, ...]:
        """W_down's shape for one layer, (layers, *W_down's shape) for several."""
        span = cls.span(params)
        shape = tuple(w_down(model, site.layer + span - 1).weight.shape)  # the layers exist
        return shape if span == 1 else (span, *shape)

    @classmethod
    def initial_tensors(cls, model: nn.Module, site: Site, params: Any) -> dict[str, torch.Tensor]:
        return {"delta": torch.zeros(cls.delta_shape(model, site, params), dtype=torch.float32)}

    @property
    def layers(self) -> list[int]:
        return list(range(self.site.layer, self.site.layer + self.span(self.params)))

    def check(self, model: nn.Module, source: str) -> None:
        self.check_shapes(source, {"delta": self.delta_shape(model, self.site, self.params)})

    def attach(self, model: nn.Module, switch: Switch) -> list[RemovableHandle]:
        modules = [w_down(model, layer) for layer in self.layers]
        self.swapped = [SwappedWeight(module.weight) for module in modules]
        self.editing = False  # while an edit runs, the weights hold what the editor put there
        self._take_state()

        def sync(*_: Any) -> None:
            if not self.editing:
                for swapped in self.swapped:
                    swapped.sync(switch.on_for(self))

        return [*(m.register_forward_pre_hook(sync) for m in modules), *self.swapped]

    def deltas(self) -> list[torch.Tensor]:
        """The state as one W_down difference per layer."""
        delta = self.tensors["delta"]
        return [delta] if len(self.layers) == 1 else list(delta)

    def _take_state(self) -> None:
        """Make the swapped weights' edited values W_down + delta."""
        for swapped, delta in zip(self.swapped, self.deltas(), strict=True):
            swapped.set_edited(swapped.original.float() + delta.to(swapped.weight.device))

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_state(tensors)
        if hasattr(self, "swapped"):  # attached
            self._take_state()

    @contextmanager
    def holding(self, edited: bool) -> Iterator[None]:
        """Inside the block the weights are the edited (or the original) ones, whatever the
        switch says; an edit runs inside `holding(True)`."""
        self.editing = True
        for swapped in self.swapped:
            swapped.sync(edited)
        try:
            yield
        finally:
            self.editing = False

    def set_layer(self, index: int, edited: torch.Tensor) -> None:
        """Make `edited` the edited W_down of the `index`-th layer (and the state its difference
        from the original); the model holds it at once."""
        swapped = self.swapped[index]
        swapped.set_edited(edited.detach().clone())
        swapped.sync(True)
        difference = (edited.detach().float() - swapped.original.float()).cpu()
        if len(self.layers) == 1:
            self.tensors["delta"] = difference
        else:
            self.tensors["delta"] = self.tensors["delta"].clone()
            self.tensors["delta"][index] = difference


def w_down(model: nn.Module, layer: int) -> nn.Module:
    """The down projection of `layer`'s MLP (what these editors rewrite)."""
    return model.get_submodule(module_path(model, Site("mlp_act", layer)))
