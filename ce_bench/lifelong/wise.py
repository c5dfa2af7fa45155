"""WISE (Wang et al. 2024; a MicroEdit baseline): edits go to side memories, copies of W_down of
layer L, and a router sends each input to the main memory (W_down) or to one side memory.

Activation score. For W_down's input x (the FFN activation) and a side memory W', the score of
an input is the mean over its tokens of ||act(W' x) - act(W x)||_2 (at inference, the top-1
token instead when a forward pass holds more than 100 tokens; training always takes the mean),
`act` being the model's MLP activation function; this is EasyEdit's implementation, which
MicroEdit ran.

Editing one record (EasyEdit's WISE; defaults of its LLaMA-2-7B / Mistral-7B configurations):
- Rows: the edit "prompt target" behind each of 11 context templates ("{}" and 10 short texts
  the model itself continues from "I", "You", "Because", "Yes", "Q: "), plus one irrelevant
  text (the project's generic openers, one per edit; EasyEdit takes a ZsRE training question).
- Loss: -log P(target | template + prompt) over the template rows, plus the activation margins
  hinge(s_irr - alpha) + hinge(beta - s_edit) + hinge(s_irr - s_edit + gamma), each the mean of
  its positive terms (alpha 5, beta 20, gamma 10).
- SGD (lr 1.0, weight decay 1e-5, at most 70 steps, stopping when the loss is below 0.02 and
  flat) on the side memory, gradients masked by the shard's random mask (each entry trainable
  with probability mask_ratio 0.2), every entry clamped to W_down +- norm_constraint (1.0).
- The memory's threshold is act_ratio (0.88) x the smallest in-scope score of its edits.

Knowledge sharding: every `save_freq` (500) edits the side memory is frozen into the list of
memories and a fresh copy of W_down (with a new random mask) takes the next edits; every
`merge_freq` (1000) edits the memories frozen since the last merge are merged with TIES
(keep the 53% largest entries of each delta, elect a sign per entry by the summed deltas, average
the deltas that agree) into one memory whose threshold comes from the smallest score of all of
them. This is WISE-Retrieve (EasyEdit's default): at inference each row of a forward pass goes to
the memory with the highest score among those at or above their threshold, else to W_down
(EasyEdit routes its batches of one as a whole; here each row of a batch is routed on its own
real tokens, its length included, so batching does not change an answer). During generation
each forward pass is routed by its own tokens: the prompt, then each new token, as in EasyEdit.
After a stream, the results say which edit and locality inputs the router sends to a side
memory (`stream_report`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.activations import ACT2FN

from ce_bench.artifacts import ArtifactError
from ce_bench.interventions.base import (
    Switch,
    check_integer,
    check_number,
    register_intervention,
)
from ce_bench.lifelong.editor import (
    Editor,
    EditorParams,
    edit_training,
)
from ce_bench.lifelong.records import EditRecord
from ce_bench.sae_training.text import CHAT_REQUESTS, OPENERS
from ce_bench.scoring import GoldenBatch, answer_logits, golden_batch
from ce_bench.sites import Site, model_dims, module_path

WISE_DEPTH = 27 / 32  # EasyEdit's WISE edits layers[27].mlp.down_proj of LLaMA-2-7B / Mistral-7B
TEMPLATE_STARTS = ("I", "You", "Because", "Yes", "Q: ")  # EasyEdit's context template prompts
TEMPLATE_LENGTHS = (5, 10)  # new tokens: 5 templates of each length
LONG_INPUT = 100  # tokens; longer forward passes at inference are scored by their top-1 token
STOP_LOSS, STOP_CHANGE = 0.02, 1e-4  # EasyEdit's early stop: loss low and no longer changing
WEIGHT_DECAY = 1e-5  # EasyEdit's SGD
# min_act of a memory that has no edit yet: no activation reaches it. Finite (not inf), because
# a saved state must load, and artifacts refuse non-finite tensors.
NO_EDIT = float(torch.finfo(torch.float32).max)
IRRELEVANT = OPENERS + CHAT_REQUESTS


@dataclass(frozen=True)
class WiseParams(EditorParams):
    lr: float = 1.0  # SGD
    steps: int = 70  # at most, per edit
    mask_ratio: float = 0.2  # share of the side memory's entries one shard trains
    act_ratio: float = 0.88  # routing threshold = act_ratio x smallest in-scope score
    alpha: float = 5.0  # irrelevant inputs' score stays below alpha
    beta: float = 20.0  # edit inputs' score rises above beta
    gamma: float = 10.0  # edit inputs' score exceeds irrelevant inputs' by gamma
    norm_constraint: float = 1.0  # |W' - W_down| <= this, entrywise
    save_freq: int = 500  # edits per shard
    merge_freq: int = 1000  # edits per TIES merge of the shards (a multiple of save_freq)
    density: float = 0.53  # TIES: share of each shard's delta kept

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lr", "mask_ratio", "act_ratio", "alpha", "beta", "gamma"):
            check_number(name, getattr(self, name))
        check_number("norm_constraint", self.norm_constraint)
        check_number("density", self.density)
        for name in ("steps", "save_freq", "merge_freq"):
            check_integer(name, getattr(self, name), 1)
        if not (0 < self.mask_ratio <= 1 and 0 < self.density <= 1):
            raise ValueError("mask_ratio and density must be in (0, 1]")
        if self.merge_freq % self.save_freq:
            raise ValueError(
                f"merge_freq ({self.merge_freq}) must be a multiple of save_freq ({self.save_freq})"
            )


@register_intervention
class Wise(Editor):
    """State: `deltas` (m, d_model, d_mlp), each side memory minus W_down (the last one takes
    the next edits), and `min_act` (m,), each memory's smallest in-scope score (NO_EDIT: none
    yet)."""

    kind = "wise"
    Params = WiseParams
    tensor_names = ("deltas", "min_act")
    site_name = "mlp_act"  # the memories read W_down's input and replace its output
    depth = WISE_DEPTH

    @classmethod
    def initial_tensors(cls, model: nn.Module, site: Site, params: Any) -> dict[str, torch.Tensor]:
        dims = model_dims(model)
        return {
            "deltas": torch.zeros(1, dims.hidden_size, dims.d_mlp),
            "min_act": torch.full((1,), NO_EDIT),
        }

    def check(self, model: nn.Module, source: str) -> None:
        dims, m = model_dims(model), len(self.tensors["deltas"])
        if m == 0:
            raise ArtifactError(source, "deltas", "expected at least one side memory, got 0")
        self.check_shapes(source, {"deltas": (m, dims.hidden_size, dims.d_mlp), "min_act": (m,)})
        act = getattr(model.config, "hidden_act", None) or getattr(
            model.config, "activation_function", None
        )
        if act not in ACT2FN:
            raise ArtifactError(source, "model", f"unknown MLP activation {act!r}")
        self.act = ACT2FN[act]

    # ------------------------------------------------------------------ scores and routing
    def scores(
        self, out: torch.Tensor, side: torch.Tensor, mask: torch.Tensor | None, *, inference: bool
    ) -> torch.Tensor:
        """Per row, the activation score of a side memory's output against W_down's output.
        Only at inference does a long pass score by its top token (EasyEdit's `euc(...,
        infer=True)`): an edit's threshold comes from mean scores however long its rows are."""
        gap = (self.act(side.float()) - self.act(out.float())).norm(dim=-1)  # (batch, seq)
        if mask is None:
            mask = torch.ones_like(gap, dtype=torch.bool)
        mean = (gap * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        if not inference:
            return mean
        long = mask.sum(-1) > LONG_INPUT  # each row by its own length, not the batch's padding
        return torch.where(long, gap.masked_fill(~mask, 0).max(-1).values, mean)

    def attach(self, model: nn.Module, switch: Switch) -> list[RemovableHandle]:
        module = model.get_submodule(module_path(model, self.site))
        self.device = module.weight.device
        self.weight = module.weight
        self.tensors = {k: v.to(self.device) for k, v in self.tensors.items()}
        self.training: dict[str, Any] | None = None  # set while an edit trains
        self.templates: list[str] | None = None  # made at the first edit
        self.watching: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # stream_report

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            x = args[0]
            if self.watching is not None:  # look, change nothing
                self.watching.append((x.detach(), output.detach()))
                return None
            if self.training is not None:
                return self._training_output(x, output)
            if not switch.on_for(self) or not bool(torch.isfinite(self.thresholds()).any()):
                return None
            mask = switch.token_mask(x.shape[0], x.shape[1], x.device)
            routed, taken, _ = self.route(x, output, mask)
            return routed if bool(taken.any()) else None

        return [module.register_forward_hook(hook)]

    def thresholds(self) -> torch.Tensor:
        """Each memory's routing threshold, act_ratio x its smallest in-scope score; inf for a
        memory that holds no edit yet (its min_act is NO_EDIT), which no input reaches."""
        min_act = self.tensors["min_act"]
        return torch.where(min_act < NO_EDIT, self.params.act_ratio * min_act, torch.inf)

    def route(
        self, x: torch.Tensor, output: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """W_down's output with each row through the side memory it goes to (WISE-Retrieve),
        whether it went to one, and its highest score over the memories that hold an edit."""
        best = torch.full((x.shape[0],), -1.0, device=x.device)  # the taken memory's score
        top = torch.full((x.shape[0],), -1.0, device=x.device)
        routed = output.clone()
        for delta, threshold in zip(self.tensors["deltas"], self.thresholds(), strict=True):
            if not torch.isfinite(threshold):
                continue
            side = output + x @ delta.to(x.dtype).T
            score = self.scores(output, side, mask, inference=True)
            take = (score >= threshold) & (score > best)
            routed[take] = side[take]
            best = torch.where(take, score, best)
            top = torch.maximum(top, score)
        return routed, best >= 0, top

    def stream_report(
        self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord]
    ) -> dict[str, Any]:
        """Where the router sends each record's edit input and its locality input once the
        whole stream is in: a locality input scoring at or above a memory's threshold is
        answered by that memory, which is how WISE loses Loc."""
        held = [float(t) for t in self.thresholds() if torch.isfinite(t)]
        report: dict[str, Any] = {"thresholds": [round(t, 3) for t in held]}
        for name, pairs in (
            ("edit", [(r.prompt, r.target) for r in records]),
            ("loc", [(r.loc_prompt, r.loc_answer) for r in records]),
        ):
            routes = [self._route_one(model, tokenizer, pair) for pair in pairs]
            report[f"{name}_routed"] = sum(taken for taken, _ in routes) / max(1, len(routes))
            report[f"{name}_scores"] = [round(score, 3) for _, score in routes]
        return report

    def _route_one(
        self, model: nn.Module, tokenizer: Any, pair: tuple[str, str]
    ) -> tuple[bool, float]:
        """`route`'s verdict and top score for one (prompt, answer) row, alone in its pass."""
        batch = golden_batch(tokenizer, [pair], self.device)
        self.watching = []
        try:
            with torch.no_grad():
                model(input_ids=batch.input_ids)
            x, output = self.watching.pop()
        finally:
            self.watching = None
        _, taken, top = self.route(x, output, None)
        return bool(taken[0]), float(top[0])

    def progress(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, info = super().progress()  # templates made by the unedited model, kept
        return tensors, {**info, "templates": self.templates}

    def resume(
        self, tensors: dict[str, torch.Tensor], info: dict[str, Any], edits_applied: int
    ) -> None:
        super().resume(tensors, info, edits_applied)
        self.templates = info["templates"]

    # ------------------------------------------------------------------ editing
    def _templates(self, model: nn.Module, tokenizer: Any) -> list[str]:
        """The context templates: "{}" and the unedited model's greedy continuations of a few
        openers (EasyEdit's WISE), made once, at the first edit."""
        if self.templates is None:
            self.templates = ["{}"]
            pad = (
                tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
            )
            with torch.no_grad():
                for length in TEMPLATE_LENGTHS:
                    for start in TEMPLATE_STARTS:
                        ids = tokenizer(start, return_tensors="pt")["input_ids"].to(self.device)
                        out = model.generate(
                            input_ids=ids, max_new_tokens=length, do_sample=False, pad_token_id=pad
                        )
                        text = tokenizer.decode(out[0], skip_special_tokens=True)
                        self.templates.append(text.replace("{", "{{").replace("}", "}}") + " {}")
        return self.templates

    def _training_output(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """While an edit trains: every row through the side memory being trained."""
        state = self.training
        side = x @ state["weight"].to(x.dtype).T
        state["original"], state["side"] = output, side
        return side

    def apply_edit(self, model: nn.Module, tokenizer: Any, record: EditRecord) -> dict[str, float]:
        templates = self._templates(model, tokenizer)
        irrelevant = IRRELEVANT[self.edits_applied % len(IRRELEVANT)]
        pairs = [(t.format(record.prompt), record.target) for t in templates]
        batch = golden_batch(tokenizer, [*pairs, (irrelevant, "")], self.device)
        original = self.weight.detach().float()
        weight = (original + self.tensors["deltas"][-1]).requires_grad_(True)
        mask = self._shard_mask(weight.shape)
        optimiser = torch.optim.SGD([weight], lr=self.params.lr, weight_decay=WEIGHT_DECAY)
        self.training = {"weight": weight}
        previous, steps = float("inf"), 0
        try:
            with edit_training(model, self.site.layer, batch):
                for _ in range(self.params.steps):
                    loss = self._loss(model, batch)
                    if abs(loss.item() - previous) <= STOP_CHANGE and loss.item() <= STOP_LOSS:
                        break
                    previous = loss.item()
                    optimiser.zero_grad()
                    loss.backward()
                    weight.grad *= mask
                    optimiser.step()
                    steps += 1
                    with torch.no_grad():
                        lim = self.params.norm_constraint
                        weight.copy_(torch.clamp(weight, original - lim, original + lim))
                with torch.no_grad():
                    loss = self._loss(model, batch)
                    parts = {k: float(v) for k, v in self.training["parts"].items()}
        finally:
            self.training = None
        deltas, min_act = self.tensors["deltas"].clone(), self.tensors["min_act"].clone()
        deltas[-1] = weight.detach() - original
        min_act[-1] = min(float(min_act[-1]), parts["in_scope"])
        self.tensors = {"deltas": deltas, "min_act": min_act}
        self.edits_applied += 1
        if self.edits_applied % self.params.save_freq == 0:
            self._save_memory()
        if self.edits_applied % self.params.merge_freq == 0:
            self._merge()
        return {"loss": float(loss.detach()), **parts, "steps": steps}

    def _loss(self, model: nn.Module, batch: GoldenBatch) -> torch.Tensor:
        """Edit loss on the template rows + the activation margins (module docstring)."""
        state = self.training
        logits, labels, rows = answer_logits(model, batch)  # the irrelevant row has no answer
        nll = nn.functional.cross_entropy(logits, labels, reduction="none")
        per_row = torch.zeros(len(batch.labels), device=nll.device).index_add_(0, rows, nll)
        counts = torch.bincount(rows, minlength=len(batch.labels))
        edit_loss = (per_row[:-1] / counts[:-1]).mean()
        mask = batch.attention_mask.bool()
        score = self.scores(state["original"], state["side"], mask, inference=False)
        edit, irr = score[:-1], score[-1]
        p = self.params
        margins = _hinge(irr - edit + p.gamma) + _hinge(irr - p.alpha) + _hinge(p.beta - edit)
        # reported per edit: which part of the loss is left, and the scores the margins act on
        state["parts"] = {
            "nll": edit_loss.detach(),
            "margins": margins.detach(),
            "in_scope": edit.detach().mean(),
            "irrelevant_score": irr.detach(),
        }
        return edit_loss + margins

    def _shard_mask(self, shape: torch.Size) -> torch.Tensor:
        """The current shard's random gradient mask (one per `save_freq` edits)."""
        shard = self.edits_applied // self.params.save_freq
        generator = torch.Generator().manual_seed(self.params.seed * 100_003 + shard)
        mask = torch.rand(shape, generator=generator) < self.params.mask_ratio
        return mask.to(self.device, torch.float32)

    def _save_memory(self) -> None:
        """Freeze the side memory being edited; a fresh copy of W_down takes the next edits."""
        deltas, min_act = self.tensors["deltas"], self.tensors["min_act"]
        self.tensors = {
            "deltas": torch.cat([deltas, torch.zeros_like(deltas[:1])]),
            "min_act": torch.cat([min_act, torch.full_like(min_act[:1], NO_EDIT)]),
        }

    def _merge(self) -> None:
        """TIES-merge the memories frozen since the last merge into one (module docstring)."""
        n = self.params.merge_freq // self.params.save_freq
        deltas, min_act = self.tensors["deltas"], self.tensors["min_act"]
        group = slice(len(deltas) - 1 - n, len(deltas) - 1)
        merged = ties_merge(deltas[group], self.params.density)
        self.tensors = {
            "deltas": torch.cat([deltas[: group.start], merged[None], deltas[-1:]]),
            "min_act": torch.cat(
                [min_act[: group.start], min_act[group].min()[None], min_act[-1:]]
            ),
        }


def ties_merge(deltas: torch.Tensor, density: float) -> torch.Tensor:
    """TIES merging (Yadav et al. 2023) of task vectors `deltas` (n, ...) with equal weights:
    trim each to its `density` largest magnitudes, elect each entry's sign by the summed trimmed
    deltas, and average the trimmed deltas that agree with it."""
    flat = deltas.flatten(1)
    keep = max(1, int(density * flat.shape[1]))
    cutoff = flat.abs().topk(keep, dim=1).values[:, -1:]
    trimmed = torch.where(flat.abs() >= cutoff, flat, torch.zeros_like(flat))
    sign = torch.where(trimmed.sum(0) >= 0, 1.0, -1.0)
    agree = (trimmed.sign() == sign).float()
    merged = (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)
    return merged.view(deltas.shape[1:])


def _hinge(values: torch.Tensor) -> torch.Tensor:
    """The mean of the positive entries of `values`, 0 if there are none (EasyEdit's margins)."""
    positive = values[values > 0]
    return positive.mean() if positive.numel() else values.new_zeros(())
