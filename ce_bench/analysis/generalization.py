"""Output generalisation (Unified Concept Editing section 4.4, Tables 3-4): does an edit move a
concept or a word?

For a prompt and an emotion, the model continues the prompt greedily for 20 steps, once unedited
and once with each artifact attached through the intervention core. At every step we read the
next-token distribution and take the probability of each word of Unified Concept Editing Table 3's
five kinds (concept, synonyms, antonyms, related, unrelated). A kind's number is the mean over its
words and the steps (and over prompts, when several are given).

A word is scored as the token `" " + word` (a word inside a sentence follows a space). Words the
tokenizer splits into several tokens are left out (`GeneralizationReport.dropped`): scoring them
by their first piece would measure a common prefix (" content" for "contentment"), not the word.

Example:
    >>> report = output_generalization(model, tok, "anger", {"SV": load_artifact("art/anger_sv")})
    >>> show(console, generalization_grid(report))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ce_bench.artifacts import Artifact, ArtifactError, check_model
from ce_bench.emotions import WORD_KINDS, emotion_words
from ce_bench.interventions import Switch, build_intervention, track_cache_offset
from ce_bench.kv_cache import cache_kwargs, returned_cache
from ce_bench.tables import Grid

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Unified Concept Editing 4.4's prompt
PAPER_PROMPT = "Your morning starts with your favorite breakfast. You feel"
STEPS = 20  # Unified Concept Editing 4.4: "the next 20 generated time steps"
ORIGINAL = "original"
RISES = ("concept", "synonyms", "related")  # Table 4: valid when the mean rises vs original
FALLS = ("antonyms",)  # valid when it falls; unrelated words get no mark


@dataclass(frozen=True)
class GeneralizationReport:
    """Table 4 as plain values.

    `probabilities[method][kind]` is the mean word probability; the first method is `original`.
    `marks[method][kind]` says whether the edit is valid for that kind (✓); only edited methods
    and the marked kinds (all but unrelated) appear.
    """

    emotion: str
    prompts: tuple[str, ...]
    steps: int
    words: dict[str, list[str]]  # the single-token words scored, per kind
    dropped: dict[str, list[str]]  # words left out because they are several tokens
    probabilities: dict[str, dict[str, float]]
    marks: dict[str, dict[str, bool]]


def output_generalization(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    emotion: str,
    artifacts: Mapping[str, Artifact],
    prompts: Sequence[str] = (PAPER_PROMPT,),
    steps: int = STEPS,
) -> GeneralizationReport:
    """Mean probability of each word kind over `steps` greedy steps, unedited and per artifact.

    Args:
        model: a causal LM in eval mode.
        tokenizer: its tokenizer.
        emotion: one of `ce_bench.emotions.EMOTIONS`; picks the word lists.
        artifacts: method name -> artifact; each is attached alone, then detached.
        prompts: averaged over; the default is Unified Concept Editing's example prompt.
        steps: generated steps per prompt.

    Example:
        >>> output_generalization(model, tok, "anger", {"NE": ne, "SAE": sae, "SV": sv})
    """
    if ORIGINAL in artifacts:
        raise ValueError(f"{ORIGINAL!r} names the unedited model; pick another method name")
    if not prompts or steps < 1:
        raise ValueError("need at least one prompt and one step")
    listed = emotion_words(emotion)
    token_ids = {kind: _single_tokens(tokenizer, listed[kind]) for kind in WORD_KINDS}
    words = {kind: list(token_ids[kind]) for kind in WORD_KINDS}
    dropped = {kind: [w for w in listed[kind] if w not in token_ids[kind]] for kind in WORD_KINDS}
    encoded = [tokenizer(p, return_tensors="pt").input_ids for p in prompts]
    probabilities = {ORIGINAL: _kind_means(model, encoded, token_ids, steps, None)}
    for name, artifact in artifacts.items():
        check_emotion(artifact, emotion)
        check_model(artifact, model)
        probabilities[name] = _kind_means(model, encoded, token_ids, steps, artifact)
    original = probabilities[ORIGINAL]
    marks = {
        name: {kind: _valid(kind, row[kind], original[kind]) for kind in (*RISES, *FALLS)}
        for name, row in probabilities.items()
        if name != ORIGINAL
    }
    return GeneralizationReport(
        emotion, tuple(prompts), steps, words, dropped, probabilities, marks
    )


def generalization_grid(report: GeneralizationReport) -> Grid:
    """The report laid out like Unified Concept Editing Table 4 (kinds down, methods across)."""
    title = f"Output generalisation: {report.emotion} ({report.steps} steps)"
    return Grid(title, ["Type", *report.probabilities], _rows(report))


def _single_tokens(tokenizer: PreTrainedTokenizerBase, words: list[str]) -> dict[str, int]:
    """word -> token id for the words whose " word" is one token (see the module docstring)."""
    ids = {}
    for word in words:
        pieces = tokenizer(" " + word, add_special_tokens=False).input_ids
        if len(pieces) == 1:
            ids[word] = pieces[0]
    return ids


def _kind_means(
    model: nn.Module,
    encoded: list[torch.Tensor],
    token_ids: dict[str, dict[str, int]],
    steps: int,
    artifact: Artifact | None,
) -> dict[str, float]:
    """Per kind, the mean word probability over words, steps and prompts, with `artifact` on."""
    totals = dict.fromkeys(token_ids, 0.0)
    with ExitStack() as stack:
        switch = Switch()
        if artifact is not None:
            for handle in build_intervention(artifact, model).attach(model, switch):
                stack.callback(handle.remove)
            stack.callback(track_cache_offset(model, switch).remove)
        for input_ids in encoded:
            with switch.generating(input_ids.shape[1]):
                probs = _greedy_distributions(model, input_ids, steps)
            for kind, ids in token_ids.items():
                totals[kind] += float(probs[:, list(ids.values())].mean()) if ids else math.nan
    return {kind: total / len(encoded) for kind, total in totals.items()}


@torch.no_grad()
def _greedy_distributions(model: nn.Module, input_ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Next-token distributions (steps, vocab) along the greedy continuation of one prompt.

    Every step is taken, EOS included, so each method is averaged over the same number of steps.
    """
    device = next(model.parameters()).device
    ids, past, dists = input_ids.to(device), None, []
    for _ in range(steps):
        out = model(input_ids=ids, use_cache=True, **cache_kwargs(model, past))
        dist = out.logits[0, -1].float().softmax(-1)
        dists.append(dist.cpu())
        past, ids = returned_cache(out), dist.argmax().view(1, 1)
    return torch.stack(dists)


def _valid(kind: str, edited: float, original: float) -> bool:
    return edited > original if kind in RISES else edited < original


def check_emotion(artifact: Artifact, emotion: str) -> None:
    """An artifact located for another emotion would be scored against the wrong word lists."""
    located = artifact.provenance.report.get("emotion")
    if located is not None and located != emotion:
        raise ArtifactError(
            artifact.source,
            "provenance.report.emotion",
            f"located for {located!r}, but the analysis is for {emotion!r}",
        )


def _rows(report: GeneralizationReport) -> list[list[str]]:
    rows = []
    for kind in WORD_KINDS:
        cells = [kind]
        for method, row in report.probabilities.items():
            mark = report.marks.get(method, {}).get(kind)
            suffix = "" if mark is None else (" ✓" if mark else " ×")
            cells.append(f"{row[kind]:.2E}{suffix}")
        rows.append(cells)
    return rows
