"""Supervised fine-tuning of one W_down (Unified Concept Editing section 2, "Supervised
Fine-tuning").

Every parameter is frozen except W_down of layer L; the model is trained on prompt + golden
answer pairs with the loss on the answer tokens only, and the artifact stores W_sft - W as a
`weight_delta`. The model passed in is left exactly as it was.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ce_bench.artifacts import Artifact, ModelIdentity, Provenance
from ce_bench.emotions import Prompt
from ce_bench.locate.golden import golden_pairs, prompts_hash
from ce_bench.scoring import answer_nll, frozen_parameters, golden_batch
from ce_bench.sites import Site, module_path

# The paper gives no SFT hyperparameters; these train W_down of the embedded model to put
# clear mass on the golden answers in a few hundred steps on CPU.
DEFAULT_LR = 1e-4
DEFAULT_EPOCHS = 2
DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """`locate_sft`'s settings."""

    layer: int  # W_down of this layer is the only weight that trains
    lr: float = DEFAULT_LR
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0  # the order of the batches

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")


def locate_sft(
    model: nn.Module,
    tokenizer,  # type: ignore[no-untyped-def]
    prompts: Sequence[Prompt],
    config: SFTConfig,
    *,
    model_name: str,
) -> Artifact:
    """A `weight_delta` artifact: W_down(config.layer) after fine-tuning on `prompts` minus
    before.

    Example:
        >>> prompts = emotion_prompts("anger", split["anger"].locate)
        >>> art = locate_sft(model, tok, prompts, SFTConfig(layer=20), model_name="smollm2-135m")
    """
    if not prompts:
        raise ValueError("sft needs at least one prompt")
    site = Site("mlp_act", config.layer)
    weight = model.get_submodule(module_path(model, site)).weight
    original = weight.detach().clone()
    losses: list[float] = []
    optimiser = torch.optim.Adam([weight], lr=config.lr)
    order, rng = list(range(len(prompts))), random.Random(config.seed)
    steps = config.epochs * ((len(order) + config.batch_size - 1) // config.batch_size)
    try:
        model.train(False)  # no dropout: the fine-tune should be deterministic
        with frozen_parameters(model, [weight]), tqdm(total=steps, desc="sft W_down") as bar:
            for _ in range(config.epochs):
                rng.shuffle(order)
                for start in range(0, len(order), config.batch_size):
                    batch = [prompts[i] for i in order[start : start + config.batch_size]]
                    loss = answer_nll(
                        model, golden_batch(tokenizer, golden_pairs(batch), weight.device)
                    ).mean()
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    losses.append(loss.item())
                    bar.update()
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
        delta = weight.detach().float() - original.float()
    finally:
        with torch.no_grad():
            weight.copy_(original)
    return Artifact(
        kind="weight_delta",
        site=site,
        params={"strength": 1.0},
        tensors={"delta": delta.cpu()},
        model=ModelIdentity.of(model, model_name),
        provenance=Provenance(
            method="sft",
            data_hash=prompts_hash(prompts),
            report={
                "lr": config.lr,
                "epochs": config.epochs,
                "batch_size": config.batch_size,
                "seed": config.seed,
                "prompts": len(prompts),
                "first_loss": losses[0],
                "last_loss": losses[-1],
            },
        ),
    )
