"""Knowledge neurons by integrated gradients (Unified Concept Editing section 2 "Neuron Editing";
Dai et al. 2022).

A neuron is one FFN intermediate unit of layer l: an input of W_down, the `mlp_act` site. For a
prompt x and its golden answer y*, Eq. 1 defines P(w_hat) = p(y* | x, w = w_hat) and Eq. 2 the
attribution Attr(n_i) = w_bar_i * integral_0^1 dP(alpha * w_bar)/dw_i d(alpha), with w_bar the
neuron activations at the last prompt token. As in Dai et al., the whole activation vector of that
token moves along the path at once, so IG's completeness holds: the attributions of one prompt sum
to P(w_bar) - P(0) up to the Riemann error. A.8's Riemann sum with m steps is one batched
forward and backward here (row k carries alpha = k/m); `neuron_attributions_reference` is the
same sum written out one forward/backward per step, the specification the batched version is
tested and benchmarked against.

`locate_knowledge_neurons` keeps, in each prompt, the neurons above `threshold` x that prompt's
maximum attribution (A.8's t), keeps those that do so in more than a share `min_share` of the
prompts (A.8's co-occurrence threshold q), caps the set, and writes a `neuron_scale` artifact
that multiplies the kept neurons by beta (Eq. 3) at every position (A.8: "applied at every time
step of the generation process").

Example:
    >>> prompts = emotion_prompts("anger", split["anger"].locate)
    >>> art = locate_knowledge_neurons(model, tok, prompts, layer=20, model_name="smollm2-135m")
    >>> save_intervention(art, "artifacts/anger_ne")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ce_bench.artifacts import Artifact, ModelIdentity, Provenance
from ce_bench.emotions import Prompt
from ce_bench.locate.golden import prompts_hash
from ce_bench.sites import Site, attach_hook, module_path, site_width

__all__ = [
    "KnowledgeNeuronsConfig",
    "NeuronSelection",
    "default_max_neurons",
    "locate_knowledge_neurons",
    "neuron_attributions",
    "select_neurons",
]

DEFAULT_STEPS = 20  # m, A.8
DEFAULT_THRESHOLD = 0.1  # t = 0.1 x the prompt's maximum attribution, A.8
# q is left open by Unified Concept Editing. Dai et al. start their sharing threshold at 0.7, for a
# handful of paraphrases of one fact; on our prompts 0.7 keeps 1-6 neurons. Our locate prompts are
# every scenario under each of the five templates, so a neuron that answers only one template's
# wording passes in at most 1/5 of them, and q = 0.2 keeps the neurons that pass under at least two
# templates. On SmolLM2-135M (anger and happiness, 50 prompts each, layers 15 and 22) no neuron with
# share > 0.2 was single-template while 40-65% of those in (0.1, 0.2] were, and q = 0.2 left 50-120
# candidates: the cap below, not q, sets the size, as A.8's "400-500" does.
DEFAULT_MIN_SHARE = 0.2
# Eq. 3's beta defaults to an amplification: Dai et al. 2022 ("knowledge neurons affect
# knowledge expression") enhance a fact by doubling its neurons' activations.
DEFAULT_STRENGTH = 2.0
# A.8 keeps 400-500 neurons of Llama-3-8B's 14336 per layer (about 3.1%); other widths keep the
# same fraction of their layer.
PAPER_KEPT, PAPER_D_MLP = 450, 14336


def default_max_neurons(d_mlp: int) -> int:
    """A.8's 450-of-14336 fraction of a layer `d_mlp` wide (48 for SmolLM2-135M's 1536)."""
    return max(1, round(d_mlp * PAPER_KEPT / PAPER_D_MLP))


def neuron_attributions(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    prompt: str,
    golden: str,
    layer: int,
    steps: int = DEFAULT_STEPS,
) -> torch.Tensor:
    """IG attribution (Unified Concept Editing Eq. 2, A.8) of each `mlp_act` neuron of `layer`,
    float32 (d_mlp,).

    `golden` is the text exactly as it follows `prompt` (" angry" after "... You feel"). When it
    is several tokens, P is the probability of the whole sequence under teacher forcing (the
    product of its tokens' probabilities), so every token of the answer counts; the activations
    are scaled at the last prompt token only and reach the answer tokens through attention.

    One forward and one backward over a batch of `steps` copies of the prompt: row k sets the
    last prompt token's activations to (k/steps) * w_bar, and since each row's P depends only on
    its own row, the gradient of the rows' summed P gives every row's gradient at once. The rows
    are identical below layer L, so that prefix runs once and is copied at layer L's input.

    Example:
        >>> attr = neuron_attributions(model, tok, "I was insulted. You feel", " angry", 20)
        >>> attr.topk(10).indices
    """
    _check_ready(model, steps)
    ids, answer, position = _encode(model, tokenizer, prompt, golden)
    alphas = torch.arange(1, steps + 1, dtype=torch.float32, device=ids.device) / steps
    path: dict[str, torch.Tensor] = {}
    if layer == 0:
        ids = ids.expand(steps, -1)
        handles = []
    else:
        handles = [attach_hook(model, Site("resid_post", layer - 1), _copies(steps))]
    handles.append(
        attach_hook(model, Site("mlp_act", layer), _riemann_rows(alphas, position, path))
    )
    try:
        with torch.enable_grad():
            prob = _answer_probability(model, ids, answer)
            (grads,) = torch.autograd.grad(prob.sum(), path["scaled"])
    finally:
        for handle in handles:
            handle.remove()
    return (path["w_bar"] * grads.sum(0) / steps).cpu()


def neuron_attributions_reference(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    prompt: str,
    golden: str,
    layer: int,
    steps: int = DEFAULT_STEPS,
) -> torch.Tensor:
    """A.8's Riemann sum written out: one forward and backward per alpha = k/steps.

    The specification `neuron_attributions` must match (tests) and beat (bench/ig_speed.py).
    """
    _check_ready(model, steps)
    ids, answer, position = _encode(model, tokenizer, prompt, golden)
    site = Site("mlp_act", layer)
    seen: list[torch.Tensor] = []
    handle = attach_hook(model, site, lambda h: seen.append(h[0, position].detach().float()))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    w_bar = seen[0]
    total = torch.zeros_like(w_bar)
    for k in range(1, steps + 1):
        point = (k / steps * w_bar).requires_grad_()
        handle = attach_hook(model, site, _set_position(position, point))
        try:
            with torch.enable_grad():
                prob = _answer_probability(model, ids, answer)
                total += torch.autograd.grad(prob.sum(), point)[0]
        finally:
            handle.remove()
    return (w_bar * total / steps).cpu()


@dataclass(frozen=True)
class NeuronSelection:
    """Kept neurons, best first, with the statistics they were ranked by.

    `share` is the fraction of prompts in which a neuron passed the threshold; `mean_attribution`
    is its attribution relative to each prompt's maximum, averaged over all prompts (relative,
    because P and hence raw attributions differ by orders of magnitude between templates, and a
    raw mean would be decided by the few prompts where the answer is already likely).
    """

    neurons: torch.Tensor  # int64 indices
    share: torch.Tensor
    mean_attribution: torch.Tensor
    candidates: int  # neurons whose share exceeded min_share, before the cap


def select_neurons(
    attributions: torch.Tensor, threshold: float, min_share: float, max_neurons: int
) -> NeuronSelection:
    """A.8's filter on a (prompts, d_mlp) attribution table.

    A neuron passes in a prompt when its attribution exceeds `threshold` x that prompt's maximum
    (a prompt whose maximum is not positive passes nothing: no neuron raises its answer there);
    neurons passing in a share of prompts greater than `min_share` survive, ranked by share, then
    mean relative attribution, and at most `max_neurons` are kept.
    """
    if attributions.dim() != 2 or attributions.shape[0] == 0:
        raise ValueError("attributions must be a non-empty (prompts, d_mlp) table")
    peak = attributions.max(dim=1, keepdim=True).values
    relative = torch.where(peak > 0, attributions / peak.clamp_min(1e-30), 0.0)
    share = (relative > threshold).float().mean(0)
    mean = relative.mean(0)
    survivors = torch.nonzero(share > min_share).flatten()
    if survivors.numel() == 0:
        raise ValueError(
            f"no neuron passed threshold={threshold} x max attribution in more than"
            f" min_share={min_share} of the {attributions.shape[0]} prompts (highest share:"
            f" {float(share.max()):.3f}); lower min_share (--min-share) below that, lower"
            " threshold (--threshold), or locate at another layer"
        )
    by_mean = survivors[torch.argsort(mean[survivors], descending=True, stable=True)]
    ranked = by_mean[torch.argsort(share[by_mean], descending=True, stable=True)][:max_neurons]
    return NeuronSelection(ranked.long(), share[ranked], mean[ranked], int(survivors.numel()))


@dataclass(frozen=True, kw_only=True)
class KnowledgeNeuronsConfig:
    """`locate_knowledge_neurons`'s settings, Unified Concept Editing A.8's defaults."""

    layer: int  # the FFN neurons (input of W_down) of this layer
    steps: int = DEFAULT_STEPS  # m, the Riemann steps of integrated gradients
    threshold: float = DEFAULT_THRESHOLD  # t, a fraction of each prompt's maximum attribution
    min_share: float = DEFAULT_MIN_SHARE  # q, the share of prompts a neuron must pass t in
    max_neurons: int | None = None  # None: A.8's 450-of-14336 fraction of the layer
    strength: float = DEFAULT_STRENGTH  # beta of Eq. 3 (2.0 amplifies the concept)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps (m of the Riemann sum) must be at least 1, got {self.steps}")
        if not 0 <= self.threshold < 1:
            raise ValueError(
                f"threshold is a fraction of the maximum in [0, 1), got {self.threshold}"
            )
        if not 0 <= self.min_share < 1:
            raise ValueError(
                f"min_share is a fraction of the prompts in [0, 1), got {self.min_share}"
            )
        if self.max_neurons is not None and self.max_neurons < 1:
            raise ValueError(f"max_neurons must be at least 1, got {self.max_neurons}")


def locate_knowledge_neurons(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    prompts: Sequence[Prompt],
    config: KnowledgeNeuronsConfig,
    *,
    model_name: str,
) -> Artifact:
    """A `neuron_scale` artifact: the knowledge neurons of `prompts`' golden answers at
    `config.layer`.

    Each prompt's answer is " " + prompt.golden.

    Example:
        >>> config = KnowledgeNeuronsConfig(layer=20)
        >>> art = locate_knowledge_neurons(model, tok, prompts, config, model_name="smollm2-135m")
        >>> art.tensors["neurons"].shape, art.provenance.report["neurons"][0]
    """
    if not prompts:
        raise ValueError("knowledge neurons need at least one prompt")
    _check_ready(model, config.steps)
    site = Site("mlp_act", config.layer)
    module_path(model, site)  # an out-of-range layer fails here, before any work
    cap = (
        default_max_neurons(site_width(model, site))
        if config.max_neurons is None
        else config.max_neurons
    )
    table = torch.stack(
        [
            neuron_attributions(
                model, tokenizer, p.text, " " + p.golden, config.layer, config.steps
            )
            for p in tqdm(prompts, desc=f"IG attributions, layer {config.layer}", leave=False)
        ]
    )
    chosen = select_neurons(table, config.threshold, config.min_share, cap)
    return Artifact(
        kind="neuron_scale",
        site=site,
        params={"strength": config.strength, "positions": "all"},
        tensors={"neurons": chosen.neurons},
        model=ModelIdentity.of(model, model_name),
        provenance=Provenance(
            method="knowledge-neurons",
            data_hash=prompts_hash(prompts),
            report={
                "prompts": len(prompts),
                "steps": config.steps,
                "threshold": config.threshold,
                "min_share": config.min_share,
                "max_neurons": cap,
                "candidates": chosen.candidates,
                "prompts_without_positive_attribution": int((table.max(1).values <= 0).sum()),
                "neurons": [
                    {"neuron": i, "share": round(s, 4), "mean_attribution": round(a, 4)}
                    for i, s, a in zip(
                        chosen.neurons.tolist(),
                        chosen.share.tolist(),
                        chosen.mean_attribution.tolist(),
                        strict=True,
                    )
                ],
            },
        ),
    )


def _encode(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    prompt: str,
    golden: str,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(prompt + answer[:-1] as a (1, T) batch, answer ids, index of the last prompt token).

    No special tokens, as lm-eval's HFLM encodes the prompts the edit is evaluated on.
    """
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer = tokenizer(golden, add_special_tokens=False)["input_ids"]
    if not context or not answer:
        raise ValueError(f"prompt {prompt!r} and golden answer {golden!r} must not be empty")
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([context + answer[:-1]], device=device)
    return ids, torch.tensor(answer, device=device), len(context) - 1


def _check_ready(model: nn.Module, steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps (m of the Riemann sum) must be at least 1, got {steps}")
    if model.training:
        raise ValueError("call model.eval() first: dropout would make the attributions random")


def _answer_probability(model: nn.Module, ids: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """P(answer | prompt) per row of the output under teacher forcing (Eq. 1): the answer tokens
    are the last len(answer) predictions of `ids`."""
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(answer)).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, answer.to(logp.device).expand(logp.shape[0], -1)[..., None])
    return picked.squeeze(-1).sum(-1).exp()


def _riemann_rows(
    alphas: torch.Tensor, position: int, path: dict[str, torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Hook setting row k's activations at `position` to alphas[k] * w_bar; w_bar and the
    scaled leaf (whose gradient is wanted) go into `path`. The rows are identical up to this
    hook, so row 0 holds w_bar."""

    def edit(h: torch.Tensor) -> torch.Tensor:
        w_bar = h[0, position].detach().float()
        scaled = (alphas.to(h.device)[:, None] * w_bar).requires_grad_()
        path["w_bar"], path["scaled"] = w_bar, scaled
        out = h.clone()
        out[:, position] = scaled.to(h.dtype)
        return out

    return edit


def _copies(rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Hook turning a one-row hidden state into `rows` identical rows."""
    return lambda h: h.expand(rows, *h.shape[1:])


def _set_position(position: int, value: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Hook setting the activations at `position` of every row to `value`."""

    def edit(h: torch.Tensor) -> torch.Tensor:
        out = h.clone()
        out[:, position] = value.to(h.dtype)
        return out

    return edit
