"""Read activations at a site for a list of texts (shared by every locate method)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ce_bench.sites import Site, attach_hook

Aggregate = Literal["last", "mean"]


@torch.no_grad()
def collect_activations(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    texts: list[str],
    site: Site,
    aggregate: Aggregate = "last",
    batch_size: int = 16,
    desc: str = "activations",
) -> torch.Tensor:
    """One float32 vector per text: the activation at `site` of its last token or token mean."""
    if aggregate not in ("last", "mean"):
        raise ValueError(f"aggregate must be 'last' or 'mean', got {aggregate!r}")
    captured: list[torch.Tensor] = []

    def record(h: torch.Tensor) -> None:
        captured.append(h.detach().float())

    handle = attach_hook(model, site, record)
    rows: list[torch.Tensor] = []
    device = next(model.parameters()).device
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False):
            batch = tokenizer(
                texts[start : start + batch_size], return_tensors="pt", padding=True
            ).to(device)
            captured.clear()
            model(**batch)
            acts, mask = captured[0], batch["attention_mask"].to(captured[0].device)
            weights = mask.float() if aggregate == "mean" else _last_mask(mask)
            rows.append((acts * weights[..., None]).sum(1) / weights.sum(1, keepdim=True))
    finally:
        handle.remove()
    return torch.cat(rows).cpu()


def _last_mask(mask: torch.Tensor) -> torch.Tensor:
    """One-hot over the last real token of each row, for left or right padding."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = (positions * mask).argmax(dim=1)
    return torch.nn.functional.one_hot(last, mask.shape[1]).float()
