"""The `ce-bench` command. Thin: it parses arguments and calls library functions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="ce-bench: benchmark concept and knowledge editing inside lm-eval.")
locate_app = typer.Typer(help="Locate an intervention and write it as an artifact directory.")
app.add_typer(locate_app, name="locate")
console = Console()


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def eval(ctx: typer.Context) -> None:  # noqa: A001 (the subcommand is called eval)
    """Run lm-eval's CLI with ce-bench registered; takes exactly lm_eval's arguments."""
    from lm_eval.__main__ import cli_evaluate

    from ce_bench import register

    register()
    sys.argv = ["lm_eval", *ctx.args]
    cli_evaluate()


@locate_app.command("diffmean")
def locate_diffmean_cmd(
    positive: Path = typer.Option(..., exists=True, help="Text file, one sentence per line."),
    negative: Path = typer.Option(..., exists=True, help="Text file, one sentence per line."),
    layer: int = typer.Option(..., help="Layer L (0-based): the vector lives at resid_post of L."),
    out: Path = typer.Option(..., help="Artifact directory to write."),
    model: str = typer.Option("smollm2-135m", help="HF id or path; default: embedded model."),
    aggregate: str = typer.Option("last", help="last token or mean over tokens."),
    strength: float = typer.Option(1.0, help="Default k of h + k*v (model_args may override)."),
    device: str | None = typer.Option(None, help="cpu / cuda; default: cuda if available."),
) -> None:
    """Difference of mean residual activations, positive minus negative (seed 000 Eq. 6)."""
    from ce_bench.artifacts import save_artifact
    from ce_bench.locate.diffmean import locate_diffmean
    from ce_bench.models.embedded import load_model

    lm, tokenizer = load_model(model, device)
    artifact = locate_diffmean(
        lm, tokenizer, _lines(positive), _lines(negative), layer, model, aggregate, strength
    )
    save_artifact(artifact, out)
    norm = float(artifact.tensors["vector"].norm())
    console.print(f"wrote {out} (steer at {artifact.site}, |v| = {norm:.3f})")


@app.command()
def show(directory: Path) -> None:
    """Print an artifact's manifest and tensor shapes."""
    from ce_bench.artifacts import load_artifact

    artifact = load_artifact(directory)
    table = Table(title=str(directory), show_header=False)
    table.add_row("kind", artifact.kind)
    table.add_row("site", str(artifact.site))
    table.add_row("params", json.dumps(artifact.params))
    for name, tensor in artifact.tensors.items():
        table.add_row(f"tensor {name}", f"{tuple(tensor.shape)} {tensor.dtype}")
    table.add_row(
        "located on",
        f"{artifact.model.name} ({artifact.model.model_type}, "
        f"{artifact.model.num_layers} layers, d={artifact.model.hidden_size})",
    )
    for key, value in vars(artifact.provenance).items():
        table.add_row(key, str(value))
    console.print(table)


def _lines(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise typer.BadParameter(f"{path} has no non-empty lines")
    return lines
