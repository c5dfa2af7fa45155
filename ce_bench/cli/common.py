"""What the `ce-bench` commands share: the app, the console, common options and helpers."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ce_bench.runtime import EMBEDDED_NAME

app = typer.Typer(help="ce-bench: benchmark concept and knowledge editing inside lm-eval.")
console = Console()

# Options every emotion locate command shares (Unified Concept Editing: one emotion, one layer, the
# locate split).
EMOTION = typer.Option(
    ..., help="Target emotion: happiness, sadness, anger, fear, surprise, disgust."
)


LAYER = typer.Option(..., help="Layer L (0-based).")


OUT = typer.Option(..., help="Artifact directory to write.")


MODEL = typer.Option(EMBEDDED_NAME, help="HF id or path; default: the embedded model.")


SCENARIOS = typer.Option(None, help="RepE scenario dir or URL; default: the shipped set.")


LIMIT = typer.Option(None, help="Locate scenarios to use (each under every template); default all.")


DEVICE = typer.Option(None, help="cpu / cuda; default: cuda if available.")


INJECTED = typer.Option(..., help="Folder of a model that memorised the facts (inject-facts).")


FACTS = typer.Option(None, "--fact", help="Id of a fact to erase (repeatable); default all.")


FACTS_FILE = typer.Option(None, help="Fact file of the shipped schema; default the shipped set.")


VERBOSE = typer.Option(
    False, "--verbose", help="Show lm-eval's and transformers' messages here, not in the log file."
)


def given_options(**options: Any) -> dict[str, Any]:
    """The options the user gave (None means: the library's default)."""
    return {name: value for name, value in options.items() if value is not None}


def class_dataset(name: str, targets: list[str]) -> Any:
    """The erasure dataset `name`, with every target checked to be one of its classes."""
    from ce_bench.classification import dataset

    try:
        spec = dataset(name)
        for target in targets:
            spec.class_index(target)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    return spec


def named_dirs(items: list[str]) -> list[tuple[str, Path]]:
    """Parse repeated NAME=DIR options, keeping their order (it is the table's column order)."""
    pairs: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not (sep and name and path):
            raise typer.BadParameter(f"expected NAME=DIR, got {item!r}")
        if name in pairs:
            raise typer.BadParameter(f"artifact name {name!r} given twice")
        pairs[name] = Path(path)
    return list(pairs.items())


def write_report(out: Path | None, report: dict[str, Any], markdown: str) -> None:
    """Write a report with the command that produced it (*.json as JSON, else Markdown)."""
    if out is None:
        return
    command = shlex.join(["ce-bench", *sys.argv[1:]])
    if out.suffix == ".json":
        out.write_text(json.dumps({"command": command, **report}, indent=2) + "\n")
    else:
        out.write_text(f"Command: `{command}`\n\n{markdown}")
    console.print(f"wrote {out}")


def lines_of(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise typer.BadParameter(f"{path} has no non-empty lines")
    return lines
