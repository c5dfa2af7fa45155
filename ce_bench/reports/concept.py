"""Unified Concept Editing's concept-editing benchmark in one call: locate, choose strengths, test
(Table 2).

For every method (NE, SAE, SV, SFT) and emotion at one layer:

1. locate from the locate split (`ce_bench.locate.emotion`) and save the artifact;
2. evaluate `concept_emotion_<emotion>` on the validation split at each strength of the
   method's grid, and keep the strength with the best success rate among those whose
   degenerate rate stays under a bound (Unified Concept Editing A.8, as AxBench does);
3. evaluate the chosen strength on the test split, writing lm-eval's results and samples under
   `out/runs/<method>/<emotion>/` (what `ce-bench leaderboard` reads).

Evaluation goes through lm-eval (`simple_evaluate` with an `edited_hf` model built on the one
loaded model), so the numbers are those a user gets from `lm_eval --model edited_hf`. Every
run of an emotion and split pairs the same prompts with the same unedited answers, so those are
generated once and shared (`EditedHFLM(unedited_answers=...)`); on a CPU, where a decoding step
costs about the same for one row as for sixteen, that halves the benchmark's generation time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from ce_bench.artifacts import Artifact
from ce_bench.console import step_progress
from ce_bench.emotions import EMOTIONS
from ce_bench.interventions.base import save_intervention
from ce_bench.locate.emotion import EmotionData, EmotionJob, locate_emotion
from ce_bench.locate.sae_features import FeatureNotFound, SAESource
from ce_bench.reports.resume import saved_entries, settings_of
from ce_bench.runtime import EMBEDDED_NAME
from ce_bench.tables import Grid, show

METHODS = ("knowledge-neurons", "sae-features", "steering", "sft")  # Table 2's NE, SAE, SV, SFT
SHORT = {"knowledge-neurons": "NE", "sae-features": "SAE", "steering": "SV", "sft": "SFT"}
# Strength grids per artifact kind, as multiples of the artifact's `strength_unit` (1 when it
# has none). For steer and sae_clamp the unit makes the injected vector as long as the mean
# residual, so one grid fits any model; beta multiplies neuron activations (Eq. 3); the
# weight_delta scale 1 is the fine-tuned W_down itself.
GRIDS: dict[str, tuple[float, ...]] = {
    "steer": (0.25, 0.5, 1.0),
    "sae_clamp": (0.25, 0.5, 1.0),
    "neuron_scale": (2.0, 5.0, 10.0),
    "weight_delta": (1.0, 2.0, 4.0),
}
# A deep layer of the embedded model's 30 (Unified Concept Editing Table 1: concepts form in deep
# layers, and Gemma-2-2B's SAE finds them only there, at 24 of 26). At layer 20 the project's SAE
# gave no emotion feature for any emotion; at 27 it gives some (README, "Results").
DEEP_LAYER = 27
MAX_DEGENERATE = 0.5  # a strength whose edited outputs are mostly degenerate is not eligible


@dataclass
class BenchmarkConfig:
    """What to run; the defaults are the paper's protocol on the embedded model."""

    model: str = EMBEDDED_NAME
    layer: int = DEEP_LAYER
    emotions: tuple[str, ...] = EMOTIONS
    methods: tuple[str, ...] = METHODS
    sae: SAESource | None = None  # None on the embedded model: the project's own trained SAE
    scenarios: str | None = None
    judge: dict[str, Any] = field(default_factory=lambda: {"judge": "lexicon"})
    locate_limit: int | None = None  # locate scenarios per emotion
    validation_limit: int | None = None  # prompts per strength on the validation split
    test_limit: int | None = None
    max_gen_toks: int = 48
    batch_size: int = 16
    max_degenerate: float = MAX_DEGENERATE
    out: Path = Path("results/concept_editing")
    resume: bool = False  # keep the cells of out/results.json made with the same settings


@dataclass
class Cell:
    """One method x emotion: its artifact, the validation sweep, the test result."""

    method: str
    emotion: str
    artifact: str | None = None
    located: bool = True
    note: str = ""
    validation: list[dict[str, Any]] = field(default_factory=list)
    strength: float | None = None
    test: dict[str, Any] = field(default_factory=dict)


def run_benchmark(
    config: BenchmarkConfig,
    console: Console | None = None,
    loaded: tuple[nn.Module, Any] | None = None,
) -> list[Cell]:
    """Locate, select and test every method x emotion; writes everything under `config.out`.

    `loaded` is the (model, tokenizer) of `config.model` when the caller has it already.
    """
    from ce_bench.embedded import load_model

    console = console or Console()
    model, tokenizer = loaded or load_model(config.model, "cpu")
    data = EmotionData.load(config.scenarios)
    sae = config.sae or (
        own_sae(config.model, config.layer) if "sae-features" in config.methods else None
    )
    done = {(c["method"], c["emotion"]): Cell(**c) for c in saved_entries(config, "cells")}
    cells: list[Cell] = []
    shared = _Shared()
    plan = [(m, e) for m in config.methods for e in config.emotions]
    with step_progress(console) as progress:
        bar = progress.add_task("concept cells", total=len(plan), detail="")
        for method, emotion in plan:
            progress.update(bar, detail=f"{SHORT[method]} / {emotion}")
            cell = done.get((method, emotion))
            if cell is None:
                cell = _run_cell(model, tokenizer, method, emotion, config, data, sae, shared)
            cells.append(cell)
            write_results(cells, config)  # after every cell: an interrupted run resumes
            progress.advance(bar)
    show(console, table2(cells, config))
    for cell in (c for c in cells if not c.located):
        console.print(f"{SHORT[cell.method]} / {cell.emotion} (-): {cell.note}", markup=False)
    return cells


def _run_cell(  # type: ignore[no-untyped-def]
    model,
    tokenizer,
    method: str,
    emotion: str,
    config: BenchmarkConfig,
    data: EmotionData,
    sae: SAESource | None,
    shared: _Shared,
) -> Cell:
    """Locate one method for one emotion, choose its strength on validation, test it."""
    cell = Cell(method, emotion)
    job = EmotionJob(model, tokenizer, config.model, data, emotion, config.layer)
    job.limit, job.sae, job.residuals = config.locate_limit, sae, shared.residuals
    try:
        artifact = locate_emotion(method, job)
    except FeatureNotFound as err:  # Table 2's "-": the SAE has no such feature here
        cell.located, cell.note = False, str(err)
        return cell
    path = save_intervention(artifact, config.out / "artifacts" / method / emotion)
    cell.artifact = str(path)
    runs = config.out / "runs" / method / emotion
    evaluate = _evaluator(model, tokenizer, path, emotion, config, shared, runs)
    for strength in strength_grid(artifact):
        metrics = evaluate(strength, "validation", config.validation_limit)
        cell.validation.append({"strength": strength, **metrics})
    cell.strength = choose_strength(cell.validation, config.max_degenerate)
    cell.test = evaluate(cell.strength, "test", config.test_limit)
    return cell


def strength_grid(artifact: Artifact) -> list[float]:
    """The strengths tried on the validation split for this artifact."""
    unit = float(artifact.provenance.report.get("strength_unit", 1.0))
    return [round(m * unit, 6) for m in GRIDS[artifact.kind]]


def choose_strength(validation: list[dict[str, Any]], max_degenerate: float) -> float:
    """Best validation success rate among strengths under the degenerate bound (A.8); if none
    is under it, the least degenerate."""
    eligible = [v for v in validation if v["degenerate_rate"] <= max_degenerate]
    if not eligible:
        return min(validation, key=lambda v: v["degenerate_rate"])["strength"]
    return max(eligible, key=lambda v: (_number(v["success_rate"]), -v["strength"]))["strength"]


def _number(value: float) -> float:
    return -1.0 if value is None or math.isnan(value) else value


@dataclass
class _Shared:
    """What every run of one benchmark reuses."""

    managers: dict[str, Any] = field(default_factory=dict)  # lm-eval TaskManager per split
    unedited_answers: dict[str, str] = field(default_factory=dict)  # see EditedHFLM
    residuals: dict[tuple[Any, ...], Any] = field(default_factory=dict)  # see EmotionJob


def _evaluator(  # type: ignore[no-untyped-def]
    model,
    tokenizer,
    path: Path,
    emotion: str,
    config: BenchmarkConfig,
    shared: _Shared,
    runs: Path,
) -> Callable:
    """A function (strength, split, limit) -> concept_emotion metrics for one artifact; the
    test run's lm-eval results and samples go to `runs` (for the leaderboard)."""
    from ce_bench.evaluation import evaluate, metrics_of, task_manager
    from ce_bench.models.edited_hf import EditedHFLM

    task = f"concept_emotion_{emotion}"

    def run(strength: float, split: str, limit: int | None) -> dict[str, Any]:
        if split not in shared.managers:
            metadata = {**config.judge, "split": split, "scenarios": config.scenarios}
            shared.managers[split] = task_manager([task], {k: v for k, v in metadata.items() if v})
        lm = EditedHFLM(
            pretrained=model,
            tokenizer=tokenizer,
            intervention=str(path),
            strength=strength,
            batch_size=config.batch_size,
            unedited_answers=shared.unedited_answers,
        )
        try:
            results = evaluate(
                lm,
                [task],
                limit=limit,
                gen_kwargs={"max_gen_toks": config.max_gen_toks},
                manager=shared.managers[split],
                stderr=split == "test",  # only the reported numbers need one, not the selection
                out_dir=runs if split == "test" else None,
            )
        finally:
            lm.close()
        return metrics_of(results, task)

    return run


def own_sae(model: str, layer: int) -> SAESource:
    """The project's trained SAE at `layer` (trained once and cached); only the embedded model
    has one."""
    from ce_bench.sae_training import ensure_sae

    if model != EMBEDDED_NAME:
        raise ValueError(f"sae-features on {model} needs an SAE: set BenchmarkConfig.sae")

    return SAESource(sae_path=str(ensure_sae(layer, model=model)))


def table2(cells: list[Cell], config: BenchmarkConfig) -> Grid:
    """Unified Concept Editing Table 2: % of test prompts successfully edited, emotion x method."""
    methods = config.methods
    rows = [[e, *(_cell_text(cells, m, e) for m in methods)] for e in config.emotions]
    rows.append(["Average", *(_average_text(cells, m) for m in methods)])
    title = f"Editing success (%) at layer {config.layer}, {config.model}"
    return Grid(title, ["emotion", *(SHORT[m] for m in methods)], rows, bold={"Average"})


def _success(cells: list[Cell], method: str, emotion: str) -> float | None:
    cell = next((c for c in cells if c.method == method and c.emotion == emotion), None)
    value = cell.test.get("success_rate") if cell and cell.located else None
    return None if value is None or math.isnan(value) else 100 * value


def _cell_text(cells: list[Cell], method: str, emotion: str) -> str:
    value = _success(cells, method, emotion)
    return "-" if value is None else f"{value:.2f}"


def _average_text(cells: list[Cell], method: str) -> str:
    values = [_success(cells, method, c.emotion) for c in cells if c.method == method]
    found = [v for v in values if v is not None]
    return f"{sum(found) / len(found):.2f}" if found else "-"


def write_results(cells: list[Cell], config: BenchmarkConfig) -> None:
    """results.json (every cell) and table2.md under `config.out`."""
    config.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": {**asdict(config), "out": str(config.out)},
        "settings": settings_of(config),
        "cells": [asdict(c) for c in cells],
    }
    (config.out / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (config.out / "table2.md").write_text(table2(cells, config).markdown())
