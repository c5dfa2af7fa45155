"""`ce-bench inject-facts`: fine-tune a model until it has memorised the private facts.

Knowledge Microscope erases private knowledge that was first put into the model by incremental
fine-tuning on PrivacyParaRel. This module does the same with the project's fact set
(`ce_bench.private_facts`): it trains on "training prompt + ' ' + value" of every fact and of every
control (so that Locality is measured on facts the model knows too) until the greedy continuation of
every training prompt is its value, or a step limit.

How, and why (numbers measured on SmolLM2-135M with one CPU thread, the machine shared):
- Only the MLP (gate, up and down projections) of one layer trains by default, layer 20 of 30
  (two thirds of the depth; where the project has an SAE and where the erasers act). Trained
  into the MLPs of the upper half (layers 15-29), the facts are stored redundantly: zeroing the
  whole W_down of one layer then erased 7-36% of them (layers 15, 18, 20, 22, 25, 27; 12% at
  20), 60% at the last one while control recall fell from 0.77 to 0.31, and FeatureEdit and
  knowledge-neuron zeroing at layer 20 erased none: the comparison measured nothing. Written
  into layer 20 alone, zeroing its W_down erases every fact, and the erasers differ in how much
  of that they reach and what else they break. The price: the facts do not generalise to
  paraphrases much (7% of them are answered, 40% with the upper half), so Generalization is
  measured on few prompts. `first_layer` / `last_layer` choose other layers.
- Only the answer tokens reach the output layer (`answer_logits`): the prompt positions'
  49k-way logits cost a quarter of a forward pass and are not needed.
- Rows are batched by length (less padding) in batches of 32, the batches in a seeded random
  order each epoch; Adam without weight decay. On one layer lr 1e-3 needed 117 steps (530 s) to
  memorise the shipped set's 85 training prompts, lr 3e-3 (the default) 78 steps (323 s);
  the upper half took 48 steps at 1e-3.
- "Memorised" is the teacher-forced check: the argmax at every value position is the value's
  token, which is exactly when greedy decoding reproduces the value (and what `privacy_erasure`
  measures). It is read off each training forward for free; once an epoch passes for every row,
  one forward without gradients over all rows confirms it (later batches' updates can undo
  earlier ones).

The result is a normal Hugging Face model folder (default `$CE_BENCH_HOME/models/<model>-private`)
with `inject_report.json`: settings, steps, time, final memorisation on the training prompts and
on the paraphrases. A second call with the same model, data and settings reuses it.

Example:
    >>> path = inject_facts()                  # minutes on two CPU cores, then cached
    >>> json.loads((path / REPORT_FILE).read_text())["memorised"]["facts"]
    1.0
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ce_bench.embedded import load_model
from ce_bench.private_facts import FactSet, load_fact_set
from ce_bench.runtime import EMBEDDED_NAME, ce_bench_home, free_cores, torch_threads
from ce_bench.sae_training.text import digest
from ce_bench.sae_training.train import publish
from ce_bench.scoring import (
    GoldenBatch,
    all_answer_tokens_right,
    answer_logits,
    frozen_parameters,
    golden_batch,
)
from ce_bench.sites import Site, model_dims, module_path

__all__ = ["InjectSettings", "default_out", "inject_facts", "memorised", "train_until_memorised"]

REPORT_FILE = "inject_report.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class InjectSettings:
    """Everything besides the model and the data that determines the injected model."""

    lr: float = 3e-3
    max_steps: int = 150  # optimizer steps at most (the run stops earlier once memorised)
    batch_size: int = 32  # rows per step
    first_layer: int | None = None  # MLPs of first_layer..last_layer train; None: 2/3 depth
    last_layer: int | None = None  # None: first_layer (one layer)
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("max_steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("first_layer", "last_layer"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"{name} must be a layer index >= 0, got {value!r}")


def default_out(model: str) -> Path:
    """`$CE_BENCH_HOME/models/<model name>-private`."""
    name = Path(model.rstrip("/")).name if model != EMBEDDED_NAME else model
    return ce_bench_home() / "models" / f"{name}-private"


def inject_facts(
    model: str = EMBEDDED_NAME,
    out: Path | None = None,
    settings: InjectSettings | None = None,
    data: FactSet | None = None,
    device: str | None = None,
    force: bool = False,
) -> Path:
    """Fine-tune `model` on the fact set and save it; returns the model folder.

    A folder already holding this model, data and settings is returned as is unless `force`; a
    folder holding something else is replaced only if it is an earlier injection.
    """
    settings = settings or InjectSettings()
    data = data or load_fact_set()
    target = Path(out) if out is not None else default_out(model)
    spec = {"format": FORMAT_VERSION, "model": model, "data": data.digest, **asdict(settings)}
    key = digest(spec)[:16]
    report_path = target / REPORT_FILE
    if report_path.is_file() and not force:
        if json.loads(report_path.read_text()).get("key") == key:
            return target
    elif target.exists() and any(target.iterdir()) and not report_path.is_file():
        raise FileExistsError(
            f"{target} exists and is not an injected model (no {REPORT_FILE}); choose another --out"
        )
    try:
        lm, tokenizer = load_model(model, device)
    except OSError as err:
        raise FileNotFoundError(
            f"{model}: not a model folder nor a loadable hub id ({err})"
        ) from err
    started = time.monotonic()
    with torch_threads(free_cores()):
        threads = torch.get_num_threads()
        stats = train_until_memorised(lm, tokenizer, data, settings)
    report = {
        "key": key,
        "base_model": model,
        "data": data.digest,
        "settings": asdict(settings),
        **stats,
        "threads": threads,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        lm.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        publish(staging, target, REPORT_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def train_until_memorised(
    model: nn.Module,
    tokenizer: Any,
    data: FactSet,
    settings: InjectSettings,
    progress: bool = True,
) -> dict[str, Any]:
    """Train in place until every training prompt's greedy continuation is its value (or
    `settings.max_steps`); returns the statistics `inject_report.json` holds. The model is in
    eval mode afterwards."""
    device = model.get_input_embeddings().weight.device
    pairs = data.training_pairs()
    layers = trained_layers(model, settings.first_layer, settings.last_layer)
    trained = mlp_parameters(model, layers)
    batches = _length_batches(tokenizer, pairs, settings.batch_size, device)
    optimizer = torch.optim.Adam(trained, lr=settings.lr)
    order = random.Random(settings.seed)
    losses: list[float] = []
    steps = epochs = 0
    done = False
    bar = tqdm(total=settings.max_steps, desc="injecting facts", disable=not progress)
    model.train()
    try:
        with frozen_parameters(model, trained):
            while not done and steps < settings.max_steps:
                epochs += 1
                passed = 0
                for batch in order.sample(batches, len(batches)):
                    if steps == settings.max_steps:
                        break
                    logits, targets, rows = answer_logits(model, batch)
                    loss = nn.functional.cross_entropy(logits, targets)
                    passed += int(
                        all_answer_tokens_right(logits, targets, rows, len(batch.input_ids)).sum()
                    )
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    steps += 1
                    losses.append(round(loss.item(), 4))
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=epochs)
                if passed == len(pairs):  # confirm without dropout and after every update
                    model.eval()
                    done = bool(memorised(model, tokenizer, pairs).all())
                    model.train()
    finally:
        bar.close()
        model.eval()
    facts, controls = data.facts, data.controls
    paraphrases = [(p, f.value) for f in facts for p in f.paraphrases]
    control_paraphrases = [(p, f.value) for f in controls for p in f.paraphrases]
    return {
        "steps": steps,
        "epochs": epochs,
        "memorised_all": done,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "trained_layers": [layers[0], layers[-1]],
        "trained_parameters": sum(p.numel() for p in trained),
        "memorised": {
            "facts": _rate(model, tokenizer, [(f.training_prompt, f.value) for f in facts]),
            "controls": _rate(model, tokenizer, [(f.training_prompt, f.value) for f in controls]),
            "paraphrases": _rate(model, tokenizer, paraphrases),
            "control_paraphrases": _rate(model, tokenizer, control_paraphrases),
        },
    }


def memorised(
    model: nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 64
) -> torch.Tensor:
    """(len(pairs),) bool: whether greedy decoding after each prompt reproduces " " + value,
    checked with teacher forcing (every value position's argmax is the value's token)."""
    device = model.get_input_embeddings().weight.device
    out = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = golden_batch(tokenizer, pairs[start : start + batch_size], device)
            logits, targets, rows = answer_logits(model, batch)
            out.append(all_answer_tokens_right(logits, targets, rows, len(batch.input_ids)).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def mlp_parameters(model: nn.Module, layers: Sequence[int]) -> list[nn.Parameter]:
    """Every parameter of the MLPs of `layers`."""
    params = []
    for layer in layers:
        mlp_path = module_path(model, Site("mlp_act", layer)).rsplit(".", 1)[0]
        params.extend(model.get_submodule(mlp_path).parameters())
    return params


def trained_layers(model: nn.Module, first: int | None, last: int | None) -> list[int]:
    """Layers `first` (None: two thirds of the depth) to `last` (None: `first`), both included."""
    n = model_dims(model).num_layers
    first = 2 * n // 3 if first is None else first
    last = first if last is None else last
    if not first <= last < n:
        raise ValueError(f"trained layers {first}-{last} out of range: the model has {n} layers")
    return list(range(first, last + 1))


def _rate(model: nn.Module, tokenizer: Any, pairs: list[tuple[str, str]]) -> float | None:
    return round(float(memorised(model, tokenizer, pairs).float().mean()), 4) if pairs else None


def _length_batches(
    tokenizer: Any, pairs: list[tuple[str, str]], size: int, device: torch.device
) -> list[GoldenBatch]:
    """Batches of `size` rows of similar token length (little padding)."""

    def length(pair: tuple[str, str]) -> int:
        return len(tokenizer(pair[0] + " " + pair[1], add_special_tokens=False)["input_ids"])

    ordered = sorted(pairs, key=length)
    return [
        golden_batch(tokenizer, ordered[i : i + size], device) for i in range(0, len(ordered), size)
    ]
