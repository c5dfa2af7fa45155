"""Unified Concept Editing's four concept-editing methods, located for one emotion from the locate
split.

Each method registers under the name `ce-bench locate <name>` uses; all of them read the same
split (locate:validation:test = 1:1:2, A.8) and stamp the emotion and the split's hash into the
artifact, so the concept_emotion task and the analyses know what an artifact was made from.

Example:
    >>> data = EmotionData.load()
    >>> job = EmotionJob(model, tok, "smollm2-135m", data, "anger", layer=20)
    >>> art = locate_emotion("steering", job)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from ce_bench.artifacts import Artifact, data_hash, timed
from ce_bench.emotions import (
    EMOTIONS,
    NEUTRAL,
    TEMPLATES,
    Prompt,
    Split,
    emotion_prompts,
    load_scenarios,
    split_hash,
    split_scenarios,
)
from ce_bench.locate.activations import Aggregate, collect_activations
from ce_bench.locate.diffmean import DiffmeanConfig, diffmean_artifact
from ce_bench.locate.knowledge_neurons import KnowledgeNeuronsConfig, locate_knowledge_neurons
from ce_bench.locate.sae_features import SAEFeatureConfig, SAESource, locate_sae_feature
from ce_bench.locate.sft import SFTConfig, locate_sft
from ce_bench.sites import Site

PROBES = 3  # neutral prompts the Reinforcer continues


@dataclass(frozen=True)
class EmotionData:
    """The scenario split every method locates from."""

    splits: dict[str, Split]
    source: str  # where the scenarios came from ("shipped" or the user's path / URL)
    seed: int = 0

    @classmethod
    def load(cls, scenarios: str | None = None, seed: int = 0) -> EmotionData:
        return cls(split_scenarios(load_scenarios(scenarios), seed), scenarios or "shipped", seed)

    @property
    def hash(self) -> str:
        return split_hash(self.splits)

    def prompts(self, emotion: str, limit: int | None = None) -> list[Prompt]:
        """Every template of the first `limit` locate scenarios of `emotion`."""
        return emotion_prompts(emotion, self.splits[emotion].locate[:limit])

    def probes(self) -> list[str]:
        """Neutral prompts for the Reinforcer (the first template, which asks for a feeling)."""
        pool = self.splits.get(NEUTRAL) or self.splits[EMOTIONS[0]]
        return [TEMPLATES[0].fill(s) for s in pool.locate[:PROBES]]


@dataclass
class EmotionJob:
    """One method's inputs: the model, the data, the emotion and the layer."""

    model: nn.Module
    tokenizer: Any
    model_name: str
    data: EmotionData
    emotion: str
    layer: int
    limit: int | None = None  # locate scenarios per emotion (all if None)
    sae: SAESource | None = None  # for sae-features
    options: dict[str, Any] = field(default_factory=dict)  # method-specific keyword arguments
    # Residuals per (data split, layer, limit, aggregate, emotion): jobs on one model may share
    # it, so that steering for six emotions reads each emotion's prompts once, not five times.
    residuals: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)

    def residuals_of(self, emotion: str, aggregate: Aggregate) -> torch.Tensor:
        key = (self.data.source, self.data.seed, self.layer, self.limit, aggregate, emotion)
        if key not in self.residuals:
            texts = [p.text for p in self.data.prompts(emotion, self.limit)]
            site = Site("resid_post", self.layer)
            self.residuals[key] = collect_activations(
                self.model, self.tokenizer, texts, site, aggregate, desc=emotion
            )
        return self.residuals[key]


LOCATORS: dict[str, Callable[[EmotionJob], Artifact]] = {}


def register_locator(name: str) -> Callable[[Callable[[EmotionJob], Artifact]], Any]:
    def add(fn: Callable[[EmotionJob], Artifact]) -> Callable[[EmotionJob], Artifact]:
        if name in LOCATORS:
            raise ValueError(f"locate method {name!r} is already registered")
        LOCATORS[name] = fn
        return fn

    return add


@timed
def locate_emotion(method: str, job: EmotionJob) -> Artifact:
    """Run `method` for `job` and record the emotion, layer and split in the artifact."""
    if method not in LOCATORS:
        raise ValueError(f"unknown locate method {method!r}; known: {', '.join(LOCATORS)}")
    if job.emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {job.emotion!r}; expected one of {', '.join(EMOTIONS)}")
    artifact = LOCATORS[method](job)
    report = {
        **artifact.provenance.report,
        "emotion": job.emotion,
        "scenarios": job.data.source,
        "split_seed": job.data.seed,
        "split_hash": job.data.hash,
        "locate_scenarios": len(job.data.splits[job.emotion].locate[: job.limit]),
    }
    artifact.provenance = replace(artifact.provenance, method=method, report=report)
    return artifact


def method_config(config_cls: type[Any], method: str, **values: Any) -> Any:
    """`config_cls(**values)`; an option the method does not have is an error naming the ones it
    has (options come from CLI flags and sweep YAML, where a typo must not pass silently)."""
    known = [f.name for f in fields(config_cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{method}: unknown option {unknown[0]!r}; known: {', '.join(known)}")
    return config_cls(**values)


@register_locator("steering")
def _steering(job: EmotionJob) -> Artifact:
    """Mean residual of the emotion's prompts minus that of the other emotions' (Eq. 6)."""
    config = method_config(DiffmeanConfig, "steering", layer=job.layer, **job.options)
    others = [e for e in EMOTIONS if e != job.emotion]
    texts = {e: [p.text for p in job.data.prompts(e, job.limit)] for e in EMOTIONS}
    return diffmean_artifact(
        job.model,
        job.model_name,
        Site("resid_post", job.layer),
        job.residuals_of(job.emotion, config.aggregate),
        torch.cat([job.residuals_of(e, config.aggregate) for e in others]),
        data_hash("\n".join(texts[job.emotion]), "\n".join(t for e in others for t in texts[e])),
        config.aggregate,
        config.strength,
    )


@register_locator("sae-features")
def _sae_features(job: EmotionJob) -> Artifact:
    if job.sae is None:
        raise ValueError("sae-features needs an SAE: a local directory or a sae-lens release/id")
    config = method_config(SAEFeatureConfig, "sae-features", source=job.sae, **job.options)
    artifact = locate_sae_feature(
        job.model,
        job.tokenizer,
        job.data.prompts(job.emotion, job.limit),
        job.data.probes(),
        config,
        model_name=job.model_name,
    )
    if artifact.site.layer != job.layer:
        raise ValueError(f"the SAE reads layer {artifact.site.layer}, not layer {job.layer}")
    return artifact


def _on_prompts(
    method: str, locate: Callable[..., Artifact], config_cls: type[Any]
) -> Callable[[EmotionJob], Artifact]:
    """A locator for methods called as locate(model, tokenizer, prompts, config, model_name=)."""

    seeded = "seed" in {f.name for f in fields(config_cls)}

    def run(job: EmotionJob) -> Artifact:
        prompts = job.data.prompts(job.emotion, job.limit)
        # one seed per run: the split's seed also orders a method's own randomness (SFT batches)
        options = {"seed": job.data.seed, **job.options} if seeded else job.options
        config = method_config(config_cls, method, layer=job.layer, **options)
        return locate(job.model, job.tokenizer, prompts, config, model_name=job.model_name)

    return run


for _method, _locate, _config in (
    ("knowledge-neurons", locate_knowledge_neurons, KnowledgeNeuronsConfig),  # Eq. 1-3, A.8
    ("sft", locate_sft, SFTConfig),  # section 2, W_down only
):
    register_locator(_method)(_on_prompts(_method, _locate, _config))
