"""FT and FT-EWC (MicroEdit Appendix B, following GRACE's baselines): fine-tune W_down of layer L
on each edit in turn.

Each edit trains W_down on -log P(target | prompt) with Adam until the target is the greedy
continuation at every position or `steps` run out (the GRACE repository's FT: lr 1e-2, 100
steps). With `ewc_lambda` > 0 the loss adds the elastic weight consolidation penalty
lambda * sum F (W - W_prev)^2, where W_prev is W_down after the previous edit and F the
diagonal Fisher information, the mean squared gradient of the last `fisher_edits` edits' losses
(GRACE's FT-EWC: lambda 0.1 over the last 10 edits).

The state is a change of W_down (`ce_bench.lifelong.weight_editor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ce_bench.interventions.base import (
    check_integer,
    check_number,
    register_intervention,
)
from ce_bench.lifelong.editor import (
    EditorParams,
    edit_batch,
    edit_training,
    target_loss,
)
from ce_bench.lifelong.records import EditRecord
from ce_bench.lifelong.weight_editor import WeightDeltaEditor
from ce_bench.scoring import GoldenBatch, frozen_parameters

FT_DEPTH = 21 / 32  # EasyEdit's FT edits layer 21 of LLaMA's 32


@dataclass(frozen=True)
class FTParams(EditorParams):
    lr: float = 1e-2  # Adam (GRACE repository, FT)
    steps: int = 100  # at most, per edit; stops once every target token is the argmax
    ewc_lambda: float = 0.0  # > 0: FT-EWC (GRACE repository: 0.1)
    fisher_edits: int = 10  # edits whose losses estimate the Fisher information

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("lr", self.lr)
        check_number("ewc_lambda", self.ewc_lambda)
        for name in ("steps", "fisher_edits"):
            check_integer(name, getattr(self, name), 1)


@register_intervention
class FineTune(WeightDeltaEditor):
    """State: `delta`, W_down(edited) - W_down, like a `weight_delta` artifact."""

    kind = "ft"
    Params = FTParams
    depth = FT_DEPTH

    def reset(self) -> None:
        """No edit, and no EWC memory of earlier edits."""
        super().reset()
        self.history: list[GoldenBatch] = []
        self.fisher: torch.Tensor | None = None
        self.anchor: torch.Tensor | None = None

    def progress(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """FT continues from its weights alone; FT-EWC would need its earlier edits' batches
        too, and at a few seconds per edit it simply edits from the start again."""
        return None if self.params.ewc_lambda else super().progress()

    def apply_edit(self, model: nn.Module, tokenizer: Any, record: EditRecord) -> dict[str, float]:
        weight = self.swapped[0].weight
        batch = edit_batch(tokenizer, record, weight.device)
        optimiser = torch.optim.Adam([weight], lr=self.params.lr)
        steps, loss = 0, torch.tensor(float("nan"))
        with self.holding(True):
            with edit_training(model, self.site.layer, batch, [weight]):
                for steps in range(self.params.steps + 1):
                    loss, greedy = target_loss(model, batch)
                    if greedy or steps == self.params.steps:
                        break
                    penalty = self._ewc_penalty(weight)
                    optimiser.zero_grad()
                    (loss + penalty).backward()
                    optimiser.step()
            self.history = [*self.history, batch][-self.params.fisher_edits :]
            if self.params.ewc_lambda > 0:
                with frozen_parameters(model, [weight]), torch.enable_grad():
                    self._update_fisher(model, weight)
        self.set_layer(0, weight)
        self.edits_applied += 1
        return {"loss": float(loss.detach()), "steps": steps}

    def _ewc_penalty(self, weight: torch.Tensor) -> torch.Tensor | float:
        if self.fisher is None or self.anchor is None:
            return 0.0
        return self.params.ewc_lambda * (self.fisher * (weight.float() - self.anchor).pow(2)).sum()

    def _update_fisher(self, model: nn.Module, weight: torch.Tensor) -> None:
        """F = mean over the remembered edits of the squared gradient of their loss."""
        fisher = torch.zeros_like(weight, dtype=torch.float32)
        for batch in self.history:
            weight.grad = None
            target_loss(model, batch)[0].backward()
            fisher += weight.grad.float().pow(2)
        weight.grad = None
        self.fisher = fisher / len(self.history)
        self.anchor = weight.detach().float().clone()
