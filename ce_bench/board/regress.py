"""The CI gate: did an edit cost the model general ability?

`ce-bench regress --baseline A --candidate B` compares the general-ability tasks (ce_general,
ce_general_mini, ce_perplexity, lm-eval's own; see `runs.family`) of two results files of the
same base model; `ce-bench regress --paired RUN` compares the unedited and edited halves of the
paired tasks in one run. Which way is "worse" comes from lm-eval's `higher_is_better`.

With per-document samples (`lm_eval --log_samples`) the documents are paired (ce_bench.stats): a
metric fails when its drop exceeds the allowed drop (absolute, default 0.02) AND the one-sided
paired test ("the candidate is worse": exact McNemar for 0/1 metrics, a sign-flip test for
continuous ones) rejects at alpha (default 0.05) after Holm's correction over the paired metrics
checked. Without samples the unpaired rule applies: the drop must exceed the allowed drop AND two
combined standard errors, sqrt(se_A^2 + se_B^2) (a missing stderr counts 0); the table shows that
threshold, the smallest drop such a gate can see at that n.

Exit codes: 0 pass, 1 a metric failed, 2 the two files cannot be compared.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from rich import box
from rich.table import Table

from ce_bench.board.leaderboard import signed
from ce_bench.board.runs import GENERAL, BoardError, Run, Score, family, load_runs
from ce_bench.board.samples import SamplesMismatch, compare_in_run, compare_runs, samples_of
from ce_bench.stats import PairedComparison, holm, unpaired_detectable_drop

PASS, FAIL, UNUSABLE = 0, 1, 2
DEFAULT_MAX_DROP = 0.02
DEFAULT_ALPHA = 0.05


class UnusableInput(BoardError):
    """The baseline and candidate cannot be compared (exit code 2)."""


@dataclass(frozen=True)
class Check:
    """One metric of one task, baseline against candidate; `paired` when per-document samples
    pair them, with `p_adjusted` its Holm-adjusted one-sided p-value."""

    task: str
    metric: str
    baseline: Score
    candidate: Score
    max_drop: float
    paired: PairedComparison | None = None
    p_adjusted: float | None = None
    alpha: float = DEFAULT_ALPHA

    @property
    def higher_is_better(self) -> bool | None:
        return self.baseline.higher_is_better

    @property
    def drop(self) -> float | None:
        """How much worse the candidate is (negative: better); None if the direction is unknown."""
        if self.higher_is_better is None:
            return None
        change = self.paired.delta if self.paired else self.candidate.value - self.baseline.value
        return -change if self.higher_is_better else change

    @property
    def drop_ci(self) -> tuple[float, float] | None:
        """The 95% interval of the drop (paired only)."""
        if self.paired is None or self.higher_is_better is None:
            return None
        low, high = self.paired.ci
        return (-high, -low) if self.higher_is_better else (low, high)

    @property
    def detectable(self) -> float:
        """The unpaired rule's threshold: the smallest drop it can fail."""
        return unpaired_detectable_drop(self.baseline.stderr, self.candidate.stderr)

    @property
    def failed(self) -> bool:
        drop = self.drop
        if drop is None or drop <= self.max_drop:
            return False
        if self.paired is not None:
            return self.p_adjusted is not None and self.p_adjusted <= self.alpha
        return drop > self.detectable


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
    alpha: float = DEFAULT_ALPHA,
) -> list[Check]:
    """Every comparable metric of the chosen tasks (default: both runs' general-ability tasks),
    paired by document where both runs logged samples.

    Raises UnusableInput for different base models, a task missing from one run, different
    sample counts or documents, or nothing to compare.
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
    _check_limits(per_task, chosen, baseline)
    base_samples, cand_samples = samples_of(baseline), samples_of(candidate)
    checks = []
    for task in chosen:
        for metric, score in baseline.scores[task].items():
            if metric not in candidate.scores[task]:
                continue
            paired = None
            if task in base_samples and task in cand_samples and score.higher_is_better is not None:
                try:
                    paired = compare_runs(
                        base_samples[task], cand_samples[task], task, metric, score.higher_is_better
                    )
                except SamplesMismatch as err:
                    raise UnusableInput(str(err)) from err
            limit = _limit(task, baseline, default, per_task)
            checks.append(
                Check(
                    task, metric, score, candidate.scores[task][metric], limit, paired, None, alpha
                )
            )
    if not any(c.drop is not None for c in checks):
        raise UnusableInput(
            "no overlap: the two files share no general-ability metric with a known direction"
            + (f" (tasks compared: {', '.join(chosen)})" if chosen else "")
        )
    return _holm(checks)


def compare_paired_run(
    run: Run,
    tasks: list[str] | None = None,
    max_drop: tuple[float, dict[str, float]] = (DEFAULT_MAX_DROP, {}),
    alpha: float = DEFAULT_ALPHA,
) -> list[Check]:
    """The unedited (`<metric>_base`) against the edited half of every paired general-ability
    task in one run (default: all of them), paired by document where the run logged samples."""
    paired_tasks = sorted(
        t
        for t, metrics in run.scores.items()
        if family(t) == GENERAL and any(s.base is not None for s in metrics.values())
    )
    chosen = tasks or paired_tasks
    unknown = [t for t in chosen if t not in paired_tasks]
    if unknown or not chosen:
        raise UnusableInput(
            f"{run.path}: no paired general-ability task"
            + (f" named {', '.join(unknown)}" if unknown else "")
            + " (it holds both states only for tasks such as ce_paired_general_mini, run with"
            " --model edited_hf)"
        )
    default, per_task = max_drop
    _check_limits(per_task, chosen, run)
    samples = samples_of(run)
    checks = []
    for task in chosen:
        for metric, score in run.scores[task].items():
            if score.base is None:
                continue
            base = Score(score.base, score.base_stderr, score.higher_is_better)
            direction = score.higher_is_better
            paired = (
                compare_in_run(samples[task], metric, direction)
                if task in samples and direction is not None
                else None
            )
            limit = _limit(task, run, default, per_task)
            checks.append(Check(task, metric, base, score, limit, paired, None, alpha))
    return _holm(checks)


def _check_limits(per_task: dict[str, float], chosen: list[str], run: Run) -> None:
    """A `--max-drop TASK=N` must name a compared task or one of the run's groups."""
    unknown = sorted(set(per_task) - set(chosen) - set(run.groups))
    if unknown:
        raise UnusableInput(f"--max-drop names {', '.join(unknown)}: not a compared task or group")


def _holm(checks: list[Check]) -> list[Check]:
    """Each paired check with its Holm-adjusted p-value over all paired checks of the gate."""
    tested = [i for i, c in enumerate(checks) if c.paired is not None and c.drop is not None]
    adjusted = holm([checks[i].paired.p_worse for i in tested])  # type: ignore[union-attr]
    out = list(checks)
    for i, p in zip(tested, adjusted, strict=True):
        out[i] = replace(checks[i], p_adjusted=p)
    return out


def _limit(task: str, run: Run, default: float, per_task: dict[str, float]) -> float:
    """A task's own limit, else its group's, else the default."""
    if task in per_task:
        return per_task[task]
    for group, subtasks in run.groups.items():
        if task in subtasks and group in per_task:
            return per_task[group]
    return default


def checks_table(checks: list[Check]) -> Table:
    """The gate's verdict per metric, failing tasks first, in 80 columns. Paired rows: the
    drop with its 95% interval, the discordant documents (worse/better) of a 0/1 metric and the
    Holm-adjusted p; unpaired rows: the smallest drop the unpaired rule can fail."""
    table = Table(
        title="ce-bench regress: candidate vs baseline",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in ("task / metric", "n", "drop [95% CI]", "w/b", "p", "verdict"):
        left = column == "task / metric"
        table.add_column(column, justify="left" if left else "right", no_wrap=not left)
    tasks = sorted({c.task for c in checks}, key=lambda t: (not _any_failed(checks, t), t))
    for task in tasks:
        table.add_row(task)
        for c in sorted((c for c in checks if c.task == task), key=lambda c: c.metric):
            table.add_row("  " + c.metric, *_cells(c))
    return table


def _any_failed(checks: list[Check], task: str) -> bool:
    return any(c.failed for c in checks if c.task == task)


def _cells(c: Check) -> tuple[str, str, str, str, str]:
    """n, drop [CI] or the unpaired threshold, w/b, p, verdict."""
    drop, ci = c.drop, c.drop_ci
    verdict = "[red]FAIL[/red]" if c.failed else "ok" if drop is not None else "no direction"
    shown = "" if drop is None else signed(drop)
    if c.paired is None:
        return "", f"{shown} (needs >{c.detectable:.3f})", "", "unpaired", verdict
    if ci is not None:
        shown += f" [{signed(ci[0])}, {signed(ci[1])}]"
    counts = "{}/{}".format(*c.paired.discordant) if c.paired.discordant else ""
    p = "" if c.p_adjusted is None else f"{c.p_adjusted:.2g}"
    return str(c.paired.n), shown, counts, p, verdict


def unpaired_note(checks: list[Check]) -> str | None:
    """What a gate without samples cannot see, or None when every checked metric was paired."""
    blind = sorted({c.task for c in checks if c.paired is None and c.drop is not None})
    if not blind:
        return None
    return (
        f"unpaired (no per-document samples) for {', '.join(blind)}: a metric there fails only"
        " at a drop beyond the 'needs' column (two combined standard errors); run both with"
        " --log_samples for the paired test"
    )
