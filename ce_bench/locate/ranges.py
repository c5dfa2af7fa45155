"""Locate a class's activation ranges for erasure (NeuronLens 2.3, 5.1, Appendix C, L, N).

1. Record the residual stream after layer L at the token that predicts the label (the last token
   of the few-shot prompt) for every training example (2.3).
2. Rank the units by a saliency metric for the target class (Appendix C) and keep the top
   fraction p (default 0.3):
     max        mean |h_j| over the class's examples (the paper's default)
     probeless  sum over the other classes c' of |q_j(c) - q_j(c')|, q = class means
     probe      |W[j, c]| of an elastic-net-regularised linear probe over all classes
3. Per kept unit, mu and sigma of the class's activations give the range
   [mu - tau sigma, mu + tau sigma] (5.1, tau = 2.5) that `range_mask` acts inside.

With an SAE the units are its latents (Appendix N): latents active on at least 10% of the
class's examples, of which the top 20% by mean activation are kept.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from ce_bench.artifacts import Artifact, ModelIdentity, Provenance, data_hash, timed
from ce_bench.classification import (
    DEFAULT_SHOTS,
    ClassDataset,
    Example,
    choose_shots,
    few_shot_prompt,
    load_examples,
)
from ce_bench.interventions.ranges import DEFAULT_STEER, DEFAULT_TAU, Gate, Phi, RangeMaskParams
from ce_bench.interventions.sae import load_sae
from ce_bench.locate.activations import collect_activations
from ce_bench.locate.diffmean import diffmean_artifact
from ce_bench.locate.sae_features import SAESource
from ce_bench.sites import Site, module_path

Ranking = Literal["max", "probeless", "probe"]
RANKINGS: tuple[str, ...] = get_args(Ranking)
DEFAULT_TOP = 0.3  # NeuronLens Table 3: 30% of Llama-3.2-3B's neurons
SAE_MIN_ACTIVE = 0.1  # Appendix N: a latent must fire on 10% of the class's examples
SAE_TOP = 0.2  # Appendix N: then the top 20% by activation
PROBE_STEPS = 300
PROBE_L1, PROBE_L2 = 1e-3, 1e-3  # elastic-net weights (Dalvi et al. 2019, Appendix C)


def penultimate_layer(model: nn.Module) -> int:
    """NeuronLens 5.3 intervenes at the penultimate layer."""
    return int(model.config.num_hidden_layers) - 2


def middle_layer(model: nn.Module) -> int:
    """NeuronLens Appendix M steers at the model's middle layer."""
    return int(model.config.num_hidden_layers) // 2


def class_activations(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    data: ClassDataset,
    examples: list[Example],
    shots: list[Example],
    layer: int,
) -> torch.Tensor:
    """(examples, width) residual after `layer` at each prompt's label-predicting token."""
    prompts = [few_shot_prompt(data, e.text, shots) for e in examples]
    return collect_activations(model, tokenizer, prompts, Site("resid_post", layer), "last")


def saliency(h: torch.Tensor, labels: torch.Tensor, target: int, ranking: Ranking) -> torch.Tensor:
    """One score per unit (higher = more salient for `target`), Appendix C."""
    if ranking == "max":
        return h[labels == target].abs().mean(0)
    means = torch.stack([h[labels == c].mean(0) for c in labels.unique(sorted=True)])
    if ranking == "probeless":
        classes = labels.unique(sorted=True).tolist()
        return (means[classes.index(target)] - means).abs().sum(0)
    if ranking == "probe":
        return linear_probe(h, labels).abs()[:, target]
    raise ValueError(f"ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")


def linear_probe(h: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Weights (width, classes) of a softmax probe on standardised activations, trained with
    an elastic-net penalty so that redundant units do not share the weight (Appendix C)."""
    torch.manual_seed(seed)
    x = (h - h.mean(0)) / h.std(0).clamp(min=1e-6)
    classes = int(labels.max()) + 1
    weight = torch.zeros(h.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.01)
    with torch.enable_grad():
        for _ in range(PROBE_STEPS):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(x @ weight + bias, labels)
            loss = loss + PROBE_L1 * weight.abs().sum() + PROBE_L2 * weight.pow(2).sum()
            loss.backward()
            optimizer.step()
    return weight.detach()


def top_fraction(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the top `fraction` of units by score, best first."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the kept fraction must be in (0, 1], got {fraction}")
    return scores.argsort(descending=True)[: max(1, math.ceil(fraction * scores.numel()))]


@dataclass(frozen=True)
class TrainingActivations:
    """The residuals of every training example of a dataset at one layer, with their labels;
    one set serves the ranges of every class."""

    data: ClassDataset
    layer: int
    source: str
    shots: int
    h: torch.Tensor  # (examples, width)
    labels: torch.Tensor  # (examples,)
    prompts_hash: str
    seconds: float  # reading them; charged to each artifact located from them


@dataclass(frozen=True, kw_only=True)
class ClassData:
    """Which training examples a class's erasure is located from."""

    source: str = "shipped"  # the project's offline set, or "hub"
    per_class: int | None = None  # at most this many training examples per class (all if None)
    shots: int = DEFAULT_SHOTS  # labelled examples in each few-shot prompt (Appendix H)


@dataclass(frozen=True, kw_only=True)
class RangesConfig(ClassData):
    """`locate_ranges`'s settings, NeuronLens's defaults (5.1, Appendix C, N)."""

    target: str  # the class to erase, by name or label word
    layer: int = -1  # the residual after this layer; -1: the penultimate (5.3)
    ranking: Ranking = "max"
    top: float | None = None  # kept fraction; None: 0.3 of the units, 0.2 of an SAE's latents
    tau: float = DEFAULT_TAU
    phi: Phi = "zero"
    gate: Gate = "range"
    sae: SAESource | None = None  # mask ranges of this SAE's latents instead (Appendix N)

    def __post_init__(self) -> None:
        RangeMaskParams(phi=self.phi, gate=self.gate, tau=self.tau)
        if self.ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")


@dataclass(frozen=True, kw_only=True)
class ClassSteeringConfig(ClassData):
    """`locate_class_direction`'s settings (NeuronLens Appendix M)."""

    target: str  # the class to remove, by name or label word
    layer: int = -1  # -1: the model's middle layer (Appendix M)
    kind: str = "steer"  # steer (h + a r) or directional_ablation (h - r r^T h)
    strength: float = DEFAULT_STEER  # a of h + a r

    def __post_init__(self) -> None:
        if self.kind not in ("steer", "directional_ablation"):
            raise ValueError(f"kind must be steer or directional_ablation, got {self.kind!r}")


def training_activations(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    data: ClassDataset,
    layer: int,
    source: str = "shipped",
    per_class: int | None = None,
    shots: int = DEFAULT_SHOTS,
) -> TrainingActivations:
    """Residuals after `layer` at the label-predicting token of each training example (2.3);
    the prompts' own shots are left out, at most `per_class` examples per class."""
    module_path(model, Site("resid_post", layer))  # an unknown layer fails before any work
    train = load_examples(data, "train", source)
    chosen_shots = choose_shots(data, train, shots)
    pool = [e for e in train if e not in chosen_shots]  # a shot is not its own test
    examples = [e for c in range(len(data.classes)) for e in _of_class(pool, c)[:per_class]]
    prompts = [few_shot_prompt(data, e.text, chosen_shots) for e in examples]
    start = time.perf_counter()
    h = class_activations(model, tokenizer, data, examples, chosen_shots, layer)
    return TrainingActivations(
        data=data,
        layer=layer,
        source=source,
        shots=shots,
        h=h,
        labels=torch.tensor([e.label for e in examples]),
        prompts_hash=data_hash(*prompts),
        seconds=time.perf_counter() - start,
    )


@timed
def locate_ranges(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    data: ClassDataset,
    config: RangesConfig,
    *,
    model_name: str,
    activations: TrainingActivations | None = None,
) -> Artifact:
    """A `range_mask` artifact erasing class `config.target` of `data` at `resid_post` of
    `config.layer`. `activations` (from `training_activations` with the same data, layer,
    source and shots) saves reading them again.

    Example:
        >>> config = RangesConfig(target="Sports", layer=28)
        >>> art = locate_ranges(model, tok, DATASETS["agnews"], config, model_name="smollm2-135m")
        >>> art.tensors["neurons"].shape, art.params["tau"]
    """
    index = data.class_index(config.target)
    layer = penultimate_layer(model) if config.layer == -1 else config.layer
    sae = config.sae
    read_before = 0.0 if activations is None else activations.seconds  # outside `timed`
    activations = _activations_for(model, tokenizer, data, layer, config, activations)
    h, labels = activations.h, activations.labels
    if not bool((labels == index).any()):
        raise ValueError(f"no training examples of class {config.target!r} in {data.name}")
    params: dict[str, object] = {
        "phi": config.phi, "gate": config.gate, "tau": config.tau, "positions": "last",
    }  # fmt: skip
    if sae is None:
        top = DEFAULT_TOP if config.top is None else config.top
        units = top_fraction(saliency(h, labels, index, config.ranking), top)
        values = h
    else:
        top = SAE_TOP if config.top is None else config.top
        units, values = _sae_units(h, labels, index, sae, top)
        params.update({k: v for k, v in vars(sae).items() if v})
    of_target = values[labels == index][:, units]
    others = values[labels != index][:, units]
    tensors = {
        "neurons": units.long(),
        "mu": of_target.mean(0),
        "sigma": of_target.std(0, correction=0),  # 5.1: population standard deviation
        "direction": of_target.mean(0) - others.mean(0),  # M.2: for phi=steer
    }
    ranking = "sae" if sae else config.ranking
    return Artifact(
        kind="range_mask",
        site=Site("resid_post", layer),
        params=params,
        tensors=tensors,
        model=ModelIdentity.of(model, model_name),
        provenance=Provenance(
            method="ranges",
            data_hash=activations.prompts_hash,
            report={
                "variant": ranking,
                "dataset": data.name,
                "data_source": config.source,
                "target": data.classes[index],
                "target_index": index,
                "ranking": ranking,
                "kept": int(units.numel()),
                "examples_per_class": [int((labels == c).sum()) for c in range(len(data.classes))],
                "shots": config.shots,
            },
            seconds=read_before,
        ),
    )


def _activations_for(  # type: ignore[no-untyped-def]
    model: nn.Module,
    tokenizer,
    data: ClassDataset,
    layer: int,
    chosen: ClassData,
    given: TrainingActivations | None,
) -> TrainingActivations:
    """`given` if it was read for this data, layer, source and shots; read them if None."""
    if given is None:
        return training_activations(
            model, tokenizer, data, layer, chosen.source, chosen.per_class, chosen.shots
        )
    wanted = (data, layer, chosen.source, chosen.shots)
    if (given.data, given.layer, given.source, given.shots) != wanted:
        raise ValueError("the given activations were read for other data, layer or shots")
    return given


def _of_class(examples: list[Example], label: int) -> list[Example]:
    return [e for e in examples if e.label == label]


def _sae_units(
    h: torch.Tensor, labels: torch.Tensor, target: int, source: SAESource, top: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Appendix N: the class's frequent latents, top `top` of them by mean activation."""
    sae = load_sae(source.sae_path, source.sae_release, source.sae_id)
    with torch.no_grad():
        codes = sae.encode(h.to(sae.W_dec.dtype)).float()
    of_target = codes[labels == target]
    frequent = ((of_target > 0).float().mean(0) >= SAE_MIN_ACTIVE).nonzero().squeeze(1)
    if frequent.numel() == 0:
        raise ValueError(f"no SAE latent fires on {SAE_MIN_ACTIVE:.0%} of the class's examples")
    best = top_fraction(of_target[:, frequent].mean(0), top)
    return frequent[best], codes


@timed
def locate_class_direction(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    data: ClassDataset,
    config: ClassSteeringConfig,
    *,
    model_name: str,
    activations: TrainingActivations | None = None,
) -> Artifact:
    """NeuronLens Appendix M's baselines from r = mean(class) - mean(other classes) at the
    label-predicting token: `steer` (h + a r, a = -2) or `directional_ablation` (h - r r^T h).
    """
    index = data.class_index(config.target)
    layer = middle_layer(model) if config.layer == -1 else config.layer
    read_before = 0.0 if activations is None else activations.seconds  # outside `timed`
    activations = _activations_for(model, tokenizer, data, layer, config, activations)
    h, labels = activations.h, activations.labels
    site = Site("resid_post", layer)
    steer = diffmean_artifact(
        model, model_name, site, h[labels == index], h[labels != index],
        activations.prompts_hash, "last", config.strength,
    )  # fmt: skip
    report = {"variant": config.kind, "dataset": data.name, "data_source": config.source}
    report["target"] = data.classes[index]
    provenance = dataclasses.replace(
        steer.provenance,
        method="class-steering",
        report={**steer.provenance.report, **report},
        seconds=read_before,
    )
    kind = config.kind
    if kind == "steer":
        return dataclasses.replace(steer, provenance=provenance)
    return Artifact(
        "directional_ablation", site, {"positions": "all"},
        {"direction": steer.tensors["vector"]}, steer.model, provenance,
    )  # fmt: skip
