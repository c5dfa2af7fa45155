"""NeuronLens Table 3/4 in one call: erase each class by neuron masking and by range masking.

For every target class of one dataset, at one layer (the penultimate by default, 5.3):

1. locate the class's activation ranges (`ce_bench.locate.ranges`) from the training split;
2. evaluate two artifacts through lm-eval, each in one run that scores the unedited and edited
   model: neuron masking (`gate=always`: phi on the selected neurons whatever their value) and
   activation range masking (`gate=range`), on `erasure_<dataset>` (Acc, Conf, CAcc, CConf),
   `ce_perplexity` (delta PPL) and `ce_paired_mini_mmlu` (delta MMLU);
3. print and write the table: base values, then each method's deltas, one row per class and
   the 10% trimmed mean over classes. lm-eval's results and samples of every run are kept
   under `out/runs/<class>/<method>/` (what `ce-bench leaderboard` and `regress --paired` read).

Example:
    >>> rows = run_erasure_report(ErasureConfig(dataset="agnews", limit=16))
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from ce_bench.artifacts import Artifact
from ce_bench.classification import dataset as dataset_named
from ce_bench.console import step_progress
from ce_bench.interventions.base import save_intervention
from ce_bench.locate.ranges import (
    ClassSteeringConfig,
    RangesConfig,
    TrainingActivations,
    locate_class_direction,
    locate_ranges,
    middle_layer,
    penultimate_layer,
    training_activations,
)
from ce_bench.reports.resume import saved_entries, settings_of
from ce_bench.runtime import EMBEDDED_NAME
from ce_bench.tables import Grid, show

GATES = {"neuron masking": "always", "range masking": "range"}  # NeuronLens Table 3's columns
BASELINES = {"steering": "steer", "directional ablation": "directional_ablation"}  # Appendix M
SHORT = {
    "neuron masking": "NM",
    "range masking": "ARM",
    "steering": "SV",
    "directional ablation": "DA",
}
CLASS_METRICS = ("acc", "conf", "cacc", "cconf")
SIDE_TASKS = ("ce_perplexity", "ce_paired_mini_mmlu")


@dataclass
class ErasureConfig:
    """What to run; the defaults are NeuronLens's protocol on the embedded model."""

    model: str = EMBEDDED_NAME
    dataset: str = "agnews"
    layer: int | None = None  # None: the penultimate layer (5.3)
    targets: tuple[str, ...] = ()  # () means every class
    phi: str = "zero"
    ranking: str = "max"
    per_class: int | None = None  # training examples per class for the ranges
    limit: int | None = None  # erasure examples per run (None: all)
    baselines: bool = False  # also Appendix M's steering and directional ablation
    side_limit: int | None = None  # held-out documents and MMLU items per run (None: all)
    data: str = "shipped"
    batch_size: int = 16
    out: Path = Path("results/erasure")
    resume: bool = False  # keep the classes of out/results.json made with the same settings


@dataclass
class Row:
    """One class: the unedited values and each method's deltas."""

    target: str
    base: dict[str, float] = field(default_factory=dict)
    deltas: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> metric -> delta


def run_erasure_report(
    config: ErasureConfig,
    console: Console | None = None,
    loaded: tuple[nn.Module, Any] | None = None,
) -> list[Row]:
    """Locate and evaluate every target; writes table.md and results.json under `config.out`."""
    from ce_bench.embedded import load_model

    console = console or Console()
    model, tokenizer = loaded or load_model(config.model, "cpu")
    data = dataset_named(config.dataset)
    layer = penultimate_layer(model) if config.layer is None else config.layer
    targets = config.targets or data.classes
    activations = training_activations(
        model, tokenizer, data, layer, config.data, config.per_class
    )  # read once, ranked per class
    middle = None
    if config.baselines:  # Appendix M steers at the middle layer
        middle = training_activations(
            model, tokenizer, data, middle_layer(model), config.data, config.per_class
        )
    unedited: dict[str, Any] = {}  # the unedited model's scores, the same in every run
    saved = saved_entries(config, "rows")
    done = {r["target"]: Row(**r) for r in saved if r["target"] != "trimmed mean"}
    rows: list[Row] = []
    with step_progress(console) as progress:
        bar = progress.add_task(f"erasure, {data.name}", total=len(targets), detail="")
        for target in targets:
            progress.update(bar, detail=f"erase {target}")
            name = data.classes[data.class_index(target)]
            row = done.get(name) or _run_row(
                model, tokenizer, name, config, activations, middle, unedited
            )
            rows.append(row)
            write_report(rows, config, layer)  # after every class: an interrupted run resumes
            progress.advance(bar)
    show(console, report_grid(rows, config, layer))
    return rows


def _run_row(  # type: ignore[no-untyped-def]
    model,
    tokenizer,
    target: str,
    config: ErasureConfig,
    activations,
    middle,
    unedited: dict[str, Any],
) -> Row:
    """Erase one class with each method and measure it, side effects included."""
    row = Row(target)
    methods = _methods(model, tokenizer, target, config, activations, middle)
    for method, artifact in methods.items():
        path = save_intervention(artifact, _folder(config, "artifacts", row.target, method))
        runs = runs_dir(config, row.target, method)
        erasure, ppl, mmlu = _evaluate(model, tokenizer, path, row.target, config, unedited, runs)
        row.base = {
            **{m: erasure[f"{m}_base"] for m in CLASS_METRICS},
            "ppl": ppl["word_perplexity_base"],
            "mmlu": mmlu["acc_base"],
        }
        row.deltas[method] = {
            **{m: erasure[f"{m}_delta"] for m in CLASS_METRICS},
            "ppl": ppl["word_perplexity_delta"],
            "mmlu": mmlu["acc"] - mmlu["acc_base"],
        }
    return row


def _methods(  # type: ignore[no-untyped-def]
    model,
    tokenizer,
    target: str,
    config: ErasureConfig,
    activations: TrainingActivations,
    middle: TrainingActivations | None,
) -> dict[str, Artifact]:
    """The artifacts compared for one class: neuron and range masking of the same located
    units, and with `baselines` Appendix M's steering (a = -2) and directional ablation."""
    ranges = RangesConfig(
        target=target, layer=activations.layer, ranking=config.ranking, phi=config.phi,
        source=config.data,
    )  # fmt: skip
    located = locate_ranges(
        model, tokenizer, activations.data, ranges, model_name=config.model, activations=activations
    )
    methods = {
        method: dataclasses.replace(located, params={**located.params, "gate": gate})
        for method, gate in GATES.items()
    }
    if middle is not None:
        for method, kind in BASELINES.items():
            steering = ClassSteeringConfig(
                target=target, layer=middle.layer, kind=kind, source=config.data
            )
            methods[method] = locate_class_direction(
                model, tokenizer, middle.data, steering, model_name=config.model, activations=middle
            )
    return methods


def _evaluate(  # type: ignore[no-untyped-def]
    model,
    tokenizer,
    path: Path,
    target: str,
    config: ErasureConfig,
    unedited: dict[str, Any],
    runs: Path,
) -> list[dict[str, float]]:
    """The erasure task and the side-effect tasks, each scoring the unedited and the edited
    model in its run: each task's metrics. lm-eval's results and samples go to `runs`."""
    from ce_bench.evaluation import evaluate, metrics_of
    from ce_bench.models.edited_hf import EditedHFLM

    lm = EditedHFLM(
        pretrained=model,
        tokenizer=tokenizer,
        intervention=str(path),
        batch_size=config.batch_size,
        unedited_answers=unedited,
    )
    metadata = {"data_source": config.data, "target": target}
    metrics = []
    try:
        for tasks, limit in (
            ([f"erasure_{config.dataset}"], config.limit),
            (list(SIDE_TASKS), config.side_limit),
        ):
            results = evaluate(
                lm, tasks, limit=limit, metadata=metadata, stderr=False, out_dir=runs
            )
            metrics += [metrics_of(results, t) for t in tasks]
    finally:
        lm.close()
    return metrics


def runs_dir(config: ErasureConfig, target: str, method: str) -> Path:
    """Where one method's runs for one class keep lm-eval's results and samples (what
    `ce-bench leaderboard` and `ce-bench regress --paired` read)."""
    return _folder(config, "runs", target, method)


def _folder(config: ErasureConfig, kind: str, target: str, method: str) -> Path:
    return config.out / kind / _slug(target) / _slug(method)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def trimmed_row(rows: list[Row]) -> Row:
    """NeuronLens's 10% trimmed mean over classes, per value."""
    from ce_bench.tasks.erasure.task import trimmed_mean

    mean = Row("trimmed mean")
    mean.base = {k: trimmed_mean([r.base[k] for r in rows]) for k in rows[0].base}
    mean.deltas = {
        method: {k: trimmed_mean([r.deltas[method][k] for r in rows]) for k in values}
        for method, values in rows[0].deltas.items()
    }
    return mean


COLUMNS = (*CLASS_METRICS, "ppl", "mmlu")
HEADS = {
    "acc": "Acc",
    "conf": "Conf",
    "cacc": "CAcc",
    "cconf": "CConf",
    "ppl": "PPL",
    "mmlu": "MMLU",
}


def report_grid(rows: list[Row], config: ErasureConfig, layer: int) -> Grid:
    """NeuronLens Table 3 with Table 4's side effects, methods in rows: per class the unedited
    values, then each method's change (edited - unedited); the trimmed mean last."""
    lines = []
    for row in [*rows, trimmed_row(rows)]:
        lines.append([row.target, "unedited", *(f"{row.base[k]:.3f}" for k in COLUMNS)])
        lines += [
            [row.target, f"{SHORT[method]} Δ", *(f"{deltas[k]:+.3f}" for k in COLUMNS)]
            for method, deltas in row.deltas.items()
        ]
    title = f"Class erasure, {config.dataset}, {config.model}, layer {layer}"
    heads = ["class", "method", *(HEADS[k] for k in COLUMNS)]
    return Grid(title, heads, lines, keys=2, bold={"trimmed mean"})


def write_report(rows: list[Row], config: ErasureConfig, layer: int) -> None:
    """table.md and results.json under `config.out`."""
    config.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": {**asdict(config), "out": str(config.out), "layer": layer},
        "settings": settings_of(config),
        "rows": [asdict(r) for r in [*rows, trimmed_row(rows)]],
    }
    (config.out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    note = (
        f"Values of the unedited model, then changes (edited - unedited) for neuron masking"
        f" (NM), activation range masking (ARM) and, if asked, Appendix M's steering (SV) and"
        f" directional ablation (DA) at the middle layer; layer {layer}, phi={config.phi},"
        f" ranking={config.ranking}, limit={config.limit}, side_limit={config.side_limit}."
        " PPL: word perplexity of the held-out text; MMLU: ce_paired_mini_mmlu accuracy.\n"
    )
    (config.out / "table.md").write_text(note + "\n" + report_grid(rows, config, layer).markdown())
