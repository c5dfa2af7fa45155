"""Teacher-forced scoring: how well a model produces an answer after a prompt.

One module for every place that scores or trains on (prompt, answer) pairs: locate methods
(SFT trains on them, SAE attribution differentiates them, Unified Concept Editing A.2), the
lifelong editors (their losses) and `edited_hf` (per-token scores for the lifelong metrics,
which lm-eval's (logprob, is_greedy) leaves out: Rel and Gen compare each position's argmax
with the target token, Loc compares the edited model's argmax with the unedited model's).

`score_tokens` runs rows of equal length together, so no row is padded: an editor that looks
at whole inputs (MicroEdit's ARD, GRACE's last prompt token) sees exactly the tokens of each row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

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
    model: nn.Module, batch: GoldenBatch, extra: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, target token, row) at each answer position of the batch, float32; with `extra`
    (row, position), that position's logits are appended as one more row (target -1).

    Only these positions' last hidden states go through the unembedding (and Gemma-2's final
    logit soft-capping, where the config has one): the prompt positions' vocabulary-wide
    logits would cost as much again and are not needed.
    """
    hidden = model.base_model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask
    ).last_hidden_state
    labels = batch.labels[:, 1:]
    rows, cols = (labels != IGNORE).nonzero(as_tuple=True)
    targets = labels[rows, cols]
    if extra is not None:
        rows = torch.cat([rows, rows.new_tensor([extra[0]])])
        cols = torch.cat([cols, cols.new_tensor([extra[1]])])
        targets = torch.cat([targets, targets.new_tensor([-1])])
    logits = model.get_output_embeddings()(hidden[rows, cols]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, targets, rows


def all_answer_tokens_right(
    logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int
) -> torch.Tensor:
    """(n_rows,) bool from `answer_logits`: rows whose argmax is the answer token at every answer
    position, i.e. whose greedy continuation reproduces the answer."""
    wrong = torch.zeros(n_rows, device=logits.device)
    wrong.index_add_(0, rows, (logits.argmax(-1) != targets).float())
    return wrong == 0


BATCH = 32


@dataclass(frozen=True)
class TokenScore:
    """One continuation scored with teacher forcing."""

    logprob: float  # sum of the continuation tokens' log-probabilities
    greedy: list[int]  # argmax token at each continuation position
    target: list[int]  # the continuation's tokens

    @property
    def accuracy(self) -> float:
        """Token-level accuracy: mean(argmax == target) over the continuation (Rel, Gen)."""
        return sum(g == t for g, t in zip(self.greedy, self.target, strict=True)) / len(self.target)

    @property
    def perplexity(self) -> float:
        """exp(mean negative log-likelihood of the continuation tokens)."""
        return float(torch.tensor(-self.logprob / len(self.target)).exp())

    def agreement(self, before: TokenScore) -> float:
        """Share of positions whose argmax equals `before`'s (Loc: edited vs unedited)."""
        return sum(a == b for a, b in zip(self.greedy, before.greedy, strict=True)) / len(
            self.greedy
        )

    def as_json(self) -> list:
        """The form stored in lm-eval's samples: [logprob, greedy, target]."""
        return [self.logprob, self.greedy, self.target]

    @classmethod
    def from_json(cls, value: Sequence) -> TokenScore:
        logprob, greedy, target = value
        return cls(float(logprob), list(greedy), list(target))


def score_tokens(
    pairs: Sequence[tuple[list[int], list[int]]],
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_length: int,
    device: torch.device,
) -> list[TokenScore]:
    """Score (context tokens, continuation tokens) pairs; `forward(input_ids, last_prompt)` returns
    logits (batch, seq, vocab) with `last_prompt` (batch,) the last context token of each row."""
    rows = []
    for context, continuation in pairs:
        if not continuation:
            raise ValueError("cannot score an empty continuation")
        whole = (context + continuation)[-(max_length + 1) :]
        rows.append((whole[:-1], len(whole) - 1 - len(continuation), continuation))
    by_length: dict[int, list[int]] = {}
    for i, (inputs, _, _) in enumerate(rows):
        by_length.setdefault(len(inputs), []).append(i)
    scores: list[TokenScore | None] = [None] * len(rows)
    for indices in by_length.values():
        for start in range(0, len(indices), BATCH):
            chunk = indices[start : start + BATCH]
            inputs = torch.tensor([rows[i][0] for i in chunk], device=device)
            last = torch.tensor([rows[i][1] for i in chunk], device=device)
            with torch.no_grad():
                logprobs = forward(inputs, last).float().log_softmax(-1)
            for row, i in zip(logprobs, chunk, strict=True):
                _, end, continuation = rows[i]
                span = row[end : end + len(continuation)]
                target = torch.tensor(continuation, device=device)
                scores[i] = TokenScore(
                    logprob=float(span.gather(-1, target[:, None]).sum()),
                    greedy=span.argmax(-1).tolist(),
                    target=list(continuation),
                )
    return scores  # type: ignore[return-value]
