"""Few-shot classification data for class erasure (NeuronLens): datasets, classes, prompts.

Five datasets, each with its hub id and a small offline set the project
wrote in the same schema (`tasks/erasure/data/<name>/{train,test}.jsonl`, 24 + 16 examples per
class; 20 + 12 for DBpedia-14). A decoder LM classifies by continuing a few-shot prompt (NeuronLens
Appendix H) with a label word; the prediction is the most likely label. The erasure task, the
range locator and the report all build their prompts here, so the hidden state a range was
measured on is the one the task edits.

Example:
    >>> data = DATASETS["agnews"]
    >>> train = load_examples(data, "train")
    >>> few_shot_prompt(data, "Stocks fell sharply on Monday ...", train)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ce_bench.runtime import task_dir

DEFAULT_SHOTS = 4  # labelled examples in each prompt (NeuronLens H: "a small number")
SHOT_SEED = 0


@dataclass(frozen=True)
class ClassDataset:
    """A classification dataset as the erasure tasks use it."""

    name: str
    hub_id: str
    classes: tuple[str, ...]  # class names in label order, as the hub dataset names them
    words: tuple[str, ...]  # the word the model answers with, per class
    item: str  # what one example is called in the prompt ("Article")
    answer: str  # what its label is called ("Topic")
    fields: tuple[str, ...] = ("text",)  # record fields joined into the example's text

    def class_index(self, name: str) -> int:
        """The label of a class given by its name or its answer word (case-insensitive)."""
        for names in (self.classes, self.words):
            lowered = [n.lower() for n in names]
            if name.lower() in lowered:
                return lowered.index(name.lower())
        raise ValueError(
            f"unknown class {name!r} for {self.name}; valid: {', '.join(self.classes)}"
            + ("" if self.words == self.classes else f" (or {', '.join(self.words)})")
        )

    def text_of(self, record: dict[str, Any]) -> str:
        return ". ".join(str(record[f]).strip() for f in self.fields)


DATASETS: dict[str, ClassDataset] = {
    d.name: d
    for d in (
        ClassDataset(
            "agnews",
            "fancyzhx/ag_news",
            ("World", "Sports", "Business", "Sci/Tech"),
            ("World", "Sports", "Business", "Technology"),
            "Article",
            "Topic",
        ),
        ClassDataset(
            "emotion",
            "dair-ai/emotion",
            ("sadness", "joy", "love", "anger", "fear", "surprise"),
            ("sadness", "joy", "love", "anger", "fear", "surprise"),
            "Text",
            "Emotion",
        ),
        ClassDataset(
            "dbpedia14",
            "fancyzhx/dbpedia_14",
            (
                "Company",
                "EducationalInstitution",
                "Artist",
                "Athlete",
                "OfficeHolder",
                "MeanOfTransportation",
                "Building",
                "NaturalPlace",
                "Village",
                "Animal",
                "Plant",
                "Album",
                "Film",
                "WrittenWork",
            ),  # fmt: skip
            (
                "Company",
                "School",
                "Artist",
                "Athlete",
                "Politician",
                "Vehicle",
                "Building",
                "Nature",
                "Village",
                "Animal",
                "Plant",
                "Album",
                "Film",
                "Book",
            ),  # fmt: skip
            "Entry",
            "Category",
            fields=("title", "content"),
        ),
        ClassDataset(
            "imdb",
            "stanfordnlp/imdb",
            ("neg", "pos"),
            ("negative", "positive"),
            "Review",
            "Sentiment",
        ),
        ClassDataset(
            "sst2",
            "stanfordnlp/sst2",
            ("negative", "positive"),
            ("negative", "positive"),
            "Review",
            "Sentiment",
            fields=("sentence",),
        ),
    )
}


@dataclass(frozen=True)
class Example:
    text: str
    label: int


def dataset(name: str) -> ClassDataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_examples(data: ClassDataset, split: str, source: str = "shipped") -> list[Example]:
    """`split` (train or test) of the shipped offline set, or of the hub dataset (`hub`)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    if source == "hub":
        import datasets

        records: list[dict[str, Any]] = list(datasets.load_dataset(data.hub_id, split=split))
    elif source == "shipped":
        path = shipped_dir() / data.name / f"{split}.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        raise ValueError(f"data source must be shipped or hub, got {source!r}")
    return [Example(data.text_of(r), int(r["label"])) for r in records]


def shipped_dir() -> Path:
    return task_dir() / "erasure" / "data"


def choose_shots(
    data: ClassDataset, train: list[Example], shots: int = DEFAULT_SHOTS, seed: int = SHOT_SEED
) -> list[Example]:
    """`shots` training examples, classes taken in turn, in a seeded order."""
    rng = random.Random(seed)
    by_class = [[e for e in train if e.label == c] for c in range(len(data.classes))]
    for examples in by_class:
        rng.shuffle(examples)
    chosen = [
        by_class[i % len(by_class)][i // len(by_class)]
        for i in range(shots)
        if i // len(by_class) < len(by_class[i % len(by_class)])
    ]
    rng.shuffle(chosen)
    return chosen


def few_shot_prompt(data: ClassDataset, text: str, shots: list[Example]) -> str:
    """The prompt whose last token predicts the label word (NeuronLens Appendix H)."""
    header = f"Classify each {data.item.lower()}. Answer with one of: {', '.join(data.words)}."
    blocks = [f"{data.item}: {s.text}\n{data.answer}: {data.words[s.label]}" for s in shots]
    return "\n\n".join([header, *blocks, f"{data.item}: {text}\n{data.answer}:"])
