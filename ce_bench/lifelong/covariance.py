"""The second moment C = E[k k^T] of W_down's input at the edited layers, over a text corpus.

ROME inserts a fact with the update that changes W_down's outputs least on the keys it already
stores (ROME Eq. 2); C stands for those keys. It is estimated once per (model, layer, corpus,
token budget) and cached as safetensors under $CE_BENCH_HOME with the token count it saw.

The corpus is offline, as the SAE training's: the project's own text, then text the model itself
sampled (`ce_bench.sae_training.text`, whose cache it shares), which is sampled only when the
token budget reaches past the project's text; the paper's is Wikipedia.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ce_bench.artifacts import ModelIdentity
from ce_bench.runtime import model_cache_name
from ce_bench.sae_training.text import digest, model_cache_dir, project_texts
from ce_bench.sae_training.train import corpus_texts
from ce_bench.sites import Site, StopForward, attach_hook

BATCH = 8
MAX_TEXT_TOKENS = 128  # each text is cut to this many tokens


def second_moments(
    model: nn.Module, tokenizer: Any, layers: Sequence[int], max_tokens: int
) -> list[tuple[torch.Tensor, int]]:
    """(C, tokens) per layer: E[k k^T] of the input of W_down, float32 (d_mlp, d_mlp), over at
    most `max_tokens` tokens of `corpus_texts` (the project's text and the model's own, shared
    with SAE training), all layers from one pass that stops after the last of
    them; each cached per model (its folder name and a sample of its weights), layer, token
    budget and text."""
    model_name = model_cache_name(model)
    texts = texts_for(model, tokenizer, model_name, max_tokens)
    identity = asdict(ModelIdentity.of(model, model_name))
    paths = {
        layer: model_cache_dir(model_name)
        / f"mom2-layer{layer}-{digest([identity, layer, max_tokens, digest(texts)])[:10]}"
        f".safetensors"
        for layer in layers
    }
    missing = sorted(layer for layer, path in paths.items() if not path.is_file())
    if missing:
        for layer, (moment, tokens) in _estimate(
            model, tokenizer, texts, missing, max_tokens
        ).items():
            _save(paths[layer], moment, tokens)
    return [_load(paths[layer]) for layer in layers]


def texts_for(model: nn.Module, tokenizer: Any, model_name: str, max_tokens: int) -> list[str]:
    """The corpus C is estimated from: the project's text when its tokens (as `_estimate`
    reads them) fill the budget, else the project's and the model's sampled text (sampling
    192 texts costs about 45 s on 2 cores, so it is done only when needed)."""
    own = project_texts()
    counted = tokenizer(own, truncation=True, max_length=MAX_TEXT_TOKENS)["input_ids"]
    if sum(len(ids) for ids in counted) >= max_tokens:
        return own
    return corpus_texts(model, tokenizer, model_name)


def _estimate(
    model: nn.Module, tokenizer: Any, texts: list[str], layers: list[int], max_tokens: int
) -> dict[int, tuple[torch.Tensor, int]]:
    totals: dict[int, torch.Tensor] = {}
    mask: torch.Tensor | None = None
    last = layers[-1]

    def accumulate(layer: int) -> Callable[[torch.Tensor], None]:
        def hook(h: torch.Tensor) -> None:
            keys = h.detach()[mask].double()  # real tokens only
            totals[layer] = keys.T @ keys + totals.get(layer, 0)
            if layer == last:
                raise StopForward  # the layers above are not needed

        return hook

    device = next(model.parameters()).device
    handles = [attach_hook(model, Site("mlp_act", layer), accumulate(layer)) for layer in layers]
    tokens = 0
    desc = f"E[kk^T] at layers {', '.join(map(str, layers))}"
    counted = tokenizer(texts, truncation=True, max_length=MAX_TEXT_TOKENS)["input_ids"]
    expected = min(max_tokens, sum(len(ids) for ids in counted))  # the bar ends full
    try:
        with torch.no_grad(), tqdm(total=expected, desc=desc) as bar:
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
                with suppress(StopForward):
                    model(**batch, use_cache=False)
                tokens += int(mask.sum())
                bar.update(int(mask.sum()))
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise ValueError("no text to estimate W_down's key statistics from")
    return {layer: ((totals[layer] / tokens).float(), tokens) for layer in layers}


def _save(path: Path, moment: torch.Tensor, tokens: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    save_file({"moment": moment.contiguous()}, str(staging), metadata={"tokens": str(tokens)})
    staging.replace(path)


def _load(path: Path) -> tuple[torch.Tensor, int]:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("moment"), int(f.metadata()["tokens"])
