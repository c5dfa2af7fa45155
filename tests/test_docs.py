"""README and docs/ show commands users copy: each must name a command, options, model_args
and tasks that exist (running them is the job of the tests of each feature)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(page: Path) -> list[tuple[int, list[str]]]:
    """(line, argv) of every `ce-bench` / `lm_eval` command in the page's code blocks and
    quoted in its text."""
    found, pending, start, fenced = [], "", 0, False
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        text = line.strip()
        fenced ^= text.startswith("```")
        code = fenced or line.startswith("    ")
        if not code:  # commands quoted in the text
            quoted = re.findall(r"`((?:ce-bench|lm_eval) [^`]+)`", line)
            found += [(number, shlex.split(q.replace("...", ""))) for q in quoted]
        if not pending and not (code and text.startswith(("ce-bench ", "lm_eval "))):
            continue
        start = start if pending else number
        pending += " " + text.split("  #")[0].rstrip("\\").strip()
        if not text.endswith("\\"):
            found.append((start, shlex.split(pending.replace("`", ""))))
            pending = ""
    return found


COMMANDS = [(f"{page.name}:{line}", argv) for page in PAGES for line, argv in _commands(page)]


def _click_command(argv: list[str]) -> tuple[Any, list[str]]:
    """The (sub)command `argv` runs and the arguments left for it."""
    from ce_bench.cli import app

    command = typer.main.get_command(app)  # typer's own copy of click: duck-typed below
    rest = argv[1:]
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


def test_the_pages_show_commands() -> None:
    assert len(COMMANDS) > 40


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_names_what_exists(where: str, argv: list[str]) -> None:
    if argv[0] == "ce-bench":
        command, rest = _click_command(argv)
        if hasattr(command, "commands") and (not rest or rest[0].startswith("<")):
            return  # the group itself ("ce-bench locate <name>")
        assert not hasattr(command, "commands"), f"{where}: no command {' '.join(argv[:3])}"
        if command.name == "eval":
            return  # lm_eval's own arguments
        options = {o for p in command.params for o in [*p.opts, *p.secondary_opts]}
        given = {a.split("=")[0] for a in rest if a.startswith("--")}
        assert given <= options, f"{where}: {command.name} has no {sorted(given - options)}"
        return
    from ce_bench.evaluation import ce_bench_tasks
    from ce_bench.models.edited_hf import EditedHFLM, passed_on_model_args

    args = dict(zip(argv[1::2], argv[2::2], strict=False))
    for pair in args.get("--model_args", "").split(","):
        name = pair.split("=")[0]
        if name:
            own = set(EditedHFLM.__init__.__code__.co_varnames)
            editor_args = {"alpha", "layer", "lr", "steps"}  # with editor= (checked by lm_eval)
            assert name in own | passed_on_model_args() | editor_args, f"{where}: {name}"
    for task in args.get("--tasks", "").split(","):
        if task and not re.match(r"^(mmlu|arc_|hellaswag|winogrande|truthfulqa)", task):
            assert task in ce_bench_tasks(), f"{where}: unknown task {task}"
