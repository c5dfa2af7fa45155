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

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ce_bench.board.runs import FAMILIES, GENERAL, Run, Score, family, headline
from ce_bench.versions import mixed_versions

SELECTION = "validation split (strength selection)"
IDENTITY = ("model", "method", "layer", "target", "strength", "split", "settings", "artifact")


@dataclass(frozen=True)
class Column:
    task: str  # "" in edit families: the row's task
    metric: str
    higher_is_better: bool | None

    @property
    def title(self) -> str:
        return f"{self.task} {self.metric}" if self.task else self.metric


@dataclass(frozen=True)
class Cell:
    score: Score
    base: float | None

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
        fields = (run.base_model, run.method, run.layer, run.target, run.strength, run.split)
        return dict(zip(IDENTITY, fields + (run.settings, run.artifact), strict=True)) | {
            "task": self.task
        }


@dataclass
class Section:
    title: str
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)

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
    """Sections in FAMILIES order, general ability last; empty families are left out.

    Runs on a validation split (a sweep's strength selection) get a section of their own after
    their family's, so the family's table holds only reported (test) numbers.
    """
    unedited = [r for r in runs if not r.edited]
    ordered = sorted(runs, key=lambda r: (r.edited, r.key, r.path.name))
    selection = [r for r in ordered if r.split == "validation"]
    reported = [r for r in ordered if r.split != "validation"]
    sections = []
    for title in (*FAMILIES, GENERAL):
        if title == GENERAL:
            tasks = _tasks(reported, title)
            if tasks:
                sections.append(_general_section(reported, tasks, unedited))
            continue
        for chosen, name in ((reported, title), (selection, f"{title}: {SELECTION}")):
            tasks = _tasks(chosen, title)
            if tasks:
                sections.append(_family_section(name, chosen, tasks, unedited))
    return sections


def _tasks(runs: list[Run], title: str) -> list[str]:
    seen: dict[str, None] = {}
    for run in runs:
        for task in run.scores:
            if family(task) == title and run.scores[task]:
                seen.setdefault(task)
    return sorted(seen)


def _family_section(title: str, runs: list[Run], tasks: list[str], unedited: list[Run]) -> Section:
    metrics: dict[str, None] = {}
    for task in tasks:
        names = _metrics(runs, task)
        for metric in [headline(task, names), *names]:
            metrics.setdefault(metric)
    columns = [Column("", m, _direction(runs, tasks, m)) for m in metrics]
    section = Section(title, columns)
    for run in runs:
        for task in tasks:
            if task in run.scores:
                cells = {
                    m: Cell(s, _base(run, task, m, unedited)) for m, s in run.scores[task].items()
                }
                section.rows.append(Row(run, task, cells))
    return section


def _general_section(runs: list[Run], tasks: list[str], unedited: list[Run]) -> Section:
    columns = []
    for task in tasks:
        metric = headline(task, _metrics(runs, task))
        columns.append(Column(task, metric, _direction(runs, [task], metric)))
    section = Section(GENERAL, columns)
    for run in runs:
        cells = {
            c.title: Cell(run.scores[c.task][c.metric], _base(run, c.task, c.metric, unedited))
            for c in columns
            if c.metric in run.scores.get(c.task, {})
        }
        if cells:
            section.rows.append(Row(run, "", cells))
    return section


def _metrics(runs: list[Run], task: str) -> list[str]:
    """A task's metrics over all runs, in the order they first appear."""
    return list(dict.fromkeys(m for run in runs for m in run.scores.get(task, {})))


def _direction(runs: list[Run], tasks: list[str], metric: str) -> bool | None:
    """lm-eval's higher_is_better for the metric, from the first run that reports it."""
    for run in runs:
        for task in tasks:
            score = run.scores.get(task, {}).get(metric)
            if score is not None:
                return score.higher_is_better
    return None


def _base(run: Run, task: str, metric: str, unedited: list[Run]) -> float | None:
    """The unedited value: measured in the same run, else by an unedited run of the same model
    (one with the same number of documents first)."""
    if not run.edited:
        return None
    own = run.scores[task][metric]
    if own.base is not None:
        return own.base
    matching = [
        u for u in unedited if u.base_model == run.base_model and metric in u.scores.get(task, {})
    ]
    matching.sort(key=lambda u: (u.samples.get(task) != run.samples.get(task), u.path.name))
    return matching[0].scores[task][metric].value if matching else None


# ---------------------------------------------------------------------------- rendering
def number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def cell_text(cell: Cell | None) -> str:
    """'0.450 ± 0.031 (unedited 0.400, +0.050)': the value, its stderr and the unedited value
    with the delta, each when known."""
    if cell is None:
        return ""
    text = number(cell.score.value)
    if cell.score.stderr is not None:
        text += f" ± {number(cell.score.stderr)}"
    if cell.delta is not None:
        text += f" (unedited {number(cell.base)}, {cell.delta:+.3f})"
    return text


def version_notes(runs: list[Run]) -> list[str]:
    """Warnings for a board whose runs were made with different versions of the stack (the
    same edit can score differently on another transformers or torch); empty when they agree."""
    mixed = mixed_versions({run.label: run.versions for run in runs})
    return [f"runs made with different versions of {line}" for line in mixed]


def to_markdown(sections: list[Section], notes: list[str] | None = None) -> str:
    lines = ["# ce-bench leaderboard", ""]
    lines += [f"> **Warning**: {note}" for note in notes or []] + ([""] if notes else [])
    lines.append(
        "Each cell: value ± lm-eval stderr (the unedited model's value, the change from it)."
        " Rows with method `unedited` are the base models."
    )
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
    return "\n".join(lines) + "\n"


def terminal_tables(sections: list[Section], metrics: int = 5) -> list[Table]:
    """Compact tables for the terminal: a run's label, its task, the first `metrics` metrics as
    'value (delta)'; board.md and board.html have every column."""
    tables = []
    for section in sections:
        columns = section.columns[:metrics]
        table = Table(title=section.title, title_justify="left")
        models = len({r.run.base_model for r in section.rows}) > 1
        if models:
            table.add_column("model")
        table.add_column("run")
        if section.has_task_column:
            table.add_column("task")
        for column in columns:
            table.add_column(column.title, justify="right")
        for row in section.rows:
            cells = [row.cells.get(c.title) for c in columns]
            texts = [
                ""
                if c is None
                else number(c.score.value) + ("" if c.delta is None else f" ({c.delta:+.3f})")
                for c in cells
            ]
            table.add_row(
                *([escape(row.run.base_model)] if models else []),
                escape(row.run.label),
                *([row.task] if section.has_task_column else []),
                *texts,
            )
        tables.append(table)
    return tables


def to_html(sections: list[Section], plots: list[str]) -> str:
    """A self-contained page: one sortable table per section (click a header), plots below.

    On load each table is ranked by its headline metric, best first (unedited rows stay on top).
    """
    body = []
    for number_, section in enumerate(sections):
        ident = section.identity_columns()
        rank = len(ident)
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
        body.append(
            f'<section id="s{number_}"><h2>{html.escape(section.title)}</h2>'
            f'<table data-rank="{rank}" data-order="{order}"><thead><tr>{heads}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></section>"
        )
    images = "".join(
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, data in (p.split(":", 1) for p in plots)
    )
    return _PAGE.format(body="".join(body), plots=images)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ce-bench leaderboard</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; }}
th {{ background: #f0f0f0; cursor: pointer; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.unedited {{ background: #fafae0; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }}
img {{ max-width: 640px; }}
</style></head>
<body><h1>ce-bench leaderboard</h1>
<p>Each cell: value ± lm-eval stderr (the unedited model's value, the change from it).
Click a column to sort.</p>
{body}
<h2>Plots</h2>{plots}
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
  sortTable(table, parseInt(table.dataset.rank), table.dataset.order);
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
    files["html"].write_text(to_html(sections, [embedded(p) for p in written]))
    files["json"].write_text(json.dumps(to_json(sections), indent=1) + "\n")
    return {**files, **{p.stem: p for p in written}}


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
                        }
                        for title, c in r.cells.items()
                    },
                }
                for r in s.rows
            ],
        }
        for s in sections
    ]
