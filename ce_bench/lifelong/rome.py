"""ROME (Meng et al., 2022a): a rank-one update of W_down that maps a subject's key to a new value.

For each edit (subject s, prompt p, target o):

1. key k*: W_down's input at the last token of s, averaged over p placed after short texts the
   model wrote itself (the context templates: "{}" and 10 samples of 5 and of 10 tokens).
2. value v*: W_down's output there plus a vector delta, optimised (Adam, 25 steps, lr 0.5) so
   that the templates followed by p end in o: the mean NLL of o's tokens, plus kl_factor times
   the KL divergence of the next-token distribution after "{s} is a" from the unedited one (the
   "essence" term), plus a weight decay on delta; ||delta|| is clamped to 4 ||value||.
3. insertion (ROME Eq. 2): W <- W + (v* - W k)(C^-1 k*)^T / ((C^-1 k*)^T k), with
   C = E[k k^T] over text (`ce_bench.lifelong.covariance`) and k the key in the "{}" template;
   after it, W k = v* exactly.

Edits apply in sequence, each on the model the earlier ones edited. Defaults are EasyEdit's for
LLaMA-2-7B (hparams/ROME/llama-7b.yaml: layer 5 of 32, 25 steps, lr 0.5, weight decay 1e-3,
clamp 4, KL factor 0.0625), except that C is used as ROME's paper does (EasyEdit's LLaMA config
sets mom2_adjustment false; `mom2_adjustment=false` does the same). Steps 1 and 2 are shared
with MEMIT and AlphaEdit (`ce_bench.lifelong.memit`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ce_bench.interventions.base import check_integer, check_number, register_intervention
from ce_bench.lifelong.covariance import second_moments
from ce_bench.lifelong.editor import EditorParams
from ce_bench.lifelong.records import EditRecord
from ce_bench.lifelong.weight_editor import WeightDeltaEditor, w_down
from ce_bench.scoring import answer_logits, golden_batch
from ce_bench.sites import Site, attach_hook, model_dims, out_in

ROME_DEPTH = 5 / 32  # EasyEdit's ROME edits layer 5 of LLaMA-2-7B's 32
TEMPLATE_STARTS = ("The", "Therefore", "Because", "I", "You")  # ROME's context templates
ROME_TEMPLATES = ((5, 10), (10, 10))  # (tokens, how many): ROME's sampled context templates
STOP_LOSS = 5e-2  # ROME stops optimising v* once the loss is below this


@dataclass(frozen=True)
class TargetParams(EditorParams):
    """How the new value (ROME's v*, MEMIT's z) is optimised; EasyEdit's LLaMA-2-7B values."""

    v_steps: int = 25  # v_num_grad_steps
    v_lr: float = 0.5
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0  # ||delta|| <= this x ||the value it is added to||
    kl_factor: float = 0.0625  # weight of the essence (KL) term
    mom2_tokens: int = 100_000  # tokens of offline text C = E[k k^T] is estimated from

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor"):
            check_number(name, getattr(self, name))
        for name in ("v_steps", "mom2_tokens"):
            check_integer(name, getattr(self, name), 1)


@dataclass(frozen=True)
class ROMEParams(TargetParams):
    mom2_adjustment: bool = True  # use C (ROME Eq. 2); false: C = I
    templates: int = 10  # sampled context templates of each length

    def __post_init__(self) -> None:
        super().__post_init__()
        check_integer("templates", self.templates, 0)
        if not isinstance(self.mom2_adjustment, bool):
            raise ValueError(f"mom2_adjustment must be true or false, got {self.mom2_adjustment!r}")


class KeyValueEditor(WeightDeltaEditor):
    """What ROME, MEMIT and AlphaEdit prepare once per stream, from the unedited model: the
    context templates and C = E[k k^T] at each edited layer."""

    @abstractmethod
    def template_lengths(self) -> tuple[tuple[int, int], ...]:
        """(tokens, how many) of the sampled context templates."""

    def uses_moments(self) -> bool:
        return True

    def start_stream(self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord]) -> None:
        with self.holding(False):
            torch.manual_seed(self.params.seed)
            self.context_templates = context_templates(model, tokenizer, self.template_lengths())
            stats = (
                second_moments(model, tokenizer, self.layers, self.params.mom2_tokens)
                if self.uses_moments()
                else []
            )
        self.moments = [moment for moment, _ in stats]
        self.moment_tokens = stats[0][1] if stats else 0
        self.prepare()

    def prepare(self) -> None:  # noqa: B027 (optional override)
        """What the updates need besides C (AlphaEdit: its projections)."""

    def progress(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, info = super().progress()  # the templates were sampled: keep the same ones
        return tensors, {**info, "templates": self.context_templates}

    def resume(
        self, tensors: dict[str, torch.Tensor], info: dict[str, Any], edits_applied: int
    ) -> None:
        super().resume(tensors, info, edits_applied)
        self.context_templates = list(info["templates"])

    def stream_report(
        self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord]
    ) -> dict[str, Any]:
        return {"mom2_tokens_seen": self.moment_tokens, "templates": self.context_templates}


@register_intervention
class ROME(KeyValueEditor):
    """State: `delta`, the sum of the stream's rank-one updates of W_down."""

    kind = "rome"
    Params = ROMEParams
    depth = ROME_DEPTH

    def template_lengths(self) -> tuple[tuple[int, int], ...]:
        return tuple((tokens, self.params.templates) for tokens, _ in ROME_TEMPLATES)

    def uses_moments(self) -> bool:
        return self.params.mom2_adjustment

    def apply_edit(self, model: nn.Module, tokenizer: Any, record: EditRecord) -> dict[str, float]:
        module = w_down(model, self.site.layer)
        with self.holding(True):  # each edit starts from the model the earlier ones edited
            texts = [t.format(record.prompt) for t in self.context_templates]
            site = Site("mlp_act", self.site.layer)
            keys = at_subject(model, tokenizer, texts, record.subject, site)
            value, stats = optimise_target(
                model,
                tokenizer,
                record,
                self.context_templates,
                self.params,
                lambda edit: module.register_forward_hook(lambda m, a, out: edit(out)),
            )
            weight = out_in(module, self.swapped[0].weight.detach().float().clone())
            direction = keys.mean(0)
            if self.moments:
                direction = torch.linalg.solve(self.moments[0].to(direction), direction)
            update = rank_one_update(weight, keys[0], value, direction / direction.norm())
            self.set_layer(0, out_in(module, weight + update))
        self.edits_applied += 1
        # how exactly the new W_down maps the key to v* (0 up to rounding)
        residual = ((weight + update) @ keys[0] - value).norm() / value.norm()
        return {**stats, "update_norm": float(update.norm()), "residual": float(residual)}


def rank_one_update(
    weight: torch.Tensor, key: torch.Tensor, value: torch.Tensor, direction: torch.Tensor
) -> torch.Tensor:
    """The rank-one change of `weight` (out, in) along `direction` (in) after which
    (weight + update) @ key == value: (value - weight @ key) direction^T / (direction . key).
    With direction = C^-1 key it is ROME Eq. 2's closed form."""
    right = (value - weight @ key) / direction.dot(key)
    return torch.outer(right, direction)


def subject_last(tokenizer: Any, text: str, subject: str) -> int:
    """The index of the subject's last token in `text` (tokenised without special tokens, as
    `golden_batch` does); the text's last token when there is no subject in it."""
    end = text.rfind(subject) + len(subject) if subject and subject in text else len(text)
    return len(tokenizer(text[:end], add_special_tokens=False)["input_ids"]) - 1


def at_subject(
    model: nn.Module, tokenizer: Any, texts: list[str], subject: str, site: Site
) -> torch.Tensor:
    """(texts, width): the activation at `site` at the subject's last token of each text (W_down's
    input, the key, at `mlp_act`; the residual stream at `resid_post`)."""
    positions = torch.tensor([subject_last(tokenizer, text, subject) for text in texts])
    device = next(model.parameters()).device
    batch = golden_batch(tokenizer, [(t, "") for t in texts], device)
    seen: list[torch.Tensor] = []
    handle = attach_hook(model, site, lambda h: seen.append(h))
    try:
        with torch.no_grad():
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        handle.remove()
    return seen[0][torch.arange(len(texts)), positions].float()


def optimise_target(
    model: nn.Module,
    tokenizer: Any,
    record: EditRecord,
    templates: Sequence[str],
    params: TargetParams,
    hook: Callable[[Callable[[torch.Tensor], torch.Tensor]], RemovableHandle],
) -> tuple[torch.Tensor, dict[str, float]]:
    """The activation `hook` exposes at the subject's last token, plus the delta that makes the
    templated prompts end in the target (see the module docstring, step 2): ROME's v* when the
    hook is W_down's output, MEMIT's z when it is the residual stream after a layer."""
    subject = record.subject if record.subject in record.prompt else ""
    pairs = [(t.format(record.prompt), record.target) for t in templates]
    pairs.append((f"{subject or record.prompt} is a", ""))  # the essence prompt
    device = next(model.parameters()).device
    batch = golden_batch(tokenizer, pairs, device)
    lookup = torch.tensor([subject_last(tokenizer, text, subject) for text, _ in pairs])
    rows = torch.arange(len(pairs))
    delta = torch.zeros(model_dims(model).hidden_size, device=device, requires_grad=True)
    found: dict[str, torch.Tensor] = {}

    def add_delta(output: torch.Tensor) -> torch.Tensor:
        if "init" not in found:
            found["init"] = output[0, lookup[0]].detach().float().clone()
        edited = output.clone()
        edited[rows, lookup] = edited[rows, lookup] + delta.to(output.dtype)
        return edited

    handle = hook(add_delta)
    optimiser = torch.optim.Adam([delta], lr=params.v_lr)
    essence = (len(pairs) - 1, int(lookup[-1]))
    kl_init: torch.Tensor | None = None
    nll = kl = torch.tensor(float("nan"))
    steps = 0
    try:
        with torch.enable_grad():
            for steps in range(1, params.v_steps + 1):
                logits, targets, token_rows = answer_logits(model, batch, essence)
                logprobs = logits.log_softmax(-1)
                # the mean NLL of each template's target tokens, averaged over templates
                token_lp = logprobs[:-1].gather(-1, targets[:-1, None])[:, 0]
                per_row = token_lp.new_zeros(len(pairs) - 1).index_add(0, token_rows[:-1], token_lp)
                counts = torch.bincount(token_rows[:-1], minlength=len(pairs) - 1)
                nll = -(per_row / counts.clamp(min=1)).mean()
                essence_lp = logprobs[-1]  # after "{subject} is a", at the subject (ROME)
                if kl_init is None:
                    kl_init = essence_lp.detach()
                kl = (essence_lp.exp() * (essence_lp - kl_init)).sum()
                init = found["init"]
                decay = params.v_weight_decay * delta.norm() / init.norm() ** 2
                loss = nll + params.kl_factor * kl + decay
                if loss.item() < STOP_LOSS or steps == params.v_steps:
                    break
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                with torch.no_grad():
                    limit = params.clamp_norm_factor * init.norm()
                    if delta.norm() > limit:
                        delta.mul_(limit / delta.norm())
    finally:
        handle.remove()
    target = found["init"] + delta.detach()
    return target, {"nll": float(nll.detach()), "kl": float(kl.detach()), "steps": steps}


def context_templates(
    model: nn.Module, tokenizer: Any, lengths: Sequence[tuple[int, int]]
) -> list[str]:
    """ "{}" and, per (tokens, count) of `lengths`, `count` texts of that many tokens the model
    samples (top-5) after ROME's starting words, each followed by ". {}"."""
    device = next(model.parameters()).device
    templates = ["{}"]
    for length, count in lengths:
        for i in range(count):
            start = TEMPLATE_STARTS[i % len(TEMPLATE_STARTS)]
            ids = tokenizer(start, add_special_tokens=False, return_tensors="pt").input_ids
            with torch.no_grad():
                out = model.generate(
                    ids.to(device),
                    attention_mask=torch.ones_like(ids).to(device),
                    do_sample=True,
                    top_k=5,
                    max_new_tokens=max(1, length - ids.shape[1]),
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                )
            text = tokenizer.decode(out[0], skip_special_tokens=True)
            templates.append(text.replace("{", " ").replace("}", " ") + ". {}")
    return templates
