"""The leaderboard: every run's metrics next to the unedited model's, one section per task family.

A section is one table. In the edit families (concept editing, erasure, lifelong, privacy) a row
is one run on one task and the columns are the family's metrics; in the general-ability section
a row is one run and a column is one task's headline metric, so side effects read across. Each
cell holds the value (with lm-eval's stderr where it gives one) and its delta from the unedited
model: the `_base` value the paired task measured in the same run, else the value of an
unedited run of the same base model on the same task.

`write_board` writes board.md, board.html (self-contained, sortable columns) and the PNG plots
of `ce_bench.board.plots`.
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ce_bench.board.cost import CAPTION as COST_CAPTION
from ce_bench.board.cost import MethodCost, cost_grid, method_costs
from ce_bench.board.runs import (
    GENERAL,
    Run,
    Score,
    checkpoint_of,
    families,
    family,
    headline,
)
from ce_bench.board.samples import SamplesCache, SamplesMismatch, compare_in_run, compare_runs
from ce_bench.stats import PairedComparison, unpaired_interval
from ce_bench.tables import Grid
from ce_bench.versions import mixed_versions

SELECTION = "validation split (strength selection)"
ALPHA = 0.05  # a delta or a ranking step is marked significant below this two-sided p
IDENTITY = (
    "model", "method", "layer", "target", "strength", "seed", "split", "settings", "artifact"
)  # fmt: skip


@dataclass(frozen=True)
class Column:
    task: str  # "" in edit families: the row's task
    metric: str
    higher_is_better: bool | None

    @property
    def title(self) -> str:
        return f"{self.task} {self.metric}" if self.task else self.metric


@dataclass(frozen=True)
class Uncertainty:
    """How sure a cell's delta is: its 95% interval and two-sided p-value, from the documents
    paired (`n_paired` of them) where samples allow, else from the two stderrs (`paired` False)."""

    ci: tuple[float, float]
    p_value: float | None
    n_paired: int | None
    paired: bool

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA


@dataclass(frozen=True)
class Cell:
    score: Score
    base: float | None
    uncertainty: Uncertainty | None = None

    @property
    def delta(self) -> float | None:
        return None if self.base is None else self.score.value - self.base


@dataclass
class Row:
    run: Run
    task: str  # "" in the general-ability section
    cells: dict[str, Cell]  # column title -> cell

    def identity(self) -> dict[str, str]:
        """What the row is: IDENTITY's fields of its run, and its task."""
        run = self.run
        fields = (run.base_model, run.method, run.layer, run.target, run.strength, run.seed)
        rest = (run.split, run.settings, run.artifact)
        return dict(zip(IDENTITY, (*fields, *rest), strict=True)) | {"task": self.task}


@dataclass(frozen=True)
class Step:
    """Two neighbours in a section's ranking by its headline metric: `above` scored better than
    `below` on `task`; `p_value` (two-sided, paired over `n_paired` shared documents where
    samples allow) says whether the data supports that order."""

    task: str
    above: str
    below: str
    p_value: float | None
    n_paired: int | None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA

    def text(self) -> str:
        if self.p_value is None:
            return f"{self.above} ? {self.below} (no stderr: untested)"
        how = f"p = {self.p_value:.2g}" + (f", n = {self.n_paired} paired" if self.n_paired else "")
        if self.significant:
            return f"{self.above} > {self.below} ({how})"
        return f"{self.above} ≈ {self.below} ({how}: not significant)"


@dataclass(frozen=True)
class AcrossSeeds:
    """One method's runs that differ only in their seed (and so in the strength chosen on each
    seed's validation split): per column, the mean and standard deviation over the seeds."""

    label: str
    task: str
    seeds: list[str]
    cells: dict[str, tuple[float, float]]  # column title -> (mean, sd)

    def text(self) -> str:
        values = "; ".join(f"{t} {m:.3f} ± {sd:.3f}" for t, (m, sd) in self.cells.items())
        where = f" on {self.task}" if self.task else ""
        return f"{self.label}{where}, seeds {', '.join(self.seeds)}: {values}"


@dataclass
class Summary:
    """A family at a glance: methods down; targets across (the emotion, the class; for lifelong
    editing the edit set and T; for general ability the tasks); each cell the headline metric
    of one run with its change from the unedited model. `leaders` holds, per column, the best
    cell and every cell the data cannot tell from it (p >= ALPHA, or untested), unless that is
    every cell of the column."""

    metric: str
    columns: list[str]
    rows: dict[str, dict[str, Cell]]  # method -> column -> cell
    unedited: dict[str, float]  # column -> the unedited model's value
    leaders: set[tuple[str, str]] = field(default_factory=set)  # (method, column)


@dataclass
class Section:
    title: str
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)
    ranking: list[Step] = field(default_factory=list)
    family: str = ""  # the family the section belongs to (its title, or the title it selects for)
    summary: Summary | None = None
    costs: list[MethodCost] = field(default_factory=list)  # per summary method, if recorded

    def across_seeds(self) -> list[AcrossSeeds]:
        """Mean ± sd over seeds of each group of rows that differ only in seed and strength."""
        groups: dict[tuple[str, ...], list[Row]] = {}
        for row in self.rows:
            run = row.run
            if run.seed:
                key = (run.base_model, run.method, run.layer, run.target, run.split, row.task)
                groups.setdefault((*key, run.settings), []).append(row)
        summaries = []
        for rows in groups.values():
            seeds = sorted({r.run.seed for r in rows}, key=lambda s: (len(s), s))
            if len(seeds) < 2:
                continue
            cells = {}
            for column in self.columns:
                values = [r.cells[c].score.value for r in rows if (c := column.title) in r.cells]
                if len(values) == len(rows):
                    cells[column.title] = (statistics.mean(values), statistics.stdev(values))
            run = rows[0].run
            parts = (run.method, f"L{run.layer}" if run.layer else "", run.target, run.split)
            label = " ".join(p for p in parts if p)
            summaries.append(AcrossSeeds(label, rows[0].task, seeds, cells))
        return summaries

    @property
    def rank_by(self) -> Column:
        """The column rows are ranked by: the family's headline metric."""
        return self.columns[0]

    @property
    def has_task_column(self) -> bool:
        return self.title != GENERAL

    def identity_columns(self) -> list[str]:
        """Identity columns that say something in this section (all-empty ones are left out)."""
        used = [c for c in IDENTITY if any(r.identity()[c] for r in self.rows)]
        return used + (["task"] if self.has_task_column else [])


def build_board(runs: list[Run]) -> list[Section]:
    """Sections in `families()` order (general ability last); empty families are left out.

    Runs on a validation split (a sweep's strength selection) get a section of their own after
    their family's, so the family's table holds only reported (test) numbers.
    """
    unedited = [r for r in runs if not r.edited]
    deltas = Deltas(unedited)
    ordered = sorted(runs, key=lambda r: (r.edited, r.key, r.path.name))
    selection = [r for r in ordered if r.split == "validation"]
    reported = [r for r in ordered if r.split != "validation"]
    sections = []
    for title in families():
        if title == GENERAL:
            tasks = _tasks(reported, title)
            if tasks:
                sections.append(_general_section(reported, tasks, deltas))
            continue
        for chosen, name in ((reported, title), (selection, f"{title}: {SELECTION}")):
            tasks = _tasks(chosen, title)
            if tasks:
                sections.append(_family_section(name, title, chosen, tasks, deltas))
    for section in sections:
        section.ranking = deltas.ranking(section)
        section.summary = deltas.summary(section)
        if section.title != GENERAL:
            runs_by_method: dict[str, list[Run]] = {}
            for (name, _), (row, _) in summary_places(section).items():
                runs_by_method.setdefault(name, []).append(row.run)
            section.costs = method_costs(runs_by_method)
    return sections


def _tasks(runs: list[Run], title: str) -> list[str]:
    seen: dict[str, None] = {}
    for run in runs:
        for task in run.scores:
            if family(task) == title and run.scores[task]:
                seen.setdefault(task)
    return sorted(seen)


def _family_section(
    title: str, family: str, runs: list[Run], tasks: list[str], deltas: Deltas
) -> Section:
    metrics: dict[str, None] = {}
    for task in tasks:
        names = _metrics(runs, task)
        for metric in [headline(task, names), *names]:
            metrics.setdefault(metric)
    columns = [Column("", m, _direction(runs, tasks, m)) for m in metrics]
    section = Section(title, columns, family=family)
    for run in runs:
        for task in tasks:
            if task in run.scores:
                cells = {m: deltas.cell(run, task, m) for m in run.scores[task] if m in metrics}
                section.rows.append(Row(run, task, cells))
    return section


def _general_section(runs: list[Run], tasks: list[str], deltas: Deltas) -> Section:
    columns = []
    for task in tasks:
        metric = headline(task, _metrics(runs, task))
        columns.append(Column(task, metric, _direction(runs, [task], metric)))
    section = Section(GENERAL, columns, family=GENERAL)
    for run in runs:
        cells = {
            c.title: deltas.cell(run, c.task, c.metric)
            for c in columns
            if c.metric in run.scores.get(c.task, {})
        }
        if cells:
            section.rows.append(Row(run, "", cells))
    return section


def _metrics(runs: list[Run], task: str) -> list[str]:
    """A task's metrics over all runs, in the order they first appear; a retention curve's
    (`rel@10`) are drawn, not tabled."""
    names = (m for run in runs for m in run.scores.get(task, {}) if checkpoint_of(m) is None)
    return list(dict.fromkeys(names))


def _direction(runs: list[Run], tasks: list[str], metric: str) -> bool | None:
    """lm-eval's higher_is_better for the metric, from the first run that reports it."""
    for run in runs:
        for task in tasks:
            score = run.scores.get(task, {}).get(metric)
            if score is not None:
                return score.higher_is_better
    return None


def summary_places(section: Section) -> dict[tuple[str, str], tuple[Row, Column]]:
    """(method name, column name) -> the edited row and column that fill that summary cell.

    Columns are the targets (the emotion, the class; else the task), for lifelong editing the
    edit set and T, in the general-ability section the tasks. A method is named by what it is
    (method, layer, the settings that differ between its runs, a seed other than 0),
    with its target and strength in the general-ability section, where the columns are tasks.
    Rows that would still share a cell are told apart by their strength and artifact.
    """
    general = section.title == GENERAL
    lifelong = section.family.startswith("Lifelong")
    edited = [r for r in section.rows if r.run.edited]
    shared: dict[str, set[str]] = {}  # method -> the settings all its runs have
    for row in edited:
        mine = set(row.run.settings.split())
        shared[row.run.method] = shared.get(row.run.method, mine) & mine
    found: dict[tuple[str, str], list[tuple[Row, Column]]] = {}
    for row in edited:
        run = row.run
        name = _method_name(run, shared[run.method], with_target=general)
        if general:
            for column in (c for c in section.columns if c.title in row.cells):
                found.setdefault((name, column.title), []).append((row, column))
        elif section.rank_by.title in row.cells:
            place = f"{run.target} T={run.strength}" if lifelong else (run.target or row.task)
            found.setdefault((name, place), []).append((row, section.rank_by))
    placed = {}
    for (name, place), entries in found.items():
        for row, column in entries:
            run = row.run
            extra = [] if len(entries) == 1 else [f"x{run.strength}", f"[{run.artifact}]"]
            placed[(" ".join([name, *extra]), place)] = (row, column)
    return placed


def _method_name(run: Run, shared: set[str], with_target: bool) -> str:
    strength = as_number(run.strength)
    dose = f"x{strength:.3g}" if strength is not None else f"x{run.strength}" * bool(run.strength)
    parts = [run.method, f"L{run.layer}" if run.layer else ""]
    parts += [run.target, dose] if with_target else []
    parts += [p for p in run.settings.split() if p not in shared]
    parts.append(f"seed {run.seed}" if run.seed not in ("", "0") else "")
    return " ".join(p for p in parts if p)


def as_number(text: str) -> float | None:
    """A strength or T as a number; None for one that is not ("1+2")."""
    try:
        return float(text)
    except ValueError:
        return None


class Deltas:
    """Each edited cell's unedited value and how sure its delta is (ce_bench.stats): paired over
    the documents where the run's samples hold both states (a paired task) or an unedited run of
    the same model logged the same documents; else from the two stderrs."""

    def __init__(self, unedited: list[Run]) -> None:
        self.unedited = unedited
        self.samples = SamplesCache()

    def cell(self, run: Run, task: str, metric: str) -> Cell:
        score = run.scores[task][metric]
        base, source = self._base(run, task, metric)
        if base is None or source is None:
            return Cell(score, None)
        return Cell(score, base, self._uncertainty(run, source, task, metric, base))

    def _base(self, run: Run, task: str, metric: str) -> tuple[float | None, Run | None]:
        """The unedited value and the run that measured it: the same run, else an unedited run
        of the same model (one with the same number of documents first)."""
        if not run.edited:
            return None, None
        own = run.scores[task][metric]
        if own.base is not None:
            return own.base, run
        matching = [
            u
            for u in self.unedited
            if u.base_model == run.base_model and metric in u.scores.get(task, {})
        ]
        matching.sort(key=lambda u: (u.samples.get(task) != run.samples.get(task), u.path.name))
        return (matching[0].scores[task][metric].value, matching[0]) if matching else (None, None)

    def _uncertainty(
        self, run: Run, source: Run, task: str, metric: str, base: float
    ) -> Uncertainty:
        score = run.scores[task][metric]
        direction = score.higher_is_better is not False
        if source is run:
            mine = self.samples.of(run).get(task)
            paired = compare_in_run(mine, metric, direction) if mine is not None else None
        else:
            paired = self._between(source, run, task, metric, direction)
        if paired is not None:
            return Uncertainty(paired.ci, paired.p_two_sided, paired.n, True)
        base_se = score.base_stderr if source is run else source.scores[task][metric].stderr
        ci, p = unpaired_interval(score.value - base, score.stderr, base_se)
        return Uncertainty(ci, p, None, False)

    def _between(
        self, base: Run, other: Run, task: str, metric: str, higher_is_better: bool
    ) -> PairedComparison | None:
        """`metric` of `other` against `base` over the documents both logged; None without both
        runs' samples or when they are not the same documents (the stderrs are all there is)."""
        first, second = self.samples.of(base).get(task), self.samples.of(other).get(task)
        if first is None or second is None:
            return None
        try:
            return compare_runs(first, second, task, metric, higher_is_better)
        except SamplesMismatch:
            return None

    def ranking(self, section: Section) -> list[Step]:
        """The edited rows of each task ranked by the section's headline metric, best first,
        each neighbouring pair tested on the documents both evaluated."""
        column = section.rank_by
        steps = []
        for task in dict.fromkeys(column.task or r.task for r in section.rows):
            title = column.title
            rows = [
                r
                for r in section.rows
                if r.run.edited and (column.task or r.task) == task and title in r.cells
            ]
            better = column.higher_is_better is not False
            rows.sort(key=lambda r: r.cells[title].score.value, reverse=better)
            for above, below in itertools.pairwise(rows):
                steps.append(self._step(task, column, above, below, better))
        return steps

    def summary(self, section: Section) -> Summary:
        """The section at a glance (see Summary): the headline metric of each family section,
        every task's headline in the general-ability one."""
        placed = summary_places(section)
        metric = "each task's headline" if section.title == GENERAL else section.rank_by.metric
        summary = Summary(metric, [], {}, {})
        for (name, place), (row, column) in placed.items():
            cell = row.cells[column.title]
            summary.rows.setdefault(name, {})[place] = cell
            if place not in summary.columns:
                summary.columns.append(place)
            if cell.base is not None:
                summary.unedited.setdefault(place, cell.base)
        for row in (r for r in section.rows if not r.run.edited):  # general ability's
            for title, cell in row.cells.items():
                summary.unedited.setdefault(title, cell.score.value)
        for place in summary.columns:
            entries = [(n, row, c) for (n, p), (row, c) in placed.items() if p == place]
            if len(entries) < 2:
                continue
            better = entries[0][2].higher_is_better is not False
            entries.sort(key=lambda e: e[1].cells[e[2].title].score.value, reverse=better)
            top_name, top, column = entries[0]
            task = column.task or top.task
            leaders = {top_name} | {
                name
                for name, row, _ in entries[1:]
                if not self._step(task, column, top, row, better).significant
            }
            if len(leaders) < len(entries):  # else the data tells none of them apart
                summary.leaders |= {(name, place) for name in leaders}
        return summary

    def _step(self, task: str, column: Column, above: Row, below: Row, better: bool) -> Step:
        paired = self._between(below.run, above.run, task, column.metric, better)
        if paired is not None:
            p, n = paired.p_two_sided, paired.n
        else:
            a, b = above.cells[column.title], below.cells[column.title]
            _, p = unpaired_interval(a.score.value - b.score.value, a.score.stderr, b.score.stderr)
            n = None
        return Step(task, above.run.label, below.run.label, p, n)


# ---------------------------------------------------------------------------- rendering
def number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def cell_text(cell: Cell | None) -> str:
    """'0.450 ± 0.031 (unedited 0.400, +0.050 [+0.010, +0.090]*)': the value, its stderr, the
    unedited value and the delta with its 95% interval, each when known; `*` marks a delta
    whose p < ALPHA, `~` an interval from the stderrs (documents not paired)."""
    if cell is None:
        return ""
    text = number(cell.score.value)
    if cell.score.stderr is not None:
        text += f" ± {number(cell.score.stderr)}"
    if cell.delta is not None:
        text += f" (unedited {number(cell.base)}, {delta_text(cell)})"
    return text


def delta_text(cell: Cell) -> str:
    """'+0.050 [+0.010, +0.090]*': the delta, its interval and its marks."""
    text = signed(cell.delta)
    u = cell.uncertainty
    if u is not None and all(map(math.isfinite, u.ci)):
        text += f" [{signed(u.ci[0])}, {signed(u.ci[1])}]" + ("" if u.paired else "~")
    return text + ("*" if u is not None and u.significant else "")


def signed(value: float | None) -> str:
    """'+0.050', '-12.3': a change with its sign (never '-0.000')."""
    if value is None:
        return ""
    return f"{round(value, 3) + 0.0:+.3f}" if abs(value) < 100 else f"{value:+.1f}"


def version_notes(runs: list[Run]) -> list[str]:
    """Warnings for a board whose runs were made with different versions of the stack (the
    same edit can score differently on another transformers or torch); empty when they agree."""
    mixed = mixed_versions([(run.label, run.versions) for run in runs])
    return [f"runs made with different versions of {line}" for line in mixed]


def to_markdown(sections: list[Section], notes: list[str] | None = None) -> str:
    lines = ["# ce-bench leaderboard", ""]
    lines += [f"> **Warning**: {note}" for note in notes or []] + ([""] if notes else [])
    lines += [LEGEND, "", COST_CAPTION]
    for section in sections:
        ident = section.identity_columns()
        lines += ["", f"## {section.title}", ""]
        header = ident + [c.title for c in section.columns]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(ident) + "---:|" * len(section.columns))
        for row in section.rows:
            values = row.identity()
            cells = [values[c] for c in ident] + [
                cell_text(row.cells.get(c.title)) for c in section.columns
            ]
            lines.append("| " + " | ".join(v.replace("|", "\\|") for v in cells) + " |")
        lines += ranking_lines(section) + seed_lines(section)
        if section.costs:
            lines += [
                "",
                "Cost per run (see the legend):",
                "",
                cost_grid("", section.costs).markdown(),
            ]
    return "\n".join(lines) + "\n"


LEGEND = (
    "Each cell: value ± lm-eval stderr (the unedited model's value, the change from it with its"
    " 95% interval). The interval is a paired bootstrap over the documents both states"
    " evaluated (seeded, 2000 resamples) where the samples allow, else (marked ~) the normal"
    f" interval from the two stderrs; * marks a change with two-sided p < {ALPHA} (exact"
    ' McNemar for 0/1 metrics, sign-flip test otherwise). Rows with method "unedited" are the'
    " base models. Under each table, the ranking by its first metric says which neighbours"
    " differ significantly."
)


def seed_lines(section: Section) -> list[str]:
    """'Across seeds (mean ± sd): steering L27 anger test, seeds 0, 1, 2: success_rate ...'."""
    lines = []
    for summary in section.across_seeds():
        lines += ["", f"Across seeds (mean ± sd): {summary.text()}."]
    return lines


def ranking_lines(section: Section) -> list[str]:
    """'Ranked by success_rate on concept_emotion_target: a > b (p = 0.01), b ≈ c (...)'."""
    lines = []
    for task in dict.fromkeys(step.task for step in section.ranking):
        steps = [step.text() for step in section.ranking if step.task == task]
        lines += ["", f"Ranked by {section.rank_by.metric} on {task}: " + "; ".join(steps) + "."]
    return lines


def terminal_grids(sections: list[Section], metrics: int = 5) -> list[Grid]:
    """Compact tables for the terminal: a run's label, its task, the first `metrics` metrics as
    'value (delta)'; board.md and board.html have every column."""
    grids = []
    for section in sections:
        columns = section.columns[:metrics]
        models = len({r.run.base_model for r in section.rows}) > 1
        task = section.has_task_column
        keys = [*(["model"] if models else []), "run", *(["task"] if task else [])]
        rows = []
        for row in section.rows:
            cells = [row.cells.get(c.title) for c in columns]
            texts = [
                ""
                if c is None
                else number(c.score.value)
                + ("" if c.delta is None else f" ({signed(c.delta)}{_mark(c)})")
                for c in cells
            ]
            names = [*([row.run.base_model] if models else []), row.run.label]
            rows.append([*names, *([row.task] if task else []), *texts])
        heads = [*keys, *(c.title for c in columns)]
        grids.append(Grid(section.title, heads, rows, keys=len(keys)))
    return grids


def _mark(cell: Cell) -> str:
    return "*" if cell.uncertainty is not None and cell.uncertainty.significant else ""


def to_html(sections: list[Section], plots: dict[str, list[str]]) -> str:
    """A self-contained page that reads at 1366 px without sideways scrolling: per family a
    summary (methods x targets, the headline metric with its change and interval, the leaders
    of each column in bold, the unedited model pinned on top) beside the family's plots, the
    ranking, and every run with every metric one click away (collapsed, sortable, ranked by the
    headline metric on load). `plots` maps a family to its 'name:base64' PNGs."""
    body, links = [], []
    for number_, title in enumerate(dict.fromkeys(s.family for s in sections)):
        mine = [s for s in sections if s.family == title]
        main = mine[0]
        links.append(f'<a href="#f{number_}">{html.escape(title)}</a>')
        figures = "".join(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
            f"<figcaption>{html.escape(name.split('_', 1)[-1].replace('_', ' '))}</figcaption>"
            "</figure>"
            for name, data in (p.split(":", 1) for p in plots.get(title, []))
        )
        ranked = _ranking_details(main)
        details = "".join(
            f"<details><summary>{html.escape(_detail_title(s))} ({len(s.rows)} rows, every"
            f' metric)</summary><div class="scroll">{_full_table(s)}</div></details>'
            for s in mine
        )
        glance = _summary_table(main.summary) if main.summary else ""
        glance += _cost_table(main.costs) if main.costs else ""
        body.append(
            f'<section id="f{number_}"><h2>{html.escape(title)}</h2>'
            f'<div class="glance">{glance}{figures}</div>{ranked}{details}</section>'
        )
    return _PAGE.format(legend=html.escape(LEGEND), links=" · ".join(links), body="".join(body))


def _ranking_details(section: Section) -> str:
    """The ranking and the across-seed summaries, collapsed under a line that counts how many
    neighbour orders the data supports."""
    notes = [line for line in ranking_lines(section) + seed_lines(section) if line]
    if not notes:
        return ""
    supported = sum(step.significant for step in section.ranking)
    head = (
        f"Ranking by {section.rank_by.metric}: {supported} of {len(section.ranking)} neighbour"
        f" orders supported by the data (p < {ALPHA})"
    )
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in notes)
    return f"<details><summary>{html.escape(head)}</summary>{lines}</details>"


def _detail_title(section: Section) -> str:
    return "Every run" if section.title == section.family else section.title.split(": ", 1)[1]


def _summary_table(summary: Summary) -> str:
    """The family's summary as a sortable table: unedited first, then one row per method."""
    heads = "<th>method</th>" + "".join(
        f'<th class="num">{html.escape(c).replace("_", "_<wbr>")}</th>' for c in summary.columns
    )
    unedited = "".join(
        f'<td class="num" data-v="{summary.unedited.get(c, "")}">'
        f"{number(summary.unedited.get(c))}</td>"
        for c in summary.columns
    )
    rows = [f'<tr class="unedited"><td>unedited</td>{unedited}</tr>'] if summary.unedited else []
    for name, cells in summary.rows.items():
        tds = f"<td>{html.escape(name)}</td>"
        for column in summary.columns:
            cell = cells.get(column)
            if cell is None:
                tds += '<td class="num" data-v=""></td>'
                continue
            lead = ' class="num lead"' if (name, column) in summary.leaders else ' class="num"'
            change = "" if cell.delta is None else f"<small>{html.escape(delta_text(cell))}</small>"
            tds += (
                f'<td{lead} data-v="{cell.score.value!r}">{number(cell.score.value)}{change}</td>'
            )
        rows.append(f"<tr>{tds}</tr>")
    caption = (
        f"{html.escape(summary.metric)}; under each value its change from the unedited model"
        " [95% interval]; bold: a column's best and the runs the data cannot tell from it"
        " (none where it tells none apart)."
    )
    return (
        f'<div class="summary"><table data-rank="-1"><thead><tr>{heads}</tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table><p class="caption">{caption}</p></div>'
    )


def _cost_table(costs: list[MethodCost]) -> str:
    grid = cost_grid("", costs)
    heads = "".join(
        f"<th{'' if i < grid.keys else ' class=num'}>{html.escape(h)}</th>"
        for i, h in enumerate(grid.headings)
    )
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td{'' if i < grid.keys else ' class=num'}>{html.escape(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in grid.rows
    )
    return (
        f'<div class="summary"><table class="cost"><thead><tr>{heads}</tr></thead>'
        f'<tbody>{rows}</tbody></table><p class="caption">{html.escape(COST_CAPTION)}</p></div>'
    )


def _full_table(section: Section) -> str:
    """Every row of a section with its identity and every metric, ranked by the headline."""
    ident = section.identity_columns()
    order = "desc" if section.rank_by.higher_is_better is not False else "asc"
    heads = "".join(f"<th>{html.escape(c)}</th>" for c in ident) + "".join(
        f'<th class="num">{html.escape(c.title)}</th>' for c in section.columns
    )
    rows = []
    for row in section.rows:
        values = row.identity()
        tds = "".join(f"<td>{html.escape(values[c])}</td>" for c in ident)
        for column in section.columns:
            cell = row.cells.get(column.title)
            value = "" if cell is None else repr(cell.score.value)
            tds += f'<td class="num" data-v="{value}">{html.escape(cell_text(cell))}</td>'
        pin = "" if row.run.edited else ' class="unedited"'
        rows.append(f"<tr{pin}>{tds}</tr>")
    return (
        f'<table class="full" data-rank="{len(ident)}" data-order="{order}"><thead><tr>{heads}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ce-bench leaderboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1280px;
        padding: 0 1em; color: #222; }}
nav {{ margin-bottom: 0.5em; }}
section {{ border-top: 2px solid #ddd; margin-top: 1.5em; }}
.glance {{ display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }}
.summary {{ max-width: 100%; overflow-x: auto; }}
.scroll {{ max-width: 100%; overflow-x: auto; }}
table {{ border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }}
th {{ background: #f0f0f0; cursor: pointer; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.num small {{ display: block; color: #555; }}
.summary table {{ font-size: 0.85em; }}
.summary td.num {{ min-width: 6em; }}
td.lead {{ font-weight: bold; }}
tr.unedited {{ background: #fafae0; }}
table.full {{ font-size: 0.8em; }}
.caption {{ font-size: 0.85em; color: #555; max-width: 40em; }}
figure {{ margin: 0; }}
img {{ max-width: 100%; }}
details {{ margin: 0.5em 0; }}
summary {{ cursor: pointer; color: #035; }}
</style></head>
<body><h1>ce-bench leaderboard</h1>
<nav>{links}</nav>
<details><summary>How to read a cell</summary><p>{legend} Click a column to sort.</p></details>
{body}
<script>
function sortTable(table, col, order) {{
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const key = (r) => {{
    const cell = r.cells[col];
    const v = cell.dataset.v;
    return v !== undefined ? (v === "" ? NaN : parseFloat(v)) : cell.textContent;
  }};
  rows.sort((a, b) => {{
    const pin = b.classList.contains("unedited") - a.classList.contains("unedited");
    if (pin) return pin;
    const x = key(a), y = key(b);
    if (typeof x === "number" && (isNaN(x) || isNaN(y))) return isNaN(x) - isNaN(y);
    const c = x < y ? -1 : x > y ? 1 : 0;
    return order === "desc" ? -c : c;
  }});
  rows.forEach((r) => body.appendChild(r));
  table.dataset.sorted = col + ":" + order;
}}
document.querySelectorAll("table").forEach((table) => {{
  table.querySelectorAll("th").forEach((th, col) => th.addEventListener("click", () => {{
    const again = table.dataset.sorted === col + ":desc";
    sortTable(table, col, again ? "asc" : "desc");
  }}));
  const rank = parseInt(table.dataset.rank);
  if (rank >= 0) sortTable(table, rank, table.dataset.order);
}});
document.body.dataset.ready = "yes";
</script></body></html>
"""


def write_board(
    sections: list[Section], out: Path, notes: list[str] | None = None
) -> dict[str, Path]:
    """board.md, board.html, board.json and the plots of a built board, into `out`; `notes`
    (warnings such as `version_notes`) head board.md."""
    from ce_bench.board.plots import embedded, write_plots

    out.mkdir(parents=True, exist_ok=True)
    written = write_plots(sections, out)
    files = {"markdown": out / "board.md", "html": out / "board.html", "json": out / "board.json"}
    files["markdown"].write_text(to_markdown(sections, notes))
    shown = {family: [embedded(p) for p in paths] for family, paths in written.items()}
    files["html"].write_text(to_html(sections, shown))
    files["json"].write_text(json.dumps(to_json(sections), indent=1) + "\n")
    return {**files, **{p.stem: p for paths in written.values() for p in paths}}


def to_json(sections: list[Section]) -> list[dict]:
    """The board as data, for other tools: section -> rows of identity and cells."""
    return [
        {
            "section": s.title,
            "rows": [
                {
                    **r.identity(),
                    "results_file": str(r.run.path),
                    "fingerprint": r.run.fingerprint,
                    "cells": {
                        title: {
                            "value": c.score.value,
                            "stderr": c.score.stderr,
                            "unedited": c.base,
                            "delta": c.delta,
                            **_uncertainty_json(c.uncertainty),
                        }
                        for title, c in r.cells.items()
                    },
                }
                for r in s.rows
            ],
            "ranking": [
                {**dataclasses.asdict(step), "significant": step.significant} for step in s.ranking
            ],
            "across_seeds": [
                {
                    "label": a.label,
                    "task": a.task,
                    "seeds": a.seeds,
                    "cells": {t: {"mean": m, "sd": sd} for t, (m, sd) in a.cells.items()},
                }
                for a in s.across_seeds()
            ],
            "costs": [dataclasses.asdict(c) for c in s.costs],
        }
        for s in sections
    ]


def _uncertainty_json(u: Uncertainty | None) -> dict[str, object]:
    """delta_ci, p_value, n_paired and paired of a cell with a delta; nothing otherwise."""
    if u is None:
        return {}
    ci = [v if math.isfinite(v) else None for v in u.ci]
    return {"delta_ci": ci, "p_value": u.p_value, "n_paired": u.n_paired, "paired": u.paired}
