"""The `ce-bench` command. Thin: it parses arguments and calls library functions.

One module per group of commands; importing them registers their commands on `app`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from ce_bench.cli.common import app, console


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def eval(ctx: typer.Context) -> None:  # noqa: A001 (the subcommand is called eval)
    """Run lm-eval's CLI with ce-bench registered; takes exactly lm_eval's arguments."""
    from lm_eval.__main__ import cli_evaluate

    from ce_bench import register
    from ce_bench.registration import print_input_errors_briefly

    register()
    print_input_errors_briefly()
    sys.argv = ["lm_eval", *ctx.args]
    cli_evaluate()


@app.command()
def show(directory: Path) -> None:
    """Check an artifact as evaluation would, against the model sizes its manifest records (no
    model is loaded), then print its manifest and tensor shapes; a problem exits with 1."""
    import ce_bench.lifelong  # noqa: F401 (registers the editors' kinds)
    from ce_bench.artifacts import ArtifactError, load_artifact
    from ce_bench.interventions.base import checked_intervention

    try:
        artifact = load_artifact(directory)
        checked_intervention(artifact, artifact.model.dims())
    except ArtifactError as err:
        typer.echo(f"ce-bench: error: {err}", err=True)
        raise typer.Exit(1) from None
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


from ce_bench.cli import analyze, board, locate, reports  # noqa: E402,F401 (register commands)
