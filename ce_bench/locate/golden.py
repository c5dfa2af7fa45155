"""Prompt + golden answer batches (Unified Concept Editing A.2: locate with "prompt + golden answer"
data).

Several locate methods score how well the model produces a golden answer after a prompt with
teacher forcing: SFT trains on it, SAE attribution differentiates it (Eq. 9-10). This module
builds those batches once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ce_bench.artifacts import data_hash
from ce_bench.emotions import Prompt

IGNORE = -100


@dataclass
class GoldenBatch:
    """Right-padded prompt + " golden" rows; `labels` hold the answer tokens only."""

    input_ids: torch.Tensor  # (batch, seq)
    attention_mask: torch.Tensor
    labels: torch.Tensor  # IGNORE outside the answer
    last_prompt: torch.Tensor  # (batch,) index of each row's last prompt token


def golden_batch(  # type: ignore[no-untyped-def]
    tokenizer, pairs: Sequence[tuple[str, str]], device: torch.device
) -> GoldenBatch:
    """Rows of (prompt, answer) pairs, the answer after a space (" Paris"), as lm-eval scores
    a continuation. Prompt and answer are tokenised separately, so the boundary is exact for
    any tokenizer. An empty answer gives a plain text row with nothing to score."""
    rows, labels, last = [], [], []
    for text, golden in pairs:
        context = tokenizer(text, add_special_tokens=False)["input_ids"]
        answer = tokenizer(" " + golden, add_special_tokens=False)["input_ids"] if golden else []
        rows.append(context + answer)
        labels.append([IGNORE] * len(context) + answer)
        last.append(len(context) - 1)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def padded(values: list[list[int]], fill: int) -> torch.Tensor:
        return torch.tensor([v + [fill] * (width - len(v)) for v in values], device=device)

    return GoldenBatch(
        input_ids=padded(rows, pad),
        attention_mask=padded([[1] * len(r) for r in rows], 0),
        labels=padded(labels, IGNORE),
        last_prompt=torch.tensor(last, device=device),
    )


def golden_pairs(prompts: Sequence[Prompt]) -> list[tuple[str, str]]:
    return [(p.text, p.golden) for p in prompts]


def prompts_hash(prompts: Sequence[Prompt]) -> str:
    """The provenance hash of the prompt + golden answer pairs a method located from."""
    return data_hash(*(p.text + "\t" + p.golden for p in prompts))


def answer_nll(model: nn.Module, batch: GoldenBatch) -> torch.Tensor:
    """Per-row mean negative log-likelihood of the answer tokens (Unified Concept Editing Eq. 10's
    Loss)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    targets = batch.labels[:, 1:]
    nll = nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
    )
    counts = (targets != IGNORE).sum(1).clamp(min=1)
    return nll.sum(1) / counts


@contextmanager
def frozen_parameters(model: nn.Module, trainable: Sequence[torch.Tensor] = ()) -> Iterator[None]:
    """Only `trainable` requires grad inside the block (gradient methods need activation grads,
    not weight grads); every flag is restored afterwards."""
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in flags:
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def answer_logits(
    model: nn.Module, batch: GoldenBatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, target token, row) at each answer position of the batch, float32.

    Only the answer positions' last hidden states go through the unembedding (and Gemma-2's
    final logit soft-capping, where the config has one): the prompt positions' vocabulary-wide
    logits would cost as much again and are not needed.
    """
    hidden = model.base_model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask
    ).last_hidden_state
    labels = batch.labels[:, 1:]
    rows, cols = (labels != IGNORE).nonzero(as_tuple=True)
    logits = model.get_output_embeddings()(hidden[rows, cols]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, labels[rows, cols], rows


def all_answer_tokens_right(
    logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int
) -> torch.Tensor:
    """(n_rows,) bool from `answer_logits`: rows whose argmax is the answer token at every answer
    position, i.e. whose greedy continuation reproduces the answer."""
    wrong = torch.zeros(n_rows, device=logits.device)
    wrong.index_add_(0, rows, (logits.argmax(-1) != targets).float())
    return wrong == 0
