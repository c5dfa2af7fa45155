"""The `lexicon` judge: an offline, deterministic proxy for the LLM judge of Unified Concept Editing
(A.5).

It rates a sentence by how densely it uses words that the NRC Emotion Lexicon (Mohammad and
Turney, 2013, shipped as JSON in the `nrclex` package) associates with the target emotion. It is
fast, needs no network and never fails to parse, so pipelines and tests can run end to end
without an API; its numbers are a proxy, and `usage()` says so (`"proxy": true`).

Score formula (integer 0-10, like the LLM judge's):
    tokens = maximal runs of letters (with inner apostrophes), lower-cased
    hits   = tokens whose lexicon entry lists the emotion's NRC category
    score  = min(10, round_half_up(10 * (hits / len(tokens)) / 0.25)),  0 for no tokens
so one emotion word in every four saturates the scale. A token missing from the lexicon is
looked up again under a few regular English base forms (hated -> hate, slammed -> slam,
angrily -> angry): the lexicon lists mostly base forms. nrclex's own text path needs NLTK
downloads; the JSON is read directly, without importing nrclex.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ce_bench.judge.base import Judge, Rating
from ce_bench.judge.prompt import MAX_SCORE
from ce_bench.judge.registry import register_judge

# Unified Concept Editing's six emotions -> the NRC lexicon's category names.
NRC_CATEGORY = {
    "happiness": "joy",
    "sadness": "sadness",
    "anger": "anger",
    "fear": "fear",
    "surprise": "surprise",
    "disgust": "disgust",
}
SATURATION_DENSITY = 0.25
LEXICON_FILE = Path("data") / "nrc_en.json"

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*")
# (suffix, replacement), tried in order after the word itself; the first form in the lexicon wins.
_SUFFIXES = (
    ("ies", "y"),
    ("ied", "y"),
    ("ily", "y"),
    ("es", ""),
    ("s", ""),
    ("ed", "e"),
    ("ed", ""),
    ("ing", "e"),
    ("ing", ""),
    ("ly", ""),
)
_MIN_STEM = 3


@functools.cache
def nrc_lexicon() -> dict[str, frozenset[str]]:
    """word -> NRC categories, read from the JSON inside the installed `nrclex` package."""
    spec = importlib.util.find_spec("nrclex")  # finds the package without running its __init__
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the lexicon judge needs the NRC lexicon: pip install nrclex")
    path = Path(spec.origin).parent / LEXICON_FILE
    with path.open(encoding="utf-8") as file:
        return {word: frozenset(categories) for word, categories in json.load(file).items()}


def base_forms(word: str) -> Iterator[str]:
    """`word`, then candidate base forms from regular English suffixes (slammed -> slam)."""
    yield word
    for suffix, replacement in _SUFFIXES:
        stem = word.removesuffix(suffix)
        if stem == word or len(stem) < _MIN_STEM:
            continue
        yield stem + replacement
        if not replacement and stem[-1] == stem[-2]:
            yield stem[:-1]


def word_categories(word: str, lexicon: dict[str, frozenset[str]]) -> frozenset[str]:
    """The NRC categories of `word`'s first base form that the lexicon lists; empty if none."""
    for form in base_forms(word):
        if form in lexicon:
            return lexicon[form]
    return frozenset()


def lexicon_score(text: str, emotion: str) -> int:
    """The 0-10 degree of `emotion` in `text` by the formula in this module's docstring."""
    if emotion not in NRC_CATEGORY:
        raise ValueError(
            f"the lexicon judge knows the emotions {', '.join(NRC_CATEGORY)}; got {emotion!r}"
        )
    category, lexicon = NRC_CATEGORY[emotion], nrc_lexicon()
    tokens = _TOKEN.findall(text.lower())
    if not tokens:
        return 0
    hits = sum(category in word_categories(token, lexicon) for token in tokens)
    scaled = MAX_SCORE * (hits / len(tokens)) / SATURATION_DENSITY
    return min(MAX_SCORE, math.floor(scaled + 0.5))


@register_judge
class LexiconJudge(Judge):
    """Scores each sentence on its own with `lexicon_score`; both orders agree by construction.

    Example:
        >>> make_judge("lexicon").compare("anger", "I walked home.", "I was furious.").edited
        10.0
    """

    name = "lexicon"

    def rate(self, emotion: str, first: str, second: str) -> Rating:
        return Rating((lexicon_score(first, emotion), lexicon_score(second, emotion)))

    def describe(self) -> dict[str, Any]:
        return {
            "proxy": True,
            "lexicon": f"NRC Emotion Lexicon (nrclex {importlib.metadata.version('nrclex')})",
            "saturation_density": SATURATION_DENSITY,
        }
