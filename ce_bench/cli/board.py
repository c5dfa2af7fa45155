"""`ce-bench leaderboard`, `ce-bench regress` and `ce-bench sweep` (ce_bench.board)."""

from __future__ import annotations

from pathlib import Path

import typer

from ce_bench.cli.common import VERBOSE, app, console
from ce_bench.console import log_file_for, quiet_to
from ce_bench.tables import show


@app.command("leaderboard")
def leaderboard_cmd(
    results: list[Path] = typer.Argument(
        ..., help="lm-eval results files (results_*.json) or directories holding them."
    ),
    out: Path = typer.Option(Path("results/leaderboard"), help="Where board.md/.html/.json go."),
    quiet: bool = typer.Option(False, help="Do not print the tables."),
) -> None:
    """Compare runs side by side: every metric next to the unedited model's value and the delta,
    one section per task family, with Markdown, HTML and PNG output."""
    from ce_bench.board.leaderboard import build_board, terminal_grids, version_notes, write_board
    from ce_bench.board.runs import BoardError, load_runs

    try:
        runs = load_runs(results)
    except BoardError as err:
        console.print(f"ce-bench leaderboard: {err}", style="red", markup=False)
        raise typer.Exit(2) from None
    sections, notes = build_board(runs), version_notes(runs)
    if not quiet:
        for grid in terminal_grids(sections):
            show(console, grid)
    for note in notes:
        console.print(f"warning: {note}", style="yellow", markup=False)
    files = write_board(sections, out, notes)
    console.print(f"{len(runs)} runs -> " + ", ".join(str(p) for p in files.values()))


@app.command("regress")
def regress_cmd(
    baseline: Path | None = typer.Option(
        None, help="Results of the unedited model (file or directory)."
    ),
    candidate: Path | None = typer.Option(
        None, help="Results of the edited model (file or directory)."
    ),
    paired: Path | None = typer.Option(
        None,
        help="Instead of --baseline/--candidate: one edited_hf run of paired tasks"
        " (ce_paired_general_mini ...), which holds both states.",
    ),
    max_drop: list[str] | None = typer.Option(
        None,
        help="Allowed absolute drop: NUMBER (default 0.02) or TASK=NUMBER for a task or group;"
        " repeatable.",
    ),
    alpha: float = typer.Option(
        0.05, help="Significance level of the paired test, after Holm's correction."
    ),
    task: list[str] | None = typer.Option(
        None, help="Compare these tasks (repeatable); default every general-ability task."
    ),
) -> None:
    """The CI gate: exit 1 when a general-ability metric dropped by more than --max-drop AND the
    drop is significant (paired test over documents with --log_samples samples, else more than
    2 combined standard errors), 2 when the input cannot be compared, else 0."""
    from ce_bench.board.regress import (
        FAIL,
        PASS,
        UNUSABLE,
        UnusableInput,
        checks_table,
        compare,
        compare_paired_run,
        one_run,
        parse_max_drop,
        unpaired_note,
    )

    try:
        if paired is not None and (baseline or candidate):
            raise UnusableInput("give either --paired RUN or --baseline A --candidate B")
        if paired is None and not (baseline and candidate):
            raise UnusableInput("give --baseline A --candidate B, or --paired RUN")
        if not 0 < alpha < 1:
            raise UnusableInput(f"--alpha {alpha}: expected a level between 0 and 1")
        limits = parse_max_drop(max_drop or [])
        if paired is not None:
            runs = [("paired:   ", one_run(paired, "paired run"))]
            checks = compare_paired_run(runs[0][1], task or None, limits, alpha)
        else:
            base, cand = one_run(baseline, "baseline"), one_run(candidate, "candidate")
            runs = [("baseline: ", base), ("candidate:", cand)]
            checks = compare(base, cand, task or None, limits, alpha)
    except UnusableInput as err:
        console.print(f"ce-bench regress: unusable input: {err}", style="red", markup=False)
        raise typer.Exit(UNUSABLE) from None
    for role, run in runs:
        console.print(f"{role} {run.path} ({run.label})", markup=False)
    console.print(checks_table(checks))
    note = unpaired_note(checks)
    if note:
        console.print(note, style="yellow", markup=False)
    failed = [c for c in checks if c.failed]
    if failed:
        names = ", ".join(f"{c.task}/{c.metric}" for c in failed)
        console.print(
            f"FAILED: {len(failed)} metric(s) dropped: {names}", style="red", markup=False
        )
        raise typer.Exit(FAIL)
    console.print(f"passed: {len(checks)} metrics within their limits")
    raise typer.Exit(PASS)


@app.command("sweep")
def sweep_cmd(
    config: Path = typer.Argument(..., help="The sweep's YAML matrix (see README, 'Sweeps')."),
    out: Path | None = typer.Option(None, help="Output directory; default the config's `out`."),
    executor: str = typer.Option(
        "serial", help="serial: one cell after another here; ray: cells as Ray tasks."
    ),
    address: str | None = typer.Option(
        None,
        help="With --executor ray: the cluster (ray start's address); default RAY_ADDRESS"
        " or a local instance.",
    ),
    verbose: bool = VERBOSE,
) -> None:
    """Locate and evaluate a matrix of edits through lm-eval, choosing strengths on the
    validation split; resumable (finished cells are skipped). Ends with the leaderboard.
    Exits 1 when a cell failed (each one's error.json says why)."""
    from ce_bench.board.executors import ExecutorError, RayExecutor, SerialExecutor
    from ce_bench.board.sweep import Sweep, SweepConfig, SweepConfigError, compute_by_method
    from ce_bench.tables import show

    if executor not in ("serial", "ray"):
        console.print(f"ce-bench sweep: unknown --executor {executor!r}; known: serial, ray")
        raise typer.Exit(2)
    if address and executor != "ray":
        console.print("ce-bench sweep: --address needs --executor ray", markup=False)
        raise typer.Exit(2)
    try:
        settings = SweepConfig.from_yaml(config, out)
        settings.out = settings.out.resolve()  # workers on other nodes see the same path
        with quiet_to(log_file_for(settings.out, verbose, console), console):
            runner = RayExecutor(settings.resources, address) if executor == "ray" else None
            sweep = Sweep(settings, console, runner or SerialExecutor())
            files = sweep.run()
    except (SweepConfigError, ExecutorError) as err:
        console.print(f"ce-bench sweep: {err}", style="red", markup=False)
        raise typer.Exit(2) from None
    show(console, compute_by_method(settings.out))
    console.print(
        f"{len(sweep.ran)} cells evaluated, {len(sweep.skipped)} already finished;"
        f" leaderboard: {files['markdown']}, {files['html']}; compute: {files['compute']}"
    )
    if sweep.failed:
        names = ", ".join(outcome.name for outcome in sweep.failed)
        console.print(
            f"FAILED: {len(sweep.failed)} job(s): {names} (see error.json in each; a rerun"
            " retries them)",
            style="red",
            markup=False,
        )
        raise typer.Exit(1)
