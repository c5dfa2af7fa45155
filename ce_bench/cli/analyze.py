"""`ce-bench analyze ...`: analyses of located edits (Unified Concept Editing sections 4.4 and
4.5)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from ce_bench.cli.common import (
    MODEL,
    app,
    console,
    named_dirs,
    write_report,
)
from ce_bench.tables import show

analyze_app = typer.Typer(
    help="Analyses of located edits (Unified Concept Editing sections 4.4 and 4.5)."
)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("generalization")
def analyze_generalization_cmd(
    emotion: str = typer.Option(..., help="Emotion whose word lists are scored (Table 3)."),
    artifact: list[str] | None = typer.Option(None, help="NAME=DIR, repeatable: one column each."),
    prompt: list[str] | None = typer.Option(
        None,
        help="Prompt, repeatable (averaged); default: Unified Concept Editing's breakfast prompt.",
    ),
    steps: int = typer.Option(20, help="Greedy steps per prompt."),
    model: str = MODEL,
    device: str | None = typer.Option(None, help="cpu / cuda; default: cuda if available."),
    out: Path | None = typer.Option(
        None, help="Also write the table: *.json as JSON, else Markdown."
    ),
) -> None:
    """Mean probability of concept, synonym, antonym, related, unrelated words (Table 4)."""
    from ce_bench.analysis import generalization_grid
    from ce_bench.analysis import output_generalization as analyse
    from ce_bench.analysis.generalization import PAPER_PROMPT
    from ce_bench.artifacts import load_artifact
    from ce_bench.embedded import load_model

    artifacts = {name: load_artifact(path) for name, path in named_dirs(artifact or [])}
    lm, tokenizer = load_model(model, device)
    report = analyse(lm, tokenizer, emotion, artifacts, prompt or (PAPER_PROMPT,), steps)
    grid = generalization_grid(report)
    show(console, grid)
    write_report(out, asdict(report), grid.markdown())


@analyze_app.command("overlap")
def analyze_overlap_cmd(
    emotion: str = typer.Option(..., help="The artifacts' emotion; its prompts score SAE and SV."),
    ne: Path | None = typer.Option(None, help="neuron_scale artifact directory (NE)."),
    sae: Path | None = typer.Option(None, help="sae_clamp artifact directory (SAE)."),
    sv: Path | None = typer.Option(None, help="steer artifact directory (SV)."),
    sft: Path | None = typer.Option(None, help="weight_delta artifact directory (SFT)."),
    top_j: int | None = typer.Option(None, help="J when --ne is missing; otherwise J = |NE|."),
    prompts: int = typer.Option(20, help="Locate-split prompts SAE and SV are averaged over."),
    scenarios: str | None = typer.Option(None, help="RepE scenario dir or URL; default: shipped."),
    model: str = MODEL,
    device: str | None = typer.Option(None, help="cpu / cuda; default: cuda if available."),
    out: Path | None = typer.Option(
        None, help="Also write the table: *.json as JSON, else Markdown."
    ),
) -> None:
    """Overlap (%) of the neurons NE, SAE, SV and SFT imply at one layer (Table 5)."""
    from ce_bench.analysis import neuron_overlap, overlap_grid
    from ce_bench.artifacts import load_artifact
    from ce_bench.embedded import load_model
    from ce_bench.locate.emotion import EmotionData

    given = {"ne": ne, "sae": sae, "sv": sv, "sft": sft}
    artifacts = {key: load_artifact(path) for key, path in given.items() if path is not None}
    texts = [p.text for p in EmotionData.load(scenarios).prompts(emotion, prompts)][:prompts]
    lm, tokenizer = load_model(model, device)
    report = neuron_overlap(lm, tokenizer, texts, top_j=top_j, emotion=emotion, **artifacts)
    grid = overlap_grid(report)
    show(console, grid)
    write_report(out, asdict(report), grid.markdown())
