"""The second moment C = E[k k^T] of W_down's input at one layer, over a text corpus.

ROME inserts a fact with the update that changes W_down's outputs least on the keys it already
stores (ROME Eq. 2); C stands for those keys. It is estimated once per (model, layer, corpus,
token budget) and cached as safetensors under $CE_BENCH_HOME with the token count it saw.

The corpus is offline, as the SAE training's: the project's own text and text the model itself
sampled (`ce_bench.sae_training.text`, whose cache it shares); the paper's is Wikipedia.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ce_bench.artifacts import ModelIdentity
from ce_bench.sae_training.text import digest, model_cache_dir, model_texts, project_texts
from ce_bench.sae_training.train import SAESettings
from ce_bench.sites import Site, attach_hook

BATCH = 8
MAX_TEXT_TOKENS = 128  # each text is cut to this many tokens


def corpus(model: nn.Module, tokenizer: Any, model_name: str) -> list[str]:
    """The project's text and the model's own sampled text (shared with SAE training)."""
    settings = SAESettings()
    sampled = model_texts(
        model,
        tokenizer,
        model_name,
        settings.generated_texts,
        settings.generated_tokens,
        settings.temperature,
        settings.seed,
    )
    return project_texts() + sampled


def second_moment(
    model: nn.Module, tokenizer: Any, layer: int, max_tokens: int
) -> tuple[torch.Tensor, int]:
    """(C, tokens): E[k k^T] of the input of W_down at `layer`, float32 (d_mlp, d_mlp), over at
    most `max_tokens` tokens of `corpus`; cached per model (its folder name and a sample of its
    weights), layer, token budget and text."""
    model_name = Path(str(model.config.name_or_path)).name or model.config.model_type
    texts = corpus(model, tokenizer, model_name)
    identity = ModelIdentity.of(model, model_name)
    spec = {
        "model": asdict(identity),
        "layer": layer,
        "tokens": max_tokens,
        "text": digest(texts),
    }
    path = model_cache_dir(model_name) / f"mom2-layer{layer}-{digest(spec)[:10]}.safetensors"
    if path.is_file():
        return _load(path)
    total = torch.zeros(0)
    tokens = 0
    site = Site("mlp_act", layer)
    mask: torch.Tensor | None = None

    def accumulate(h: torch.Tensor) -> None:
        nonlocal total, tokens
        keys = h.detach().float()[mask].double()  # real tokens only
        total = keys.T @ keys + (total if total.numel() else 0)
        tokens += keys.shape[0]

    device = next(model.parameters()).device
    handle = attach_hook(model, site, accumulate)
    try:
        with torch.no_grad(), tqdm(total=max_tokens, desc=f"E[kk^T] at layer {layer}") as bar:
            for start in range(0, len(texts), BATCH):
                if tokens >= max_tokens:
                    break
                batch = tokenizer(
                    texts[start : start + BATCH],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=MAX_TEXT_TOKENS,
                ).to(device)
                mask = batch["attention_mask"].bool()
                before = tokens
                model(**batch)
                bar.update(tokens - before)
    finally:
        handle.remove()
    if tokens == 0:
        raise ValueError("no text to estimate W_down's key statistics from")
    moment = (total / tokens).float()
    _save(path, moment, tokens)
    return moment, tokens


def _save(path: Path, moment: torch.Tensor, tokens: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    save_file({"moment": moment.contiguous()}, str(staging), metadata={"tokens": str(tokens)})
    staging.replace(path)


def _load(path: Path) -> tuple[torch.Tensor, int]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tokens = int(f.metadata()["tokens"])
    return load_file(str(path))["moment"], tokens
