"""What each method's runs cost, for the board's cost table and its quality-vs-cost plot.

Every `edited_hf` run writes its cost into its results (`ce_bench.models.cost`); a run from
before that, or a plain `hf` run, has none and shows blanks. These are single measurements of
real runs on whatever machine made them (other jobs included), not controlled timings:
`bench/` holds those (min of repeats, ratios measured in the same run).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ce_bench.board.runs import Run
from ce_bench.tables import Grid

HEADINGS = ["method", "runs", "s/run", "s/edit", "locate s", "overhead", "peak MB"]


@dataclass(frozen=True)
class MethodCost:
    """One method's runs in a family: means per run, the highest peak."""

    method: str
    runs: int
    wall_s: float | None  # loading, editing and answering, per run
    s_per_edit: float | None  # a lifelong editor's editing seconds over its T edits
    locate_s: float | None  # locating the artifacts it attached
    overhead: float | None  # edited / unedited seconds per token, in paired runs
    peak_mb: float | None

    @property
    def compute_s(self) -> float | None:
        """Seconds per run, locating included: the plot's cost axis."""
        if self.wall_s is None:
            return None
        return self.wall_s + (self.locate_s or 0.0)

    def cells(self) -> list[str]:
        values = [self.wall_s, self.s_per_edit, self.locate_s]
        texts = [_seconds(v) for v in values]
        ratio = "" if self.overhead is None else f"{self.overhead:.2f}x"
        peak = "" if self.peak_mb is None else f"{self.peak_mb:,.0f}"
        return [self.method, str(self.runs), *texts, ratio, peak]


def method_costs(runs_by_method: dict[str, list[Run]]) -> list[MethodCost]:
    """The cost of each method's runs; methods none of whose runs recorded a cost are left
    out."""
    costs = []
    for method, runs in runs_by_method.items():
        recorded = [run.cost for run in runs if run.cost]
        if not recorded:
            continue
        per_edit = [
            c["edit_seconds"] / t
            for run, c in ((r, r.cost) for r in runs if r.cost)
            if c.get("edit_seconds") is not None and (t := _edits(run))
        ]
        costs.append(
            MethodCost(
                method=method,
                runs=len(recorded),
                wall_s=_mean([c.get("wall_seconds") for c in recorded]),
                s_per_edit=_mean(per_edit),
                locate_s=_mean([c.get("locate_seconds") for c in recorded]),
                overhead=_mean([c.get("overhead") for c in recorded]),
                peak_mb=max((c["peak_mb"] for c in recorded if c.get("peak_mb")), default=None),
            )
        )
    return costs


def cost_grid(title: str, costs: list[MethodCost]) -> Grid:
    return Grid(title, HEADINGS, [c.cells() for c in costs], keys=1)


CAPTION = (
    "Cost per run, measured in the runs themselves: s/run is loading, editing and answering;"
    " s/edit a lifelong editor's editing time per edit; locate s the time locating its"
    " artifacts took; overhead the edited over the unedited seconds per token in paired runs"
    " (the same requests both ways); peak MB the process's resident peak. One measurement"
    " each, on a shared machine: for controlled speed ratios see bench/."
)


def _edits(run: Run) -> int | None:
    try:
        return int(run.strength)
    except ValueError:
        return None


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if value < 1 else f"{value:,.1f}"
