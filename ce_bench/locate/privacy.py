"""Locate private facts for erasure: FeatureEdit's SAE features and the knowledge-neuron baseline.

Both methods see only each fact's training prompt + value (never its paraphrases, on which
Generalization is measured) and write an artifact that erases every given fact at once at
layer L; the report lists the erased fact ids (`erased`), which `privacy_erasure` evaluates.

FeatureEdit (Knowledge Microscope), per fact:
1. Candidates: the SAE features active at the training prompt's tokens (attention sinks left out,
   where the SAE reconstructs badly), SAE at `resid_post` of L.
2. Each candidate's ablation (the feature removed at every position, h <- h - c_k W_dec[k],
   the SAE's error term kept, as Knowledge Microscope ablates features) changes P(value | prompt);
   Knowledge Microscope scores features by that drop, Delta-Prob = (P - P_ablated) / P. A
   first-order estimate (gradient of log P through the residual, one backward pass) ranks all
   candidates, and the best `candidates` are ablated exactly, in one batch; the feature with the
   largest Delta-Prob wins.
3. Its decoder direction goes into a `featureedit` artifact (`ce_bench.interventions.featureedit`
   says which W_down positions it zeroes, and tau_2).

Knowledge neurons (the baseline Knowledge Microscope compares with), per fact: integrated-gradients
attributions of layer L's FFN neurons for the value (`ce_bench.locate.knowledge_neurons`, Unified
Concept Editing Eq. 2 / Dai et al. 2022), the neurons above `threshold` x the fact's maximum
attribution, at most `max_neurons` of them. The union over facts is zeroed: a `neuron_scale`
artifact with beta = 0 at every position, which multiplies the neurons' activations by zero and so
is exactly zeroing their columns of W_down.

Example:
    >>> facts = load_fact_set().facts
    >>> art = locate_featureedit(model, tok, facts, SAESource(sae_path=str(ensure_sae(20))), "m")
    >>> art = locate_fact_neurons(model, tok, facts, 20, "m")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ce_bench.artifacts import Artifact, ModelIdentity, Provenance, data_hash, timed
from ce_bench.interventions.featureedit import DEFAULT_TAU_2, marked_rows
from ce_bench.interventions.sae import load_sae, sink_positions
from ce_bench.locate.knowledge_neurons import DEFAULT_STEPS, neuron_attributions, select_neurons
from ce_bench.locate.sae_features import SAESource
from ce_bench.private_facts import Fact
from ce_bench.scoring import GoldenBatch, answer_logits, frozen_parameters, golden_batch
from ce_bench.sites import Site, attach_hook, model_dims, module_path, site_from_hook_name

if TYPE_CHECKING:
    from sae_lens import SAE

__all__ = ["FeatureChoice", "feature_effects", "locate_fact_neurons", "locate_featureedit"]

CANDIDATES = 8  # features per fact whose ablation is measured exactly
# Dai et al. 2022 keep a fact's neurons above 0.2 x its maximum attribution.
NEURON_THRESHOLD = 0.2
NEURONS_PER_FACT = 10


@dataclass(frozen=True)
class FeatureChoice:
    """The feature chosen for one fact, with the numbers it was chosen by."""

    fact: str
    feature: int
    delta_prob: float  # (P - P_ablated) / P
    prob: float  # P(value | training prompt) before ablation
    active_candidates: int  # features active at the prompt's tokens


def feature_effects(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    fact: Fact,
    candidates: int = CANDIDATES,
) -> tuple[list[tuple[int, float]], float, int]:
    """([(feature, Delta-Prob)] of the best `candidates` by estimate, exact and best first,
    P(value | training prompt), number of features active at the prompt's tokens)."""
    site = site_from_hook_name(model, sae.cfg.metadata.hook_name)
    device = model.get_input_embeddings().weight.device
    batch = golden_batch(tokenizer, [(fact.training_prompt, fact.value)], device)
    seen: dict[str, torch.Tensor] = {}

    def leaf(h: torch.Tensor) -> torch.Tensor:
        seen["h"] = h = h.detach().requires_grad_(True)
        return h

    handle = attach_hook(model, site, leaf)
    try:
        with frozen_parameters(model), torch.enable_grad():
            logprob = _logprobs(model, batch)[0]
            (grad,) = torch.autograd.grad(logprob, seen["h"])
    finally:
        handle.remove()
    h = seen["h"].detach()[0]
    codes = sae.encode(h.to(sae.W_dec.dtype)).float()  # (seq, d_sae)
    codes[sink_positions(h[None])[0]] = 0.0  # no edit at attention sinks
    prompt = torch.arange(h.shape[0], device=h.device) <= int(batch.last_prompt[0])
    active = (codes[prompt] > 0).any(0).nonzero().flatten()
    if active.numel() == 0:
        raise ValueError(f"{fact.id}: no SAE feature is active at the training prompt's tokens")
    # d log P for removing c_k W_dec[k] at every position, to first order
    w_dec = sae.W_dec.detach().float()
    estimate = -(codes[:, active] * (grad[0].float() @ w_dec[active].T)).sum(0)
    chosen = active[estimate.argsort()[:candidates]]
    ablated = _ablated_logprobs(model, batch, site, codes[:, chosen], w_dec[chosen])
    drops = (1 - (ablated - logprob.detach()).exp()).tolist()
    ranked = sorted(zip(chosen.tolist(), drops, strict=True), key=lambda x: -x[1])
    return ranked, float(logprob.detach().exp()), int(active.numel())


@dataclass(frozen=True, kw_only=True)
class FeatureEditConfig:
    """`locate_featureedit`'s settings (Knowledge Microscope)."""

    source: SAESource  # an SAE of the residual stream after a block
    tau_2: float = DEFAULT_TAU_2  # decoder-direction threshold of the zeroed W_down rows
    candidates: int = CANDIDATES  # features per fact whose ablation is measured exactly

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {self.candidates}")


@timed
def locate_featureedit(
    model: nn.Module,
    tokenizer: Any,
    facts: Sequence[Fact],
    config: FeatureEditConfig,
    *,
    model_name: str,
) -> Artifact:
    """A `featureedit` artifact erasing `facts` with the SAE of `config.source` (see the module
    doc).

    Example:
        >>> config = FeatureEditConfig(source=SAESource(sae_path="saes/l20"))
        >>> art = locate_featureedit(model, tok, facts, config, model_name="m")
        >>> art.provenance.report["choices"][0]["delta_prob"]
    """
    _check_facts(facts)
    sae = load_sae(config.source.sae_path, config.source.sae_release, config.source.sae_id)
    sae = sae.to(model.get_input_embeddings().weight.device)
    site = site_from_hook_name(model, sae.cfg.metadata.hook_name)
    width = model_dims(model).hidden_size
    if site.name != "resid_post" or sae.cfg.d_in != width:
        raise ValueError(
            f"FeatureEdit needs an SAE of the residual stream after a block, {width} wide;"
            f" this one reads {site} with d_in={sae.cfg.d_in}"
        )
    choices = []
    for fact in tqdm(facts, desc=f"FeatureEdit features at {site}"):
        ranked, prob, active = feature_effects(model, tokenizer, sae, fact, config.candidates)
        feature, drop = ranked[0]
        choices.append(FeatureChoice(fact.id, feature, round(drop, 4), round(prob, 4), active))
    directions = sae.W_dec.detach().float().cpu()[[c.feature for c in choices]]
    rows = marked_rows(directions, config.tau_2)
    report = {
        "erased": [f.id for f in facts],
        "sae_site": str(site),
        "candidates": config.candidates,
        "choices": [asdict(c) for c in choices],
        "distinct_features": len({c.feature for c in choices}),
        "marked_rows": int(rows.sum()),
        "zeroed_weights": int(rows.sum()) * model_dims(model).d_mlp,
        **asdict(config.source),
    }
    return Artifact(
        kind="featureedit",
        site=Site("mlp_act", site.layer),
        params={"tau_2": config.tau_2},
        tensors={"directions": directions},
        model=ModelIdentity.of(model, model_name),
        provenance=Provenance("featureedit", _facts_hash(facts), report=report),
    )


@dataclass(frozen=True, kw_only=True)
class FactNeuronsConfig:
    """`locate_fact_neurons`'s settings: knowledge neurons per fact (Knowledge Microscope's
    baseline)."""

    layer: int
    steps: int = DEFAULT_STEPS  # Riemann steps of integrated gradients
    threshold: float = NEURON_THRESHOLD  # a fraction of the fact's maximum attribution
    max_neurons: int = NEURONS_PER_FACT

    def __post_init__(self) -> None:
        if self.steps < 1 or self.max_neurons < 1:
            raise ValueError("steps and max_neurons must be at least 1")


@timed
def locate_fact_neurons(
    model: nn.Module,
    tokenizer: Any,
    facts: Sequence[Fact],
    config: FactNeuronsConfig,
    *,
    model_name: str,
) -> Artifact:
    """A `neuron_scale` artifact (beta = 0) zeroing each fact's knowledge neurons at
    `config.layer`.

    Example:
        >>> config = FactNeuronsConfig(layer=20)
        >>> art = locate_fact_neurons(model, tok, facts, config, model_name="m")
        >>> len(art.tensors["neurons"]), art.provenance.report["facts"][0]
    """
    _check_facts(facts)
    site = Site("mlp_act", config.layer)
    module_path(model, site)  # an out-of-range layer fails here, before any work
    per_fact = []
    for fact in tqdm(facts, desc=f"knowledge neurons at layer {config.layer}"):
        attr = neuron_attributions(
            model, tokenizer, fact.training_prompt, " " + fact.value, config.layer, config.steps
        )
        if float(attr.max()) <= 0:
            raise ValueError(
                f"{fact.id}: no neuron of layer {config.layer} has a positive attribution for its"
                " value; has the model memorised the facts (ce-bench inject-facts)?"
            )
        chosen = select_neurons(attr[None], config.threshold, 0.0, config.max_neurons)
        per_fact.append({"fact": fact.id, "neurons": chosen.neurons.tolist()})
    neurons = sorted({n for entry in per_fact for n in entry["neurons"]})
    report = {
        "erased": [f.id for f in facts],
        "steps": config.steps,
        "threshold": config.threshold,
        "max_neurons_per_fact": config.max_neurons,
        "facts": per_fact,
        "zeroed_weights": len(neurons) * model_dims(model).hidden_size,
    }
    return Artifact(
        kind="neuron_scale",
        site=site,
        params={"strength": 0.0, "positions": "all"},
        tensors={"neurons": torch.tensor(neurons, dtype=torch.int64)},
        model=ModelIdentity.of(model, model_name),
        provenance=Provenance("fact-neurons", _facts_hash(facts), report=report),
    )


def _logprobs(model: nn.Module, batch: GoldenBatch) -> torch.Tensor:
    """(rows,) log P(answer | prompt) under teacher forcing."""
    logits, targets, rows = answer_logits(model, batch)
    picked = logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    return torch.zeros(len(batch.input_ids), device=picked.device).index_add(0, rows, picked)


def _ablated_logprobs(
    model: nn.Module,
    batch: GoldenBatch,
    site: Site,
    codes: torch.Tensor,
    directions: torch.Tensor,
) -> torch.Tensor:
    """log P(answer | prompt) with feature k removed in row k: h <- h - codes[:, k] W_dec[k].

    `codes` (seq, k) are the features' activations at each position, `directions` (k, d) their
    decoder rows; the k rows run as one batch."""
    k = codes.shape[1]
    removed = codes.T[:, :, None] * directions[:, None, :]  # (k, seq, d)

    def ablate(h: torch.Tensor) -> torch.Tensor:
        return h - removed.to(h.dtype)

    rows = GoldenBatch(
        batch.input_ids.expand(k, -1),
        batch.attention_mask.expand(k, -1),
        batch.labels.expand(k, -1),
        batch.last_prompt.expand(k),
    )
    handle = attach_hook(model, site, ablate)
    try:
        with torch.no_grad():
            return _logprobs(model, rows)
    finally:
        handle.remove()


def _check_facts(facts: Sequence[Fact]) -> None:
    if not facts:
        raise ValueError("no facts to erase")


def _facts_hash(facts: Sequence[Fact]) -> str:
    return data_hash(*(f"{f.id}\t{f.training_prompt}\t{f.value}" for f in facts))
