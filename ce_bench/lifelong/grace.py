"""GRACE (Hartvigsen et al. 2023; a MicroEdit baseline): a discrete key-value codebook at W_down.

The codebook wraps W_down of layer L. Its keys are W_down's input (the FFN activation) at the
last prompt token of each edit; each key has a deferral radius epsilon and a value, a vector
trained to make W_down's output at that token produce the edit's target. At inference, when the
query (W_down's input at the last prompt token) lies within the radius of its nearest key, that
key's value replaces W_down's output there ("replace_last"); otherwise nothing changes.

Codebook updates per edit (EasyEdit's GRACE, eps_expand=coverage), with d the distance from the
query to the nearest key j:
    d > eps_init + eps_j              a new key with radius eps_init
    d <= that, another target         a new key; both radii become d / 2 (split)
    d <= that, the same target        eps_j grows to d if needed (coverage); j's value is trained
Values start uniform in [0, 1) ("cold") and are trained with Adam (lr 1.0, 50 steps: EasyEdit's
LLaMA settings).

Where the query is taken: a scored (prompt, continuation) row's last prompt token; during
generation the last token of each forward pass (the prompt's last token, then each new token);
a text without a prompt (perplexity) its last token.

`query=last_edit` reproduces how EasyEdit scores GRACE by a forward pass (its perplexity, as in
MicroEdit Table 2): its adapter keeps the query position the last edit set (that record's last
prompt token) and reads every later input there, clipped to the input's length. After one edit
that is the edited record's own position; after a stream it is, for most records, a token
inside their prompt or target, far from their key. For comparing with numbers made that way,
not for ranking editors; the default `own` queries each input at its own last prompt token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ce_bench.interventions.base import (
    Switch,
    check_integer,
    check_number,
    register_intervention,
)
from ce_bench.lifelong.editor import (
    Editor,
    EditorParams,
    edit_batch,
    edit_training,
    target_loss,
)
from ce_bench.lifelong.records import EditRecord
from ce_bench.sites import Site, model_dims, module_path

GRACE_DEPTH = 27 / 32  # EasyEdit's GRACE wraps layers[27].mlp.down_proj of LLaMA-2-7B
SPLIT_MARGIN = 1e-5  # the older key's radius ends this far inside the split point
QUERIES = ("own", "last_edit")  # where an input's query is read (module docstring)


@dataclass(frozen=True)
class GraceParams(EditorParams):
    eps: float = 1.0  # initial deferral radius
    lr: float = 1.0  # Adam on the value
    steps: int = 50  # value training steps per edit
    query: str = "own"  # or last_edit: EasyEdit's forward-pass scoring (module docstring)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("eps", "lr"):
            check_number(name, getattr(self, name))
        check_integer("steps", self.steps, 1)
        if self.query not in QUERIES:
            raise ValueError(f"query must be one of {', '.join(QUERIES)}, got {self.query!r}")


@register_intervention
class Grace(Editor):
    """State: `keys` (n, d_mlp), `values` (n, d_model), `eps` (n,), `labels` (n,) target hashes."""

    kind = "grace"
    Params = GraceParams
    tensor_names = ("keys", "values", "eps", "labels")
    site_name = "mlp_act"  # the codebook reads W_down's input and rewrites its output
    depth = GRACE_DEPTH

    @classmethod
    def initial_tensors(cls, model: nn.Module, site: Site, params: Any) -> dict[str, torch.Tensor]:
        dims = model_dims(model)
        return {
            "keys": torch.zeros(0, dims.d_mlp),
            "values": torch.zeros(0, dims.hidden_size),
            "eps": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
        }

    def check(self, model: nn.Module, source: str) -> None:
        dims, n = model_dims(model), len(self.tensors["keys"])
        self.check_shapes(
            source,
            {
                "keys": (n, dims.d_mlp),
                "values": (n, dims.hidden_size),
                "eps": (n,),
                "labels": (n,),
            },
        )

    # ------------------------------------------------------------------ inference
    def attach(self, model: nn.Module, switch: Switch) -> list[RemovableHandle]:
        module = model.get_submodule(module_path(model, self.site))
        self.device = module.weight.device
        self.tensors = {k: v.to(self.device) for k, v in self.tensors.items()}
        self.training: dict[str, Any] | None = None

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self.training is not None:
                return self._training_output(args[0], output)
            if not switch.on_for(self) or len(self.tensors["keys"]) == 0:
                return None
            rows = torch.arange(output.shape[0], device=output.device)
            cols = self._query_positions(switch, output.shape[0], output.shape[1]).to(output.device)
            query = args[0][rows, cols].float()
            dist = torch.cdist(query, self.tensors["keys"].float())  # (batch, n)
            nearest, j = dist.min(-1)
            hit = nearest <= self.tensors["eps"][j]
            if not bool(hit.any()):
                return None
            out = output.clone()
            out[rows[hit], cols[hit]] = self.tensors["values"][j[hit]].to(out.dtype)
            return out

        return [module.register_forward_hook(hook)]

    def start_stream(self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord]) -> None:
        if self.params.query == "last_edit":  # where an edit of each record sets EasyEdit's query
            self.prompt_ends = [
                int(edit_batch(tokenizer, r, "cpu").last_prompt[0]) for r in records
            ]

    def _query_positions(self, switch: Switch, batch: int, seq_len: int) -> torch.Tensor:
        """Per row, the token whose W_down input is the query (see the module docstring)."""
        if self.params.query == "last_edit" and switch.prompt_length is None:  # not generating
            return self._last_edit_positions(switch, batch, seq_len)
        if switch.last_prompt is not None and switch.past_length == 0:
            return switch.last_prompt.long()
        mask = switch.token_mask(batch, seq_len, torch.device("cpu"))
        if mask is not None and switch.prompt_length is None:  # right padding: last real token
            return mask.long().sum(-1).clamp(min=1) - 1
        return torch.full((batch,), seq_len - 1)

    def _last_edit_positions(self, switch: Switch, batch: int, seq_len: int) -> torch.Tensor:
        """`query=last_edit`: per row, the last edit's prompt position, counted from the row's
        first real token and clipped to its last one."""
        if not getattr(self, "prompt_ends", None):
            raise ValueError("grace:query=last_edit needs the edit stream (edits=...)")
        position = self.prompt_ends[(self.edits_applied or len(self.prompt_ends)) - 1]
        mask = switch.token_mask(batch, seq_len, torch.device("cpu"))
        if mask is None:
            return torch.full((batch,), min(position, seq_len - 1))
        first, real = mask.long().argmax(-1), mask.long().sum(-1)
        return first + (real - 1).clamp(max=position)

    # ------------------------------------------------------------------ editing
    def _training_output(self, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        state = self.training
        if "query" not in state:
            state["query"] = inputs[0, state["position"]].detach().float()
            return output
        out = output.clone()
        out[0, state["position"]] = state["value"].to(out.dtype)
        return out

    def apply_edit(self, model: nn.Module, tokenizer: Any, record: EditRecord) -> dict[str, float]:
        batch = edit_batch(tokenizer, record, self.device)
        self.training = {"position": int(batch.last_prompt[0])}
        try:
            with edit_training(model, self.site.layer, batch):  # its first pass records the query
                j = self._update_codebook(self.training["query"], _label(batch.labels))
                value = self.tensors["values"][j].clone().requires_grad_(True)
                self.training["value"] = value
                optimiser = torch.optim.Adam([value], lr=self.params.lr)
                for _ in range(self.params.steps):
                    loss, _ = target_loss(model, batch)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                loss, _ = target_loss(model, batch)
        finally:
            self.training = None
        values = self.tensors["values"].clone()
        values[j] = value.detach()
        self.tensors["values"] = values
        self.edits_applied += 1
        return {"loss": float(loss.detach()), "keys": float(len(self.tensors["keys"]))}

    def _update_codebook(self, query: torch.Tensor, label: int) -> int:
        """Add, split or expand keys for `query` (module docstring); returns the key to train."""
        t, eps_init = self.tensors, float(self.params.eps)
        if len(t["keys"]):
            dist = torch.cdist(query[None], t["keys"].float())[0]
            d, j = float(dist.min()), int(dist.argmin())
            if d <= eps_init + float(t["eps"][j]):
                if int(t["labels"][j]) == label:
                    t["eps"][j] = max(float(t["eps"][j]), d)  # coverage
                    return j
                t["eps"][j] = d / 2 - SPLIT_MARGIN  # split
                eps_init = d / 2
        value = torch.rand(t["values"].shape[1], generator=self._rng(), device="cpu")
        self.tensors = {
            "keys": torch.cat([t["keys"], query[None].to(t["keys"])]),
            "values": torch.cat([t["values"], value[None].to(t["values"])]),
            "eps": torch.cat([t["eps"], torch.tensor([eps_init]).to(t["eps"])]),
            "labels": torch.cat([t["labels"], torch.tensor([label]).to(t["labels"])]),
        }
        return len(self.tensors["keys"]) - 1

    def _rng(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.params.seed + len(self.tensors["keys"]))


def _label(labels: torch.Tensor) -> int:
    """A stable 63-bit hash of an edit's target tokens (GRACE compares keys' labels)."""
    tokens = labels[labels != -100].tolist()
    return int.from_bytes(hashlib.sha256(str(tokens).encode()).digest()[:8], "big") >> 1
