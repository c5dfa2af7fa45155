"""Locate a concept's SAE feature: gradient attribution, then the Reinforcer (Unified Concept
Editing 3.1, A.1).

1. Attribution (Eq. 9-10): at the last prompt token, Attr_i = -c_i dLoss/dc_i, where c = the
   SAE code of the residual there and Loss = the mean cross-entropy of all golden tokens. The
   SAE sits in the forward pass with its error term added back, so the model computes exactly
   what it computes without it; only the gradient flows through the code.
2. Features are ranked by mean attribution over the locate prompts (inactive features have
   c_i = 0 and so attribution 0).
3. Reinforcer (A.1, Eq. 18-19): each of the top 10 is clamped to a large value while the model
   continues neutral prompts; the words it then repeats are the feature's interpretation.
4. The best-ranked candidate whose interpretation is the emotion (its word forms or synonyms)
   is chosen. If none is, the SAE "fails to locate" the concept at this layer, as Table 2's "-".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from ce_bench.artifacts import Artifact, ModelIdentity, Provenance
from ce_bench.emotions import Prompt, emotion_words
from ce_bench.interventions.sae import clamp_features, load_sae
from ce_bench.locate.activations import collect_activations
from ce_bench.locate.golden import golden_pairs, prompts_hash
from ce_bench.scoring import answer_nll, frozen_parameters, golden_batch
from ce_bench.sites import Site, attach_hook, site_from_hook_name

if TYPE_CHECKING:
    from sae_lens import SAE

TOP = 10  # candidates interpreted by the Reinforcer (Unified Concept Editing A.8)
REINFORCE_SCALE = 4.0  # clamp so that C * |W_dec[k]| is 4x the mean residual norm (Eq. 19)
REINFORCE_TOKENS = 12


class FeatureNotFound(RuntimeError):
    """No top candidate's interpretation names the concept (Table 2's "-")."""

    def __init__(self, emotion: str, candidates: list[Candidate]) -> None:
        listed = "; ".join(f"#{c.feature}: {' '.join(c.interpretation) or '?'}" for c in candidates)
        super().__init__(
            f"no SAE feature among the top {len(candidates)} reads as {emotion!r} ({listed})"
        )
        self.emotion, self.candidates = emotion, candidates


@dataclass(frozen=True)
class Candidate:
    """A top-ranked feature with its Reinforcer reading."""

    rank: int
    feature: int
    attribution: float  # mean Attr over the locate prompts (Eq. 9)
    interpretation: tuple[str, ...]  # the words it repeats when reinforced
    matches: bool  # whether one of them is the emotion or a synonym


@dataclass(frozen=True)
class SAESource:
    """Where the SAE comes from: a local sae-lens directory, or a release and id."""

    sae_path: str = ""
    sae_release: str = ""
    sae_id: str = ""


def feature_attributions(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    sae: SAE,
    prompts: Sequence[Prompt],
    batch_size: int = 8,
) -> torch.Tensor:
    """Attr = -c dLoss/dc at each prompt's last token (Unified Concept Editing Eq. 9-10): (prompts,
    d_sae)."""
    site = site_from_hook_name(model, sae.cfg.metadata.hook_name)
    device = next(model.parameters()).device
    rows: list[torch.Tensor] = []
    with frozen_parameters(model), torch.enable_grad():
        for start in tqdm(range(0, len(prompts), batch_size), desc="SAE attribution"):
            batch = golden_batch(
                tokenizer, golden_pairs(prompts[start : start + batch_size]), device
            )
            codes, handle = _codes_at_last_prompt_token(model, site, sae, batch.last_prompt)
            try:
                loss = answer_nll(model, batch).sum()  # rows are independent: sum keeps each
            finally:
                handle.remove()
            (grad,) = torch.autograd.grad(loss, codes[0])
            rows.append((-codes[0] * grad).detach().float().cpu())
    return torch.cat(rows)


def _codes_at_last_prompt_token(model, site: Site, sae: SAE, last: torch.Tensor):  # type: ignore[no-untyped-def]
    """Hook that routes the last prompt token's residual through the SAE as a leaf code."""
    codes: list[torch.Tensor] = []

    def edit(h: torch.Tensor) -> torch.Tensor:
        index = torch.arange(h.shape[0], device=h.device)
        picked = h[index, last]
        code = sae.encode(picked.to(sae.W_dec.dtype)).detach().requires_grad_(True)
        rec = sae.decode(code).to(h.dtype)
        new = h.clone()
        new[index, last] = rec + (picked - rec).detach()  # value of h, gradient through code
        codes.append(code)
        return new

    return codes, attach_hook(model, site, edit)


def interpret(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    sae: SAE,
    clamps: Sequence[tuple[int, float]],
    probes: Sequence[str],
    max_new_tokens: int = REINFORCE_TOKENS,
) -> list[tuple[str, ...]]:
    """The Reinforcer (Unified Concept Editing A.1): per (feature, C) in `clamps`, the words the
    model repeats with that feature clamped to C; the most repeated words (count >= 2), most
    frequent first.

    Every candidate's probes go in one batch, each row with its own clamp: on a CPU a decoding
    step costs about the same for thirty rows as for three.
    """
    site = site_from_hook_name(model, sae.cfg.metadata.hook_name)
    device = next(model.parameters()).device
    feature = torch.tensor([f for f, _ in clamps], device=device).repeat_interleave(len(probes))
    value = torch.tensor([c for _, c in clamps], device=device).repeat_interleave(len(probes))

    def clamp(h: torch.Tensor) -> torch.Tensor:
        edited = clamp_features(sae, h.to(sae.W_dec.dtype), feature, value, "replace")
        return edited.to(h.dtype)

    handle = attach_hook(model, site, clamp)
    try:
        texts = _greedy(model, tokenizer, list(probes) * len(clamps), max_new_tokens)
    finally:
        handle.remove()
    n = len(probes)
    return [_repeated_words(texts[i * n : (i + 1) * n]) for i in range(len(clamps))]


def _repeated_words(texts: Sequence[str]) -> tuple[str, ...]:
    counts = Counter(w for text in texts for w in re.findall(r"[a-z]+", text.lower()))
    return tuple(w for w, n in counts.most_common(3) if n >= 2)


@torch.no_grad()
def _greedy(model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[str]:  # type: ignore[no-untyped-def]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    batch = batch.to(next(model.parameters()).device)
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def names_emotion(words: Sequence[str], emotion: str) -> bool:
    """Whether any word is the emotion's word form or synonym, allowing simple inflections."""
    vocabulary = emotion_words(emotion)
    targets = set(vocabulary["concept"]) | set(vocabulary["synonyms"])
    forms = {t + suffix for t in targets for suffix in ("", "s", "d", "ed", "ing", "ly", "ness")}
    return any(w in forms for w in words)


@dataclass(frozen=True, kw_only=True)
class SAEFeatureConfig:
    """`locate_sae_feature`'s settings, Unified Concept Editing A.8's defaults."""

    source: SAESource  # the SAE; its hook fixes the layer
    top: int = TOP  # candidates interpreted by the Reinforcer
    reinforce_scale: float = REINFORCE_SCALE  # C * |W_dec[k]| in units of the mean residual norm

    def __post_init__(self) -> None:
        if self.top < 1:
            raise ValueError(f"top must be at least 1, got {self.top}")


def locate_sae_feature(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    prompts: Sequence[Prompt],
    probes: Sequence[str],
    config: SAEFeatureConfig,
    *,
    model_name: str,
) -> Artifact:
    """A `sae_clamp` artifact for the emotion of `prompts` (one emotion), or FeatureNotFound.

    `probes` are neutral prompts the Reinforcer continues. The artifact's default strength C is
    the residual-norm unit (C * |W_dec[k]| = mean |h| at the site); its provenance report has the
    candidate table, the per-prompt top-10 hit rate (Unified Concept Editing 4.2 reports 79.8%), and
    the unit.

    Example:
        >>> config = SAEFeatureConfig(source=SAESource(sae_path="saes/l20"))
        >>> prompts = emotion_prompts("anger", split["anger"].locate)
        >>> art = locate_sae_feature(model, tok, prompts, probes, config, model_name="smollm2-135m")
    """
    emotion = _one_emotion(prompts)
    sae = load_sae(config.source.sae_path, config.source.sae_release, config.source.sae_id)
    device = next(model.parameters()).device
    sae = sae.to(device)
    site = site_from_hook_name(model, sae.cfg.metadata.hook_name)
    attributions = feature_attributions(model, tokenizer, sae, prompts)
    ranked = attributions.mean(0).argsort(descending=True)[: config.top].tolist()
    unit = _residual_unit(model, tokenizer, site, prompts, sae)
    clamps = [(feature, config.reinforce_scale * float(unit[feature])) for feature in ranked]
    readings = interpret(model, tokenizer, sae, clamps, probes)
    candidates = [
        Candidate(
            rank,
            feature,
            float(attributions[:, feature].mean()),
            words,
            names_emotion(words, emotion),
        )
        for rank, (feature, words) in enumerate(zip(ranked, readings, strict=True), start=1)
    ]
    chosen = next((c for c in candidates if c.matches), None)
    if chosen is None:
        raise FeatureNotFound(emotion, candidates)
    per_prompt_top = attributions.argsort(dim=1, descending=True)[:, : config.top]
    hit_rate = float((per_prompt_top == chosen.feature).any(dim=1).float().mean())
    strength = float(unit[chosen.feature])
    params = {
        "feature": chosen.feature,
        "strength": strength,
        "mode": "replace",
        **asdict(config.source),
    }
    provenance = Provenance(
        method="sae-features",
        data_hash=prompts_hash(prompts),
        report={
            "emotion": emotion,
            "candidates": [asdict(c) for c in candidates],
            "chosen_rank": chosen.rank,
            "top10_hit_rate": hit_rate,
            "strength_unit": strength,
            "reinforce_scale": config.reinforce_scale,
            **_sae_seed(config.source),
        },
    )
    identity = ModelIdentity.of(model, model_name)
    return Artifact("sae_clamp", site, params, {}, identity, provenance)


def _one_emotion(prompts: Sequence[Prompt]) -> str:
    emotions = {p.emotion for p in prompts}
    if len(emotions) != 1:
        raise ValueError(f"locate one emotion at a time, got prompts for {sorted(emotions)}")
    return emotions.pop()


def _residual_unit(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    site: Site,
    prompts: Sequence[Prompt],
    sae: SAE,
) -> torch.Tensor:
    """Per feature, the C at which C * |W_dec[k]| equals the mean residual norm at the site."""
    h = collect_activations(model, tokenizer, [p.text for p in prompts], site, "last")
    return h.norm(dim=-1).mean() / sae.W_dec.detach().float().norm(dim=-1).cpu()


def _sae_seed(source: SAESource) -> dict[str, int]:
    """{"sae_seed": N} for an SAE ce-bench trained (its training report holds the seed), so the
    artifact names every seed it depends on; nothing for a published SAE."""
    from ce_bench.sae_training.train import REPORT_FILE, load_report

    if not source.sae_path or not (Path(source.sae_path) / REPORT_FILE).is_file():
        return {}
    seed = load_report(source.sae_path).get("settings", {}).get("seed")
    return {"sae_seed": seed} if isinstance(seed, int) else {}
