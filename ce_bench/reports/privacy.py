"""Knowledge Microscope's private-knowledge erasure in one call: inject, locate, evaluate.

1. Inject the private facts into one MLP of the model (`ce_bench.inject`, cached): by default
   the shipped 42 facts and 43 controls into layer 20 of the embedded model.
2. Locate each arm at that layer and save it under `out/artifacts/<arm>/`: FeatureEdit with the
   base model's SAE at three tau_2 budgets, knowledge neurons at two (the budgets of
   `results/privacy/table.md`).
3. Evaluate each through lm-eval: `privacy_erasure` (Reliability, Generalization, Locality) and
   `ce_perplexity`, the unedited and the edited model in one run, results and samples under
   `out/runs/<arm>/`. Write table.md and results.json.

An arm whose artifact or results are already there is not located or evaluated again, so an
interrupted run resumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from ce_bench.console import step_progress
from ce_bench.runtime import EMBEDDED_NAME
from ce_bench.tables import Grid, show

# (arm, method, parameters): Knowledge Microscope's FeatureEdit and its knowledge-neuron baseline
ARMS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("featureedit_tau0.15", "featureedit", {"tau_2": 0.15}),
    ("featureedit_tau0.1", "featureedit", {"tau_2": 0.1}),
    ("featureedit_tau0.05", "featureedit", {"tau_2": 0.05}),
    ("fact_neurons", "fact-neurons", {}),
    ("fact_neurons_60", "fact-neurons", {"threshold": 0.05, "max_neurons": 60}),
)
TASKS = ("privacy_erasure", "ce_perplexity")
METRICS = ("reliability", "generalization", "locality")


@dataclass
class PrivacyConfig:
    """What to run; the defaults are Knowledge Microscope's protocol on the embedded model."""

    model: str = EMBEDDED_NAME
    facts_file: Path | None = None  # default: the shipped set
    inject: dict[str, Any] = field(default_factory=dict)  # InjectSettings; default its defaults
    sae_path: str = ""  # FeatureEdit's SAE; default the base model's own at the layer
    arms: tuple[tuple[str, str, dict[str, Any]], ...] = ARMS
    limit: int | None = None
    batch_size: int = 16
    out: Path = Path("results/reproduce/privacy")


def run_privacy_report(config: PrivacyConfig, console: Console | None = None) -> list[list[str]]:
    """Inject, then locate and evaluate every arm not done yet; returns the table's rows."""
    from ce_bench.embedded import load_model
    from ce_bench.inject import REPORT_FILE, InjectSettings, inject_facts
    from ce_bench.private_facts import load_fact_set

    console = console or Console()
    data = load_fact_set(config.facts_file)
    injected = inject_facts(config.model, None, InjectSettings(**config.inject), data, "cpu")
    layer = json.loads((injected / REPORT_FILE).read_text())["trained_layers"][0]
    model, tokenizer = load_model(str(injected), "cpu")
    rows = []
    with step_progress(console) as progress:
        bar = progress.add_task("privacy arms", total=len(config.arms), detail="")
        for name, method, params in config.arms:
            progress.update(bar, detail=name)
            artifact = config.out / "artifacts" / name
            if not (artifact / "intervention.json").is_file():
                _locate(model, tokenizer, data.facts, method, params, layer, config, artifact)
            runs = config.out / "runs" / name
            if not any(runs.rglob("results_*.json")):
                _evaluate(model, tokenizer, artifact, runs, config)
            rows.append(_row(name, artifact, runs))
            progress.advance(bar)
    grid = Grid(
        f"Private-fact erasure at layer {layer} of {config.model} (injected)",
        ["arm", "zeroed weights", "Rel.", "Gen.", "Loc.", "ΔPPL"],
        rows,
    )
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "table.md").write_text(grid.markdown())
    (config.out / "results.json").write_text(json.dumps({"layer": layer, "rows": rows}) + "\n")
    show(console, grid)
    return rows


def _locate(  # type: ignore[no-untyped-def]
    model, tokenizer, facts, method: str, params: dict[str, Any], layer: int,
    config: PrivacyConfig, out: Path,
) -> None:  # fmt: skip
    from ce_bench.interventions.base import save_intervention
    from ce_bench.locate.privacy import (
        FactNeuronsConfig,
        FeatureEditConfig,
        locate_fact_neurons,
        locate_featureedit,
    )
    from ce_bench.locate.sae_features import SAESource

    name = str(getattr(model, "name_or_path", config.model))
    if method == "featureedit":
        if config.sae_path:
            sae = config.sae_path
        else:  # the base model's SAE, as Knowledge Microscope uses Gemma Scope's
            from ce_bench.sae_training import ensure_sae

            sae = str(ensure_sae(layer, model=config.model))
        settings = FeatureEditConfig(source=SAESource(sae_path=sae), **params)
        artifact = locate_featureedit(model, tokenizer, facts, settings, model_name=name)
    else:
        neurons = FactNeuronsConfig(layer=layer, **params)
        artifact = locate_fact_neurons(model, tokenizer, facts, neurons, model_name=name)
    save_intervention(artifact, out)


def _evaluate(model, tokenizer, artifact: Path, runs: Path, config: PrivacyConfig) -> None:  # type: ignore[no-untyped-def]
    from ce_bench.evaluation import evaluate
    from ce_bench.models.edited_hf import EditedHFLM

    lm = EditedHFLM(
        pretrained=model,
        tokenizer=tokenizer,
        intervention=str(artifact),
        batch_size=config.batch_size,
    )
    metadata = {"facts_file": str(config.facts_file)} if config.facts_file else {}
    try:
        evaluate(lm, list(TASKS), limit=config.limit, metadata=metadata, stderr=False, out_dir=runs)
    finally:
        lm.close()


def _row(name: str, artifact: Path, runs: Path) -> list[str]:
    """An arm's row: its zeroed weights, the erasure metrics and the change in perplexity."""
    from ce_bench.evaluation import metrics_of

    report = json.loads((artifact / "intervention.json").read_text())["provenance"]["report"]
    results: dict[str, Any] = {"results": {}}
    for path in sorted(runs.rglob("results_*.json")):
        results["results"].update(json.loads(path.read_text())["results"])
    erasure, ppl = (metrics_of(results, task) for task in TASKS)
    return [
        name,
        f"{report['zeroed_weights']:,}",
        *(f"{erasure[m]:.3f}" for m in METRICS),
        f"{ppl['word_perplexity_delta']:+.2f}",
    ]
