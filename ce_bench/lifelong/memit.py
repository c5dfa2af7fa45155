"""MEMIT (Meng et al., 2022b) and AlphaEdit (Fang et al., 2025): W_down updates spread over a run of
layers.

Per edit, as ROME (`ce_bench.lifelong.rome`), but the target is z, the residual stream after the
last layer of the run at the subject's last token (ROME's step 2 with the delta added there;
5 context templates of 10 tokens). Then for each layer l of the run, in order:

    K  = W_down's input at l, at the subject's last token, averaged over the templates
    R  = (z - the current residual after the last layer) / (layers left, this one included)
    MEMIT:     Delta = R K^T (lambda C + K K^T)^-1              (lambda = mom2_update_weight)
    AlphaEdit: Delta = R K^T P (P (K K^T + K_p K_p^T) + L2 I)^-1

with C = E[k k^T] at l (`ce_bench.lifelong.covariance`), P the projection on the null space
of C (its eigenvectors with eigenvalue < nullspace_threshold: the update leaves what W_down
does to the preserved keys alone) and K_p the keys of the earlier edits of the stream.
Defaults: EasyEdit's for LLaMA (hparams/MEMIT/llama-7b.yaml, hparams/AlphaEdit/llama3-8b.yaml:
layers 4-8 of 32, z layer 8, 25 steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ce_bench.interventions.base import check_integer, check_number, register_intervention
from ce_bench.lifelong.records import EditRecord
from ce_bench.lifelong.rome import (
    KeyValueEditor,
    TargetParams,
    at_subject,
    optimise_target,
)
from ce_bench.lifelong.weight_editor import w_down
from ce_bench.sites import Site, attach_hook, out_in

MEMIT_DEPTH = 4 / 32  # EasyEdit: layers 4-8 of LLaMA's 32
MEMIT_TEMPLATES = ((10, 5),)  # MEMIT's and AlphaEdit's context templates: 5 of 10 tokens


@dataclass(frozen=True)
class LayerRunParams(TargetParams):
    layers: int = 5  # W_down of `layer` .. `layer + layers - 1`

    def __post_init__(self) -> None:
        super().__post_init__()
        check_integer("layers", self.layers, 1)


@dataclass(frozen=True)
class MEMITParams(LayerRunParams):
    mom2_update_weight: float = 15_000.0  # lambda: how much the stored keys weigh

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("mom2_update_weight", self.mom2_update_weight)


@dataclass(frozen=True)
class AlphaEditParams(LayerRunParams):
    v_lr: float = 0.1  # AlphaEdit's LLaMA-3-8B values
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    nullspace_threshold: float = 2e-2  # eigenvalues of C below this span the null space
    l2: float = 10.0  # L2 of AlphaEdit's solve

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("nullspace_threshold", "l2"):
            check_number(name, getattr(self, name))


@register_intervention
class MEMIT(KeyValueEditor):
    """State: `delta`, (layers, *W_down's shape), the stream's updates of each layer."""

    kind = "memit"
    Params = MEMITParams
    depth = MEMIT_DEPTH

    def template_lengths(self) -> tuple[tuple[int, int], ...]:
        return MEMIT_TEMPLATES

    def apply_edit(self, model: nn.Module, tokenizer: Any, record: EditRecord) -> dict[str, float]:
        last = self.layers[-1]
        texts = [t.format(record.prompt) for t in self.context_templates]
        norms = []
        with self.holding(True):  # each edit starts from the model the earlier ones edited
            z, stats = optimise_target(
                model,
                tokenizer,
                record,
                self.context_templates,
                self.params,
                lambda edit: attach_hook(model, Site("resid_post", last), edit),
            )
            for i, layer in enumerate(self.layers):
                keys = self.keys(model, tokenizer, texts, record.subject, layer)
                now = self.residual(model, tokenizer, record, last)
                residual = (z - now) / (len(self.layers) - i)
                module = w_down(model, layer)
                weight = out_in(module, self.swapped[i].weight.detach().float().clone())
                update = self.layer_update(i, keys[:, None], residual[:, None])
                self.set_layer(i, out_in(module, weight + update))
                norms.append(float(update.norm()))
            error = float((z - self.residual(model, tokenizer, record, last)).norm() / z.norm())
            self.remember(model, tokenizer, texts, record.subject)
        self.edits_applied += 1
        return {**stats, "update_norm": sum(norms), "z_error": error}

    def layer_update(self, index: int, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """MEMIT's update of the `index`-th layer: keys (in, n), residual (out, n) -> (out, in)."""
        moment = self.moments[index].to(keys)
        return memit_update(keys, residual, moment, self.params.mom2_update_weight)

    def remember(self, model: nn.Module, tokenizer: Any, texts: list[str], subject: str) -> None:
        """After an edit (AlphaEdit keeps the edited keys)."""

    @staticmethod
    def keys(model: nn.Module, tokenizer: Any, texts: list[str], subject: str, layer: int) -> Any:
        """W_down's input at `layer` at the subject's last token, averaged over the templates."""
        return at_subject(model, tokenizer, texts, subject, Site("mlp_act", layer)).mean(0)

    @staticmethod
    def residual(model: nn.Module, tokenizer: Any, record: EditRecord, layer: int) -> Any:
        """The residual stream after `layer` at the subject's last token of the bare prompt."""
        site = Site("resid_post", layer)
        return at_subject(model, tokenizer, [record.prompt], record.subject, site)[0]


@register_intervention
class AlphaEdit(MEMIT):
    """MEMIT with the update projected on the null space of the preserved keys."""

    kind = "alphaedit"
    Params = AlphaEditParams

    def prepare(self) -> None:
        self.projections = [
            null_space_projection(m, self.params.nullspace_threshold) for m in self.moments
        ]
        self.edited_keys = [torch.zeros_like(m) for m in self.moments]  # K_p K_p^T per layer

    def layer_update(self, index: int, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        projection = self.projections[index].to(keys)
        earlier = self.edited_keys[index].to(keys)
        return alphaedit_update(keys, residual, projection, earlier, self.params.l2)

    def remember(self, model: nn.Module, tokenizer: Any, texts: list[str], subject: str) -> None:
        for i, layer in enumerate(self.layers):
            keys = self.keys(model, tokenizer, texts, subject, layer)
            self.edited_keys[i] = self.edited_keys[i] + torch.outer(keys, keys).cpu()

    def reset(self) -> None:
        super().reset()
        if hasattr(self, "edited_keys"):
            self.edited_keys = [torch.zeros_like(k) for k in self.edited_keys]

    def progress(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, info = super().progress()
        return {**tensors, "edited_keys": torch.stack(self.edited_keys)}, info

    def resume(
        self, tensors: dict[str, torch.Tensor], info: dict[str, Any], edits_applied: int
    ) -> None:
        super().resume(tensors, info, edits_applied)
        self.edited_keys = list(tensors["edited_keys"])


def memit_update(
    keys: torch.Tensor, residual: torch.Tensor, moment: torch.Tensor, weight: float
) -> torch.Tensor:
    """R K^T (weight C + K K^T)^-1: the change D minimising ||D K - R||^2 + weight tr(D C D^T)."""
    solved = torch.linalg.solve(weight * moment + keys @ keys.T, keys)  # (in, n)
    return residual @ solved.T


def alphaedit_update(
    keys: torch.Tensor,
    residual: torch.Tensor,
    projection: torch.Tensor,
    earlier: torch.Tensor,
    l2: float,
) -> torch.Tensor:
    """(P (K K^T + K_p K_p^T) + l2 I)^-1 P K R^T, transposed to (out, in); its rows lie in the
    null space P projects on."""
    eye = torch.eye(keys.shape[0], dtype=keys.dtype, device=keys.device)
    system = projection @ (keys @ keys.T + earlier) + l2 * eye
    return torch.linalg.solve(system, projection @ keys @ residual.T).T


def null_space_projection(moment: torch.Tensor, threshold: float) -> torch.Tensor:
    """U U^T over C's eigenvectors whose eigenvalue is below `threshold`."""
    values, vectors = torch.linalg.eigh(moment.double())
    small = vectors[:, values < threshold]
    return (small @ small.T).float()
