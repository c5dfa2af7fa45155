"""MicroEdit Tables 1-2 in one call: each editor after T sequential edits, for several T.

For every T and every editor, one lm-eval run of `zsre_lifelong` (Rel, Gen, Loc, Avg) or
`selfcheckgpt_lifelong` (PPL, Loc) on a model that applied the first T records of the edit set,
scored after the last edit (`eval_at=end`, MicroEdit's protocol). The unedited model's values
come from the same runs (the editor switched off). Each cell runs in a fresh process, so its
peak memory is its own, and is written to `results.json` at once; a cell already there with the
same settings is not run again, so an interrupted report resumes where it stopped; a cell cut
off mid-stream continues after its last edit (saved in `out/runs/<editor>-T<T>/progress/`,
`resume_edits=`), so a cell longer than a machine's time slot still finishes. Each cell's
lm-eval results and samples are kept under `out/runs/<editor>-T<T>/`, with the side-effect
tasks (`side_tasks`, on the model with all T edits) beside them when asked for.

The default rows are MicroEdit's (FT, FT-EWC, ROME, MEMIT, MEND, GRACE, WISE, MicroEdit) and
AlphaEdit; MEND needs a trained network (`ce-bench train-mend`), which is checked first.

Example:
    >>> config = LifelongReportConfig(editors=("grace:steps=20",), num_edits=(1,))
    >>> cells = run_lifelong_report(config)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from ce_bench.console import current_log, quiet_to, step_progress
from ce_bench.interventions.base import parse_params
from ce_bench.lifelong.editor import editor_class
from ce_bench.runtime import EMBEDDED_NAME
from ce_bench.tables import Grid, show

# edit set -> (task, the columns of MicroEdit's table, their headings)
TABLES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "zsre": ("zsre_lifelong", ("rel", "gen", "loc", "avg"), ("Rel.", "Gen.", "Loc.", "Avg.")),
    "selfcheckgpt": ("selfcheckgpt_lifelong", ("ppl", "loc"), ("PPL", "Loc.")),
}
BASE = {"rel": "rel_base", "gen": "gen_base", "ppl": "ppl_base"}  # Loc. of no edit is 1
NUM_EDITS = {"zsre": (1, 10, 100), "selfcheckgpt": (1, 10, 50)}  # MicroEdit Tables 1 and 2


@dataclass
class LifelongReportConfig:
    """What to run; the defaults are MicroEdit's Table 1 on the embedded model."""

    model: str = EMBEDDED_NAME
    edits: str = "zsre"  # zsre or selfcheckgpt (the shipped sets)
    editors: tuple[str, ...] = (
        "ft", "ft:ewc_lambda=0.1", "rome", "memit", "mend", "grace", "wise",
        "microedit:alpha=auto", "alphaedit",
    )  # fmt: skip
    num_edits: tuple[int, ...] = ()  # default: the paper's, NUM_EDITS[edits]
    batch_size: int = 16
    out: Path = Path("results/lifelong/zsre")
    resume: bool = True  # skip cells already in out/results.json with the same settings
    eval_at: str = "end"  # or checkpoints such as "1+5+10" (a retention curve, on the board)
    side_tasks: tuple[str, ...] = ()  # general-ability tasks on the edited model (the gate's)
    side_limit: int | None = None  # documents per side task


def parse_editor(spec: str) -> tuple[str, dict[str, Any]]:
    """`NAME[:key=value,...]` -> (NAME, its parameters, typed as lm-eval types model_args);
    an unknown editor or a bad parameter is an error before anything runs."""
    from lm_eval.utils import simple_parse_args_string

    name, _, rest = spec.partition(":")
    params = simple_parse_args_string(rest)
    parse_params(editor_class(name).Params, params, f"editor {spec!r}")
    return name, params


def shown_spec(spec: str) -> str:
    """An editor spec as tables show it: paths by their last part (`sae_path=layer27-8c00`)."""
    name, _, rest = spec.partition(":")
    params = [
        f"{k}={Path(v).name}" if "/" in v else f"{k}={v}"
        for k, _, v in (p.partition("=") for p in rest.split(",") if p)
    ]
    return ":".join([name, ",".join(params)]) if params else name


def run_lifelong_report(
    config: LifelongReportConfig, console: Console | None = None
) -> list[dict[str, Any]]:
    """Every (T, editor) cell, resuming from `config.out/results.json`; writes the tables."""
    if config.edits not in TABLES:
        raise ValueError(f"edits must be one of {', '.join(TABLES)}, got {config.edits!r}")
    config = replace(config, num_edits=config.num_edits or NUM_EDITS[config.edits])
    console = console or Console()
    path = config.out / "results.json"
    done = json.loads(path.read_text())["cells"] if config.resume and path.exists() else []
    plan = [(t, spec) for t in config.num_edits for spec in config.editors]
    finished = [c["key"] for c in done]
    for t, spec in plan:
        name, params = parse_editor(spec)
        missing = _cell_key(config, spec, t) not in finished
        if missing and name == "mend" and not params.get("mend_path"):
            _check_trained_mend(config.model)  # before any cell runs
    cells = []
    with step_progress(console) as progress:
        bar = progress.add_task("lifelong cells", total=len(plan), detail="")
        for t, spec in plan:
            key = _cell_key(config, spec, t)
            cell = next((c for c in done if c["key"] == key), None)
            if cell is None:
                progress.update(bar, detail=f"{shown_spec(spec)}, T = {t}")
                cell = _run_cell(config, spec, t)
                cell["key"] = key
                done.append(cell)
                _write(config, done, cells + [cell])
            cells.append(cell)
            progress.advance(bar)
    _write(config, done, cells)
    for grid in report_grids(cells, config):
        show(console, grid)
    return cells


def _others(path: Path, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells in `path` that `cells` do not hold: what another report writing the same folder
    finished meanwhile (two reports of different editors may run at once on one folder)."""
    on_disk = json.loads(path.read_text())["cells"] if path.exists() else []
    keys = [c["key"] for c in cells]
    return [c for c in on_disk if c["key"] not in keys]


def _cell_key(config: LifelongReportConfig, spec: str, num_edits: int) -> dict[str, Any]:
    key = {"model": config.model, "edits": config.edits, "editor": spec, "num_edits": num_edits}
    if config.side_tasks:
        key["side"] = {"tasks": list(config.side_tasks), "limit": config.side_limit}
    if config.eval_at != "end":
        key["eval_at"] = config.eval_at
    return key


def runs_dir(config: LifelongReportConfig, spec: str, num_edits: int) -> Path:
    """Where a cell's lm-eval results and samples go (what `ce-bench leaderboard` reads)."""
    name = "".join(c if c.isalnum() or c in "=." else "_" for c in shown_spec(spec))
    return config.out / "runs" / f"{name}-T{num_edits}"


def _check_trained_mend(model: str) -> None:
    """Fail before anything runs if the `mend` row has no network to edit with."""
    from ce_bench.embedded import resolve_pretrained
    from ce_bench.lifelong.mend import cached_nets

    name = Path(str(resolve_pretrained(model))).name  # as runtime.model_cache_name names it
    if not cached_nets(name):
        raise ValueError(
            f"the mend row needs a trained MEND for {name!r}: run `ce-bench train-mend"
            f" --model {model}` first (docs/lifelong.md gives its time), give"
            " --editor mend:mend_path=DIR, or leave mend out with --editor"
        )


def _run_cell(config: LifelongReportConfig, spec: str, num_edits: int) -> dict[str, Any]:
    """One cell in a fresh process, so that its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        job = pool.submit(_measured, config, spec, num_edits, current_log(), os.getpid())
        return job.result()


def _measured(
    config: LifelongReportConfig, spec: str, num_edits: int, log: Path | None, report: int
) -> dict[str, Any]:
    from ce_bench.runtime import exit_with_parent, peak_rss_mb

    exit_with_parent(report)
    with quiet_to(log):
        cell = _evaluate(config, spec, num_edits)
    return {**cell, "peak_mb": round(peak_rss_mb())}


def _evaluate(config: LifelongReportConfig, spec: str, num_edits: int) -> dict[str, Any]:
    from ce_bench.evaluation import evaluate, metrics_of
    from ce_bench.models.edited_hf import EditedHFLM

    name, params = parse_editor(spec)
    task = TABLES[config.edits][0]
    start = time.perf_counter()
    runs = runs_dir(config, spec, num_edits)
    if not config.resume:  # start the stream again too
        shutil.rmtree(runs / "progress", ignore_errors=True)
    lm = EditedHFLM(
        pretrained=config.model,
        editor=name,
        edits=config.edits,
        num_edits=num_edits,
        eval_at=config.eval_at,
        batch_size=config.batch_size,
        resume_edits=str(runs / "progress") if config.eval_at == "end" else None,
        **params,
    )
    try:
        metadata = {"edits": config.edits, "num_edits": num_edits, "eval_at": config.eval_at}
        results = evaluate(lm, [task], metadata=metadata, stderr=False, samples=True, out_dir=runs)
        if config.side_tasks:  # on the model with all T edits applied
            side = list(config.side_tasks)
            evaluate(lm, side, limit=config.side_limit, metadata=metadata, out_dir=runs)
        lifelong = lm.lifelong.describe()  # what the results record, without building them
    finally:
        lm.close()
    metrics = metrics_of(results, task)
    return {
        "metrics": metrics,
        "paired": paired_changes(results["samples"][task], config.edits),
        "edit_seconds": lifelong["edit_seconds"],
        "seconds": round(time.perf_counter() - start, 1),
        "params": lifelong["params"],
        "resolved": lifelong["resolved"],
        "mean_edit_stats": lifelong["mean_edit_stats"],
        "after_stream": lifelong["after_stream"],
    }


def find_cell(cells: list[dict[str, Any]], spec: str, num_edits: int) -> dict[str, Any] | None:
    """The cell of editor `spec` at T = `num_edits`, if it has run."""
    return next(
        (c for c in cells if c["key"]["editor"] == spec and c["key"]["num_edits"] == num_edits),
        None,
    )


def unedited(metrics: dict[str, float], k: str) -> float:
    """Column `k`'s value for the unedited model, from a run's (or a record's) metrics."""
    if k == "avg":
        return (metrics["rel_base"] + metrics["gen_base"] + 1.0) / 3
    return metrics[BASE[k]] if k in BASE else 1.0


def paired_changes(records: list[dict[str, Any]], edits: str) -> dict[str, dict[str, Any]]:
    """Each column's change from the unedited model over the same records (one lm-eval sample
    per edited record): the mean difference, its 95% bootstrap interval and the two-sided p
    of the paired test (`ce_bench.stats.compare_paired`)."""
    from ce_bench.stats import compare_paired

    changes = {}
    for k in TABLES[edits][1]:
        compared = compare_paired(
            [unedited(r, k) for r in records], [r[k] for r in records], higher_is_better=k != "ppl"
        )
        changes[k] = {
            "delta": compared.delta,
            "ci": list(compared.ci),
            "p": compared.p_two_sided,
            "n": compared.n,
        }
    return changes


def number(value: float, sign: str = "") -> str:
    """A table entry: two decimals, or three significant digits once it is out of the metrics'
    usual range (a collapsed editor's perplexity, 2.59e+08), so the column stays narrow."""
    return f"{value:{sign}.3g}" if abs(value) >= 1e4 else f"{value:{sign}.2f}"


def change_text(change: dict[str, Any] | None) -> str:
    """'+0.35 [+0.10, +0.60]'; without an interval for one record (nothing to resample), '–'
    for a cell run before changes were recorded."""
    if change is None:
        return "–"
    if change.get("n", 2) < 2:
        return f"{number(change['delta'], '+')} (1 record)"
    low, high = change["ci"]
    return f"{number(change['delta'], '+')} [{number(low, '+')}, {number(high, '+')}]"


CHANGES_NOTE = (
    "Changes from the unedited model carry a 95% interval paired over the T edited records; an"
    " interval that excludes 0 is a change the records support."
)


def changes_grids(cells: list[dict[str, Any]], config: LifelongReportConfig) -> list[Grid]:
    """Per T, each editor's change from the unedited model with its interval."""
    heads, keys = TABLES[config.edits][2], TABLES[config.edits][1]
    grids = []
    for t in config.num_edits:
        rows = []
        for spec in config.editors:
            paired = (find_cell(cells, spec, t) or {}).get("paired") or {}
            rows.append([shown_spec(spec), *(change_text(paired.get(k)) for k in keys)])
        heading = ["editor", *(f"Δ{h}" for h in heads)]
        grids.append(Grid(f"Change from the unedited model at T={t}", heading, rows))
    return grids


def _rows(cells: list[dict[str, Any]], config: LifelongReportConfig) -> list[list[str]]:
    """One row for the unedited model, then one per editor: the metrics at each T."""
    columns = TABLES[config.edits][1]

    def values(
        cell: dict[str, Any] | None, read: Callable[[dict[str, float], str], float]
    ) -> list[str]:
        if cell is None:
            return ["–"] * len(columns)
        return [number(read(cell["metrics"], k)) for k in columns]

    first = [next((c for c in cells if c["key"]["num_edits"] == t), None) for t in config.num_edits]
    rows = [["unedited", *[v for cell in first for v in values(cell, unedited)]]]
    for spec in config.editors:
        rows.append(
            [
                shown_spec(spec),
                *[
                    v
                    for t in config.num_edits
                    for v in values(find_cell(cells, spec, t), lambda m, k: m[k])
                ],
            ]
        )
    return rows


def _headings(config: LifelongReportConfig) -> list[str]:
    heads = TABLES[config.edits][2]
    return [f"T={t} {h}" for t in config.num_edits for h in heads]


def report_grids(cells: list[dict[str, Any]], config: LifelongReportConfig) -> list[Grid]:
    """The report's tables: the metrics at each T, the changes with their intervals, what
    editors said about the whole stream, and time and memory."""
    title = f"Lifelong editing, {config.edits}, {config.model} (eval after T edits)"
    metrics = Grid(title, ["editor", *_headings(config)], _rows(cells, config))
    return [metrics, *changes_grids(cells, config), *stream_grids(cells), time_grid(cells)]


def time_grid(cells: list[dict[str, Any]]) -> Grid:
    rows = [
        [
            shown_spec(c["key"]["editor"]),
            str(c["key"]["num_edits"]),
            f"{c['edit_seconds']:.0f}",
            f"{c['edit_seconds'] / c['key']['num_edits']:.1f}",
            f"{c['seconds']:.0f}",
            str(c.get("peak_mb", "–")),
        ]
        for c in cells
    ]
    heads = ["editor", "T", "edit s", "s per edit", "run s", "peak MB"]
    return Grid("Time and peak memory on this machine", heads, rows)


def _write(
    config: LifelongReportConfig, done: list[dict[str, Any]], cells: list[dict[str, Any]]
) -> None:
    """results.json (every finished cell, for resuming: `done` and what another report wrote
    there meanwhile) and table.md (this report's cells)."""
    config.out.mkdir(parents=True, exist_ok=True)
    path = config.out / "results.json"
    payload = {
        "config": {**asdict(config), "out": str(config.out)},
        "cells": _others(path, done) + done,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    note = (
        f"MicroEdit Table {'1' if config.edits == 'zsre' else '2'} layout on {config.model}:"
        f" the shipped `{config.edits}` set, the first T records edited in order, scored after"
        " the last edit. The unedited row comes from the same runs with the editor off."
        f" {CHANGES_NOTE}\n"
    )
    tables = "".join(f"\n{g.title}:\n\n{g.markdown()}" for g in report_grids(cells, config))
    (config.out / "table.md").write_text(note + tables)


STREAM_COLUMNS = {  # per editor, the after_stream numbers shown (shares, or Jaccard overlap)
    "microedit": {
        "within_tau_at_end": "edits within tau at the end",
        "row_overlap": "decoder-row overlap (Jaccard)",
        "rows_per_edit": "rows per edit",
    },
    "wise": {
        "edit_routed": "edit inputs sent to a side memory",
        "loc_routed": "loc. inputs sent to a side memory",
    },
}


def stream_grids(cells: list[dict[str, Any]]) -> list[Grid]:
    """What editors reported about the whole stream (`after_stream`): a table per editor
    that did."""
    grids = []
    for kind, columns in STREAM_COLUMNS.items():
        rows = []
        for c in cells:
            spec, stream = c["key"]["editor"], c.get("after_stream", {})
            if spec.partition(":")[0] != kind or not any(k in stream for k in columns):
                continue
            values = [stream.get(k) for k in columns]
            shown = [
                "–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v) for v in values
            ]
            rows.append([shown_spec(spec), str(c["key"]["num_edits"]), *shown])
        if rows:
            grids.append(
                Grid(f"After the stream ({kind})", ["editor", "T", *columns.values()], rows, keys=2)
            )
    return grids
