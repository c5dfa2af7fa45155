"""Request routing for `edited_hf`: which switch state each lm-eval request runs in, which
answers are reused, and where a scored row's context ends.

lm-eval hands a model one flat list of requests. ce-bench's tasks tag some of them
(`ce_bench.pairing`): OFF (the unedited half of a pair), a target class, per-token scores.
`in_groups` runs each group of equally tagged requests together and puts the answers back in
request order; `UneditedAnswers` serves switched-OFF answers computed before on the same model.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Hashable, MutableMapping, Sequence
from typing import Any

import torch
from lm_eval.api.instance import Instance

from ce_bench import pairing


def in_groups(
    requests: Sequence[Instance],
    state_of: Callable[[Instance], Hashable],
    answer: Callable[[Any, list[Instance]], list[Any]],
) -> list[Any]:
    """`answer(state, group)` for each group of requests with the same `state_of`, in order."""
    groups: dict[Hashable, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(state_of(request), []).append(i)
    results: list[Any] = [None] * len(requests)
    for state, indices in groups.items():
        for i, value in zip(indices, answer(state, [requests[i] for i in indices]), strict=True):
            results[i] = value
    return results


def once_per_prompt(
    requests: Sequence[Instance], generate: Callable[[list[Instance]], list[str]]
) -> tuple[list[str], bool]:
    """Generate each distinct greedy request once (sampled ones stay independent draws), without
    ce-bench's tags; returns the texts in request order and whether any request repeated."""
    plain = [untagged(r) for r in requests]
    keys = [
        json.dumps(r.args, sort_keys=True, default=str)
        if not r.args[1].get("do_sample")
        else str(i)
        for i, r in enumerate(plain)
    ]
    first = {key: i for i, key in reversed(list(enumerate(keys)))}
    unique = sorted(first.values())
    texts = generate([plain[i] for i in unique])
    by_key = dict(zip((keys[i] for i in unique), texts, strict=True))
    return [by_key[key] for key in keys], len(unique) < len(keys)


def tags_of(request: Instance) -> dict[str, Any]:
    """The ce-bench tags of a request, wherever its type keeps them."""
    args = request.args
    return pairing.tag_of(args[1] if request.request_type == "generate_until" else args)


def untagged(request: Instance) -> Instance:
    """The request as HFLM expects it: without ce-bench's tags."""
    clone = copy.copy(request)
    if request.request_type == "generate_until":
        context, gen_kwargs = request.args
        clone.arguments = (context, pairing.untagged_kwargs(gen_kwargs))
    else:
        clone.arguments = pairing.strip_tag(request.args)
    return clone


class UneditedAnswers:
    """Switched-OFF answers shared by several `edited_hf` models on one loaded model whose
    weights do not change between them (a sweep over strengths and methods computes each
    unedited answer once). `memo` None: nothing is shared."""

    def __init__(self, memo: MutableMapping[str, Any] | None) -> None:
        self.memo = memo

    def reuse(
        self, requests: list[Instance], compute: Callable[[list[Instance]], list[Any]]
    ) -> list[Any]:
        """`compute` the answers of `requests`, except switched-OFF ones already known; new
        switched-OFF answers are remembered."""
        memo = self.memo
        if memo is None:
            return compute(requests)
        keys = [self.key(r) for r in requests]
        todo = [i for i, key in enumerate(keys) if key is None or key not in memo]
        fresh = compute([requests[i] for i in todo]) if todo else []
        answers = {i: memo[key] for i, key in enumerate(keys) if key is not None and key in memo}
        for i, value in zip(todo, fresh, strict=True):
            answers[i] = value
            if keys[i] is not None:
                memo[keys[i]] = value
        return [answers[i] for i in range(len(requests))]

    @staticmethod
    def key(request: Instance) -> str | None:
        """The memo key of a switched-OFF request; None for any other (never reused)."""
        if pairing.is_enabled(tags_of(request)):
            return None
        return json.dumps([request.request_type, request.args], sort_keys=True, default=str)


class ContextEnds:
    """The index of the last context token of each row HFLM builds for loglikelihood requests.

    HFLM scores (context, continuation) as one row, (context + continuation)[:-1] cut to the
    model's length and right-padded with zeros into a batch; the row itself does not say where
    the context ends. This table, built from the requests before batching, finds it again from
    the row's tokens, so that `positions=last` edits the token that predicts the continuation.
    """

    def __init__(self, requests: list[tuple[Any, list[int], list[int]]], max_length: int) -> None:
        self.table: dict[tuple[int, ...], int] = {}
        for _, context, continuation in requests:
            row = tuple((context + continuation)[-(max_length + 1) :][:-1])
            self.table[row] = len(row) - len(continuation)

    def of(self, inps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch,) last-context indices and (batch,) unpadded lengths of a padded batch's rows."""
        ends, lengths = [], []
        for row in inps.tolist():
            used = len(row)
            while used and row[used - 1] == 0:  # right padding, or context tokens that are 0
                used -= 1
            length = next(
                (n for n in range(used, len(row) + 1) if tuple(row[:n]) in self.table), None
            )
            if length is None:
                raise RuntimeError("edited_hf: a scored row matches no loglikelihood request")
            ends.append(self.table[tuple(row[:length])])
            lengths.append(length)
        return torch.tensor(ends, device=inps.device), torch.tensor(lengths, device=inps.device)
