"""The emotion concept data of Unified Concept Editing: scenarios, prompt templates, golden answers
and the split.

Scenarios come in the RepE format (one JSON list of strings per emotion, `{emotion}.json`): the
project ships its own set under `ce_bench/data/emotions/`, and any RepE-format directory or URL
(for example the original RepE `data/emotions/`) loads unchanged.

Example:
    >>> scenarios = load_scenarios()                  # the shipped set
    >>> split = split_scenarios(scenarios)            # locate:validation:test = 1:1:2
    >>> prompts = emotion_prompts(split["anger"].locate)
"""

from __future__ import annotations

import hashlib
import json
import random
import urllib.request
from dataclasses import dataclass
from pathlib import Path

EMOTIONS = ("happiness", "sadness", "anger", "fear", "surprise", "disgust")
NEUTRAL = "neutral"
DATA_DIR = Path(__file__).parent / "data" / "emotions"
WORDS_FILE = Path(__file__).parent / "data" / "emotion_words.json"
WORD_KINDS = ("concept", "synonyms", "antonyms", "related", "unrelated")

# Golden answers (Unified Concept Editing A.4 "prompt + golden answer"): the word a template asks
# for.
ADJECTIVES = {
    "happiness": "happy",
    "sadness": "sad",
    "anger": "angry",
    "fear": "afraid",
    "surprise": "surprised",
    "disgust": "disgusted",
}


@dataclass(frozen=True)
class Template:
    """A prompt template; `answer` says whether it asks for the noun or the adjective."""

    text: str
    answer: str  # "noun" (anger) or "adjective" (angry)

    def fill(self, scenario: str) -> str:
        return self.text.format(scenario=scenario.strip().rstrip("."))

    def golden(self, emotion: str) -> str:
        return emotion if self.answer == "noun" else ADJECTIVES[emotion]


# Unified Concept Editing A.4 gives the first two; the rest are ours, in the same spirit.
TEMPLATES = (
    Template("{scenario}. You feel", "adjective"),
    Template("The scenario is: {scenario}. The emotion in the above scenario is", "noun"),
    Template("{scenario}. In this situation, you would feel", "adjective"),
    Template("Imagine this: {scenario}. The feeling it brings is", "noun"),
    Template("{scenario}. Describe how you feel:", "adjective"),
)


@dataclass(frozen=True)
class Prompt:
    """One prompt made from a scenario, with the golden answer for its emotion."""

    text: str
    emotion: str
    golden: str
    scenario: str


@dataclass(frozen=True)
class Split:
    """One emotion's scenarios split locate:validation:test = 1:1:2 (Unified Concept Editing
    A.8)."""

    locate: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]

    def part(self, name: str) -> tuple[str, ...]:
        if name not in ("locate", "validation", "test"):
            raise ValueError(f"split part must be locate, validation or test, got {name!r}")
        return getattr(self, name)


def load_scenarios(source: str | Path | None = None) -> dict[str, list[str]]:
    """Scenario lists per emotion (and `neutral` when the source has it) from a RepE directory.

    `source` is a local directory or an http(s) URL of one (each emotion read from
    `{source}/{emotion}.json`); None means the shipped set.
    """
    source = str(DATA_DIR if source is None else source)
    scenarios = {emotion: _read_list(source, emotion) for emotion in EMOTIONS}
    neutral = _read_list(source, NEUTRAL, required=False)
    if neutral:
        scenarios[NEUTRAL] = neutral
    return scenarios


def split_scenarios(scenarios: dict[str, list[str]], seed: int = 0) -> dict[str, Split]:
    """A seeded, deterministic 1:1:2 split of each emotion's scenarios."""
    splits = {}
    for emotion, items in scenarios.items():
        shuffled = list(items)
        random.Random(f"{seed}:{emotion}").shuffle(shuffled)
        quarter = len(shuffled) // 4
        splits[emotion] = Split(
            tuple(shuffled[:quarter]),
            tuple(shuffled[quarter : 2 * quarter]),
            tuple(shuffled[2 * quarter :]),
        )
    return splits


def split_hash(splits: dict[str, Split]) -> str:
    """A short hash of a split's contents, stored in artifacts and results."""
    payload = json.dumps(
        {e: [s.locate, s.validation, s.test] for e, s in sorted(splits.items())}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def emotion_prompts(
    emotion: str, scenarios: tuple[str, ...] | list[str], every_template: bool = True
) -> list[Prompt]:
    """Prompts for `emotion`'s scenarios: every template per scenario (for locating, so what is
    found does not hang on one template), or one template each in turn (for evaluation)."""
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")
    prompts = []
    for i, scenario in enumerate(scenarios):
        templates = TEMPLATES if every_template else (TEMPLATES[i % len(TEMPLATES)],)
        for template in templates:
            prompts.append(
                Prompt(template.fill(scenario), emotion, template.golden(emotion), scenario)
            )
    return prompts


def emotion_words(emotion: str) -> dict[str, list[str]]:
    """The shipped word lists of an emotion (Unified Concept Editing Table 3): concept word forms,
    synonyms, antonyms, related and unrelated words."""
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")
    words = json.loads(WORDS_FILE.read_text())[emotion]
    return {kind: list(words[kind]) for kind in WORD_KINDS}


def _read_list(source: str, name: str, required: bool = True) -> list[str]:
    location = f"{source.rstrip('/')}/{name}.json"
    try:
        if source.startswith(("http://", "https://")):
            with urllib.request.urlopen(location, timeout=30) as response:  # noqa: S310
                raw = response.read().decode()
        else:
            path = Path(location)
            if not path.is_file():
                if required:
                    raise FileNotFoundError(
                        f"{location}: not found (a RepE-format directory has"
                        f" one {{emotion}}.json per emotion: {', '.join(EMOTIONS)})"
                    )
                return []
            raw = path.read_text()
    except OSError as err:
        if required:
            raise FileNotFoundError(f"cannot read {location}: {err}") from err
        return []
    items = json.loads(raw)
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise ValueError(f"{location}: expected a JSON list of strings (RepE format)")
    return [x.strip() for x in items if x.strip()]
