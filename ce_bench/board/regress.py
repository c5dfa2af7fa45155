"""The CI gate: did an edit cost the model general ability?

`ce-bench regress --baseline A --candidate B` compares the general-ability tasks (ce_general,
ce_general_mini, ce_perplexity, lm-eval's own; see `runs.family`) of two results files of the
same base model. A metric fails when it got worse by more than the allowed drop (absolute,
default 0.02) AND by more than two combined standard errors, sqrt(se_A^2 + se_B^2); a metric
without a stderr (lm-eval writes "N/A") contributes 0 to that sum. Which way is "worse" comes
from lm-eval's `higher_is_better`.

Exit codes: 0 pass, 1 a metric failed, 2 the two files cannot be compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from ce_bench.board.runs import GENERAL, BoardError, Run, Score, family, load_runs

PASS, FAIL, UNUSABLE = 0, 1, 2
DEFAULT_MAX_DROP = 0.02


class UnusableInput(BoardError):
    """The baseline and candidate cannot be compared (exit code 2)."""


@dataclass(frozen=True)
class Check:
    """One metric of one task, baseline against candidate."""

    task: str
    metric: str
    baseline: Score
    candidate: Score
    max_drop: float

    @property
    def drop(self) -> float | None:
        """How much worse the candidate is (negative: better); None if the direction is unknown."""
        if self.baseline.higher_is_better is None:
            return None
        change = self.candidate.value - self.baseline.value
        return -change if self.baseline.higher_is_better else change

    @property
    def combined_stderr(self) -> float:
        return math.hypot(self.baseline.stderr or 0.0, self.candidate.stderr or 0.0)

    @property
    def failed(self) -> bool:
        drop = self.drop
        return drop is not None and drop > self.max_drop and drop > 2 * self.combined_stderr


def parse_max_drop(values: list[str]) -> tuple[float, dict[str, float]]:
    """`--max-drop 0.05` sets the default, `--max-drop task=0.1` one task (or group)."""
    default, per_task = DEFAULT_MAX_DROP, {}
    for value in values:
        task, sep, number = value.rpartition("=")
        try:
            drop = float(number)
        except ValueError:
            raise UnusableInput(f"--max-drop {value!r}: expected a number or TASK=NUMBER") from None
        if drop < 0:
            raise UnusableInput(f"--max-drop {value!r}: a drop limit cannot be negative")
        if sep:
            per_task[task] = drop
        else:
            default = drop
    return default, per_task


def one_run(path: Path, role: str) -> Run:
    """The run in a results file, or the newest one in an lm-eval output directory."""
    try:
        runs = load_runs([path])
    except BoardError as err:
        raise UnusableInput(f"{role}: {err}") from err
    return max(runs, key=lambda r: r.path.name)


def compare(
    baseline: Run,
    candidate: Run,
    tasks: list[str] | None = None,
    max_drop: tuple[float, dict[str, float]] = (DEFAULT_MAX_DROP, {}),
) -> list[Check]:
    """Every comparable metric of the chosen tasks (default: both runs' general-ability tasks).

    Raises UnusableInput for different base models, a task missing from one run, different
    sample counts, or nothing to compare.
    """
    if baseline.base_model != candidate.base_model:
        raise UnusableInput(
            f"different base models: baseline {baseline.base_model!r},"
            f" candidate {candidate.base_model!r}"
        )
    chosen = tasks or sorted(
        t for t in {*baseline.scores, *candidate.scores} if family(t) == GENERAL
    )
    missing = [
        f"{t} (not in the {role})"
        for t in chosen
        for role, run in (("baseline", baseline), ("candidate", candidate))
        if t not in run.scores
    ]
    if missing:
        raise UnusableInput("task missing from one file: " + ", ".join(missing))
    uneven = [
        f"{t} ({baseline.samples[t]} vs {candidate.samples[t]} documents)"
        for t in chosen
        if t in baseline.samples
        and t in candidate.samples
        and baseline.samples[t] != candidate.samples[t]
    ]
    if uneven:
        raise UnusableInput("the runs evaluated different documents: " + ", ".join(uneven))
    default, per_task = max_drop
    unknown = sorted(set(per_task) - set(chosen) - set(baseline.groups))
    if unknown:
        raise UnusableInput(f"--max-drop names {', '.join(unknown)}: not a compared task or group")
    checks = [
        Check(
            task,
            metric,
            score,
            candidate.scores[task][metric],
            _limit(task, baseline, default, per_task),
        )
        for task in chosen
        for metric, score in baseline.scores[task].items()
        if metric in candidate.scores[task]
    ]
    if not any(c.drop is not None for c in checks):
        raise UnusableInput(
            "no overlap: the two files share no general-ability metric with a known direction"
            + (f" (tasks compared: {', '.join(chosen)})" if chosen else "")
        )
    return checks


def _limit(task: str, run: Run, default: float, per_task: dict[str, float]) -> float:
    """A task's own limit, else its group's, else the default."""
    if task in per_task:
        return per_task[task]
    for group, subtasks in run.groups.items():
        if task in subtasks and group in per_task:
            return per_task[group]
    return default


def checks_table(checks: list[Check]) -> Table:
    """The gate's verdict per metric, failing ones first."""
    table = Table(title="ce-bench regress: candidate vs baseline")
    for column in (
        "task",
        "metric",
        "baseline",
        "candidate",
        "drop",
        "max drop",
        "2 x se",
        "verdict",
    ):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for c in sorted(checks, key=lambda c: (not c.failed, c.task, c.metric)):
        drop = c.drop
        verdict = "[red]FAIL[/red]" if c.failed else ("ok" if drop is not None else "no direction")
        table.add_row(
            c.task,
            c.metric,
            _with_stderr(c.baseline),
            _with_stderr(c.candidate),
            "" if drop is None else f"{drop:+.4f}",
            f"{c.max_drop:.4f}",
            f"{2 * c.combined_stderr:.4f}",
            verdict,
        )
    return table


def _with_stderr(score: Score) -> str:
    return f"{score.value:.4f}" + (f" ± {score.stderr:.4f}" if score.stderr is not None else "")
