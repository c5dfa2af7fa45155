"""`ce-bench reproduce`: each preset says what it runs and how long it took, then runs it into
its own folder, resumable."""

from __future__ import annotations

import io

from rich.console import Console
from typer.testing import CliRunner

from ce_bench.cli import app
from ce_bench.emotions import EMOTIONS
from ce_bench.reports.reproduce import reproduce


def test_reproduce_says_what_runs_and_its_time_before_running_it(tmp_path, monkeypatch) -> None:
    console = Console(record=True, width=80, file=io.StringIO())
    seen = []

    def run_benchmark(config, console):  # type: ignore[no-untyped-def]
        seen.append((config, console.export_text(clear=False)))
        return []

    monkeypatch.setattr("ce_bench.reports.concept.run_benchmark", run_benchmark)
    reproduce("concept", False, tmp_path / "concept", console)
    ((config, said_before),) = seen
    said_before = " ".join(said_before.split())  # as one line, whatever the wrapping
    assert "for the six emotions" in said_before and "Time on 2 CPU cores: 7.9 min" in said_before
    assert config.emotions == EMOTIONS and config.resume and config.out == tmp_path / "concept"
    assert (config.test_limit, config.max_gen_toks) == (8, 20)


def test_reproduce_full_lifelong_runs_both_tables_and_resumes(tmp_path, monkeypatch) -> None:
    ran = []
    monkeypatch.setattr(
        "ce_bench.reports.lifelong.run_lifelong_report", lambda config, console: ran.append(config)
    )
    reproduce("lifelong", True, tmp_path, Console(file=io.StringIO()))
    assert [(c.edits, c.out, c.resume) for c in ran] == [
        ("zsre", tmp_path / "zsre", True),
        ("selfcheckgpt", tmp_path / "selfcheckgpt", True),
    ]


def test_reproduce_names_the_runs_it_knows() -> None:
    result = CliRunner().invoke(app, ["reproduce", "everything"])
    assert result.exit_code == 2
    said = " ".join(result.output.replace("│", " ").split())  # the error box wraps at 80
    assert "choose one of concept, erasure, lifelong, privacy" in said
