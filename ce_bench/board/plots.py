"""The leaderboard's PNG plots (matplotlib, no display needed), each with 95% error bars, one
file per family and kind (`concept-editing_dose_response.png`), shown next to the family's table:

- dose_response: each edit family's headline metric against strength (T edits for lifelong
  editors), one line per method and target, bars 1.96 lm-eval stderrs;
- per_target: concept editing's success rate per emotion, one bar per method, on the test
  split when the board has one, bars 1.96 stderrs;
- side_effects: each edited run's change in every general-ability task from the unedited
  model, bars its 95% interval (paired where the samples allow), faded where not significant;
- retention: lifelong runs with checkpoints (`eval_at=1+10+100`): each tracked metric after
  c edits, over the records edited by then, one line per run, bars 1.96 stderrs;
- quality_vs_cost: each summary cell's headline metric against the seconds its run took
  (locating included; `ce_bench.board.cost`), one colour per method, bars 1.96 stderrs.
"""

from __future__ import annotations

import base64
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend is chosen first)
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatter  # noqa: E402

from ce_bench.board.cost import method_costs  # noqa: E402
from ce_bench.board.leaderboard import Cell, Row, Section, as_number, summary_places  # noqa: E402
from ce_bench.board.runs import GENERAL, checkpoint_of  # noqa: E402

PER_TARGET = "Concept editing"  # the family whose targets (emotions) get bars
Z95 = 1.959964  # half-width of a 95% normal interval, in standard errors


def write_plots(sections: list[Section], out: Path) -> dict[str, list[Path]]:
    """The plots the board has data for, per family (its reported section and its strength
    selection together), written into `out` as `<family>_<plot>.png`."""
    drawings: dict[str, Callable[[list[Section]], Figure | None]] = {
        "dose_response": _dose_response,
        "per_target": _per_target,
        "side_effects": _side_effects,
        "retention": _retention,
        "quality_vs_cost": _quality_vs_cost,
    }
    written: dict[str, list[Path]] = {}
    for family in dict.fromkeys(s.family for s in sections):
        mine = [s for s in sections if s.family == family]
        for name, draw in drawings.items():
            figure = draw(mine)
            if figure is None:
                continue
            path = out / f"{_slug(family)}_{name}.png"
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.setdefault(family, []).append(path)
    return written


def _slug(title: str) -> str:
    return "-".join(title.lower().split())


def embedded(path: Path) -> str:
    """'name:base64' of a PNG, for the self-contained HTML page."""
    return f"{path.stem}:{base64.b64encode(path.read_bytes()).decode()}"


def _edit_sections(sections: list[Section]) -> list[Section]:
    return [s for s in sections if s.title != GENERAL]


def _headline(section: Section, row: Row) -> tuple[float, float] | None:
    """The row's headline value and half its 95% normal interval (0 without a stderr)."""
    cell = row.cells.get(section.rank_by.title)
    if cell is None:
        return None
    return cell.score.value, Z95 * (cell.score.stderr or 0.0)


def _mean_and_error(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Several runs at one dose: their mean, and an error bar only for a single run."""
    values = [v for v, _ in points]
    return sum(values) / len(values), points[0][1] if len(points) == 1 else 0.0


def _dose_response(sections: list[Section]) -> Figure | None:
    panels = []
    for section in _edit_sections(sections):
        lines: dict[str, dict[float, list[tuple[float, float]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for row in section.rows:
            value, dose = _headline(section, row), as_number(row.run.strength)
            if row.run.edited and value is not None and dose is not None:
                # one line per method and target: strength units differ between targets
                lines[f"{row.run.method} {row.run.target}".strip()][dose].append(value)
        if any(len(points) > 1 for points in lines.values()):
            panels.append((section, lines))
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (section, lines) in zip(axes[0], panels, strict=True):
        for method, points in sorted(lines.items()):
            doses = sorted(points)
            means, errors = zip(*(_mean_and_error(points[d]) for d in doses), strict=True)
            ax.errorbar(doses, means, yerr=errors, fmt="o-", capsize=3, label=method)
        lifelong = section.title.startswith("Lifelong")
        ax.set_xlabel("edits T" if lifelong else "strength")
        if lifelong:
            ax.set_xscale("log")
        ax.set_ylabel(section.rank_by.metric)
        ax.set_title(f"{section.title}: dose-response")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return figure


def _per_target(sections: list[Section]) -> Figure | None:
    panels = []
    for section in sections:
        if section.title != PER_TARGET:
            continue
        rows = [r for r in section.rows if r.run.edited and r.run.target]
        tested = [r for r in rows if r.run.split == "test"]
        bars: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for row in tested or rows:
            value = _headline(section, row)
            if value is not None:
                bars[row.run.method][row.run.target].append(value)
        if bars:
            panels.append((section, bars))
    if not panels:
        return None
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 3.5 * len(panels)), squeeze=False)
    for ax, (section, bars) in zip(axes[:, 0], panels, strict=True):
        targets = sorted({t for per in bars.values() for t in per})
        width = 0.8 / len(bars)
        for i, (method, per) in enumerate(sorted(bars.items())):
            heights, errors = zip(
                *(_mean_and_error(per[t]) if per.get(t) else (0.0, 0.0) for t in targets),
                strict=True,
            )
            x = [x + i * width for x in range(len(targets))]
            ax.bar(x, heights, width, yerr=errors, capsize=3, label=method)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(targets))], targets, rotation=20)
        ax.set_ylabel(section.rank_by.metric)
        ax.set_title(f"{section.title}: {section.rank_by.metric} per target")
        ax.legend(fontsize="small")
    figure.tight_layout()
    return figure


def _side_effects(sections: list[Section]) -> Figure | None:
    """Small multiples: one panel per general-ability task (each with its own scale, since
    accuracy and perplexity differ by orders), one bar per edited run."""
    general = next((s for s in sections if s.title == GENERAL), None)
    if general is None:
        return None
    panels = []
    for column in general.columns:
        bars = [
            (row.run.label, row.cells[column.title])
            for row in general.rows
            if row.run.edited and column.title in row.cells
        ]
        bars = [(label, cell) for label, cell in bars if cell.delta is not None]
        if bars:
            panels.append((column, bars))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    height = 0.35 * max(len(b) for _, b in panels) + 1.2
    figure, axes = plt.subplots(rows, cols, figsize=(5 * cols, height * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (column, bars) in zip(axes.flat, panels, strict=False):
        labels, cells = zip(*bars, strict=True)
        deltas = [c.delta for c in cells]
        worse = [(d < 0) if column.higher_is_better is not False else (d > 0) for d in deltas]
        sure = [c.uncertainty is not None and c.uncertainty.significant for c in cells]
        colors = [
            to_rgba("tab:red" if w else "tab:blue", 1.0 if s else 0.4)
            for w, s in zip(worse, sure, strict=True)
        ]
        arms = list(zip(*(_interval_arms(c) for c in cells), strict=True))  # (2, bars)
        ax.barh(range(len(bars)), deltas, xerr=arms, capsize=2, color=colors)
        ax.set_yticks(range(len(bars)), labels, fontsize="x-small")
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{column.title} (change)", fontsize="small")
    figure.suptitle(
        "Side effects on general ability: edited minus unedited (red: worse; bars: 95%"
        " interval; faded: not significant)"
    )
    figure.tight_layout()
    return figure


def _retention(sections: list[Section]) -> Figure | None:
    """One panel per (task, metric) with checkpoints; one line per run."""
    curves: dict[tuple[str, str], dict[str, list[tuple[int, float, float]]]] = defaultdict(dict)
    for section in _edit_sections(sections):
        for row in section.rows:
            for metric, score in row.run.scores.get(row.task, {}).items():
                found = checkpoint_of(metric)
                if found is not None and math.isfinite(score.value):
                    name, count = found
                    points = curves[(row.task, name)].setdefault(row.run.label, [])
                    points.append((count, score.value, Z95 * (score.stderr or 0.0)))
    if not curves:
        return None
    cols = min(4, len(curves))
    rows = -(-len(curves) // cols)
    figure, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(curves) :]:
        ax.axis("off")
    for ax, ((task, metric), lines) in zip(axes.flat, curves.items(), strict=False):
        for label, points in sorted(lines.items()):
            counts, values, errors = zip(*sorted(points), strict=True)
            ax.errorbar(counts, values, yerr=errors, fmt="o-", capsize=3, label=label)
        ax.set_xscale("log")
        ticks = sorted({count for points in lines.values() for count, _, _ in points})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("edits applied")
        ax.set_title(f"{task}: {metric}", fontsize="small")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="x-small")
    figure.suptitle("Retention: each metric over the records edited so far, after c edits")
    figure.tight_layout()
    return figure


def _quality_vs_cost(sections: list[Section]) -> Figure | None:
    """The family's reported section: per method, its summary cells (one per target) at the
    seconds each run took."""
    section = next((s for s in sections if s.title == s.family and s.title != GENERAL), None)
    if section is None:
        return None
    points: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for (name, _), (row, column) in summary_places(section).items():
        (cost,) = method_costs({name: [row.run]}) or [None]
        cell = row.cells[column.title]
        if cost is not None and cost.compute_s and math.isfinite(cell.score.value):
            error = Z95 * (cell.score.stderr or 0.0)
            points[name].append((cost.compute_s, cell.score.value, error))
    if not points:
        return None
    figure, ax = plt.subplots(figsize=(6, 4))
    for name, found in sorted(points.items()):
        seconds, values, errors = zip(*found, strict=True)
        ax.errorbar(seconds, values, yerr=errors, fmt="o", capsize=3, label=name)
    every = [s for found in points.values() for s, _, _ in found]
    if max(every) > 10 * min(every):  # a log axis only where costs span decades
        ax.set_xscale("log")
        for set_formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            set_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))  # "20"
    ax.set_xlabel("seconds per run (locating, loading, editing, answering)")
    ax.set_ylabel(section.rank_by.metric)
    ax.set_title(f"{section.title}: quality vs cost")
    ax.legend(fontsize="x-small")
    ax.grid(alpha=0.3)
    return figure


def _interval_arms(cell: Cell) -> tuple[float, float]:
    """(below, above) the delta to its interval's ends; (0, 0) where there is none."""
    u = cell.uncertainty
    if u is None or not all(math.isfinite(v) for v in u.ci):
        return 0.0, 0.0
    return max(cell.delta - u.ci[0], 0.0), max(u.ci[1] - cell.delta, 0.0)
