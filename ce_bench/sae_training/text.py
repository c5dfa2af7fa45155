"""Training text for SAEs, all available offline: the project's own and the model's own.

The project's text is the emotion scenarios, `examples/` and the shipped task data (questions,
choices, contexts). The model's own text is continuations it samples from short prompts (the
benchmark's emotion prompts, open-ended prompts, generic openers, chat requests): the activations
an SAE clamp edits during generation come from that distribution.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ce_bench.runtime import ce_bench_home, task_dir

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Task data in the corpus, named so that data added for later tasks does not silently change
# what a fresh machine trains (cached SAEs are keyed by settings, not by text).
CORPUS_TASK_DATA = ("general/data", "paired/data")
HELD_OUT_ONE_IN = 10  # documents whose hash is 0 modulo this are evaluation-only
TOP_P = 0.95
GENERATION_BATCH = 64  # prompts sampled together (larger batches waste less time per token)

OPENERS = (
    "Once upon a time, in a small village by the sea,",
    "The best way to learn a new language is",
    "Yesterday I went to the market and",
    "In today's news, officials announced that",
    "Dear diary, today was",
    "The history of the Roman Empire begins",
    "To make a good cup of coffee, you",
    "Scientists have recently discovered that",
    "My favourite memory from childhood is",
    "The instructions for assembling the shelf say",
    "When I opened the door, I saw",
    "The main causes of the First World War were",
    "Here are three tips for staying productive:",
    "The football match ended with",
    "She looked at the letter and",
    "Photosynthesis is the process by which",
    "The review of the new restaurant said",
    "He had never been so",
    "In mathematics, a prime number is",
    "The customer called the support line because",
)
CHAT_REQUESTS = (
    "Write a short poem about the ocean.",
    "How do I boil an egg?",
    "Tell me a joke about computers.",
    "What should I pack for a weekend trip?",
    "Explain why the sky is blue.",
    "Give me advice for a job interview.",
    "Describe your ideal weekend.",
    "Summarise the plot of a fairy tale you know.",
    "I failed my exam today. What should I do?",
    "Write a thank-you note to a neighbour.",
)


@dataclass(frozen=True)
class Corpus:
    """Documents to train on and held-out documents to evaluate on."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]


def project_texts() -> list[str]:
    """The project's own text: emotion scenarios, example sentences, shipped task data."""
    texts = list(_scenarios())
    for path in sorted(EXAMPLES.glob("*.txt")):
        texts.extend(line.strip() for line in path.read_text().splitlines() if line.strip())
    for path in sorted(p for d in CORPUS_TASK_DATA for p in (task_dir() / d).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                texts.append("\n".join(dict.fromkeys(_prose(json.loads(line)))))
    return [text for text in dict.fromkeys(texts) if text]


def generation_prompts(tokenizer: Any) -> list[str]:
    """Short prompts for the model's own text: emotion prompts as the benchmark writes them,
    the shipped open-ended prompts, generic openers and chat requests."""
    from ce_bench.emotions import TEMPLATES

    prompts = list(OPENERS)
    prompts.extend(TEMPLATES[i % len(TEMPLATES)].fill(s) for i, s in enumerate(_scenarios()))
    for path in sorted(task_dir().glob("paired/data/*.jsonl")):
        prompts.extend(json.loads(line)["prompt"] for line in path.read_text().splitlines() if line)
    for request in CHAT_REQUESTS if tokenizer.chat_template else ():  # base models have none
        messages = [{"role": "user", "content": request}]
        prompts.append(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )
    return list(dict.fromkeys(prompts))


def model_texts(
    model: nn.Module,
    tokenizer: Any,
    model_name: str,
    count: int,
    new_tokens: int,
    temperature: float,
    seed: int,
    bf16: bool = False,
) -> list[str]:
    """Prompt + sampled continuation for `count` seeded prompts; cached per model, so the SAEs
    of every layer share them (`bf16`: sample under bf16 autocast)."""
    if count == 0:
        return []
    pool = generation_prompts(tokenizer)
    random.Random(seed).shuffle(pool)
    prompts = sorted(pool[:count], key=len)  # similar lengths batch together
    spec = {
        "model": model_name,
        "prompts": prompts,
        "new_tokens": new_tokens,
        "temperature": temperature,
        "top_p": TOP_P,
        "seed": seed,
    }
    cache = model_cache_dir(model_name) / f"text-{digest(spec)[:10]}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        texts = _sample(model, tokenizer, prompts, new_tokens, temperature)
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = cache.with_name(f".{cache.name}.{os.getpid()}")
    staging.write_text(json.dumps(texts))
    staging.replace(cache)
    return texts


@torch.no_grad()
def _sample(
    model: nn.Module, tokenizer: Any, prompts: list[str], new_tokens: int, temperature: float
) -> list[str]:
    tokenizer.padding_side = "left"
    texts = []
    for start in tqdm(range(0, len(prompts), GENERATION_BATCH), desc="sampling text"):
        batch = prompts[start : start + GENERATION_BATCH]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc,
            max_new_tokens=new_tokens,
            do_sample=True,
            temperature=temperature,
            top_p=TOP_P,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        texts.extend(prompt + continuation for prompt, continuation in zip(batch, new, strict=True))
    return texts


def split_corpus(texts: Iterable[str]) -> Corpus:
    """A deterministic train / held-out split by document hash (about 1 in 10 held out)."""
    train, held_out = [], []
    for text in dict.fromkeys(texts):
        (held_out if int(digest(text), 16) % HELD_OUT_ONE_IN == 0 else train).append(text)
    return Corpus(tuple(train), tuple(held_out))


def model_cache_dir(model_name: str) -> Path:
    """Where a model's SAEs and sampled text are cached."""
    return ce_bench_home() / "saes" / model_name.strip("/").replace("/", "__")


def digest(value: Any) -> str:
    """SHA-256 of a JSON-serialisable value (cache keys, the held-out split)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _scenarios() -> Iterator[str]:
    """Every shipped emotion scenario; none (with a warning) while the set is not there."""
    from ce_bench.emotions import load_scenarios

    try:
        scenarios = load_scenarios()
    except FileNotFoundError as err:
        warnings.warn(f"SAE training text without emotion scenarios: {err}", stacklevel=3)
        return
    for items in scenarios.values():
        yield from items


def _prose(record: Any) -> Iterator[str]:
    """The text in a task record (questions, choices, contexts), not its ids or labels."""
    if isinstance(record, str):
        if len(record.split()) >= 2 or (record.isalpha() and len(record) >= 3):
            yield record
    elif isinstance(record, dict):
        for value in record.values():
            yield from _prose(value)
    elif isinstance(record, list):
        for value in record:
            yield from _prose(value)
