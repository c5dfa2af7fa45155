"""The one way ce-bench runs lm-eval from Python: `evaluate(lm, tasks, ...)`.

Every report (concept editing, erasure, lifelong), the sweep and the demo evaluate through this
function; it is the only place in ce_bench that calls lm-eval's `simple_evaluate`. With `out_dir`
it writes results and samples exactly as `lm_eval --output_path DIR --log_samples` does, so files
from Python runs and from a user's own CLI runs read alike.

Example:
    >>> lm = EditedHFLM(intervention="artifacts/anger_sv")
    >>> results = evaluate(lm, ["ce_general_mini"], limit=10, out_dir=Path("out/anger"))
    >>> metrics_of(results, "ce_mini_arc_easy")["acc"]
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

BOOTSTRAP_ITERS = 1000  # stderrs of non-mean metrics; lm-eval's 100000 costs seconds on a CPU


def evaluate(
    lm: Any,
    tasks: list[str],
    *,
    limit: int | None = None,
    metadata: dict[str, Any] | None = None,
    gen_kwargs: dict[str, Any] | None = None,
    stderr: bool = True,
    out_dir: Path | None = None,
    samples: bool = False,
    manager: Any = None,
    verbosity: str = "WARNING",
) -> dict[str, Any]:
    """lm-eval's results of `lm` (an `EditedHFLM`) on `tasks`.

    Args:
        metadata: the tasks' metadata (lm-eval's `--metadata`); ignored when `manager` is given.
        stderr: bootstrap stderrs (off when only the point values are used, e.g. choosing a
            strength on the validation split).
        out_dir: write results and per-document samples there, as `--output_path --log_samples`.
        samples: keep the per-document samples in `results["samples"]` (with out_dir too).
        manager: a TaskManager to reuse across many calls (see `task_manager`).
    """
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(out_dir)) if out_dir is not None else None
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        limit=limit,
        task_manager=manager or task_manager(tasks, metadata or {}),
        log_samples=tracker is not None or samples,
        evaluation_tracker=tracker,
        gen_kwargs=gen_kwargs,
        bootstrap_iters=BOOTSTRAP_ITERS if stderr else 0,
        verbosity=verbosity,
    )
    if tracker is not None:
        logged = results.pop("samples")
        tracker.save_results_aggregated(results=results, samples=logged)
        for task in results["configs"]:
            tracker.save_results_samples(task_name=task, samples=logged[task])
        if samples:
            results["samples"] = logged
    return results


def task_manager(tasks: list[str], metadata: dict[str, Any]) -> Any:
    """A TaskManager that finds `tasks`: ce-bench's own only (fast), lm-eval's index too (about
    20 s) when some task is not ce-bench's."""
    from lm_eval.tasks import TaskManager

    from ce_bench import register

    register()
    return TaskManager(include_defaults=not set(tasks) <= ce_bench_tasks(), metadata=metadata)


def metrics_of(results: dict[str, Any], task: str) -> dict[str, Any]:
    """A task's metric values by bare name (`acc`, not `acc,none`), stderrs left out."""
    return {
        key.split(",")[0]: value
        for key, value in results["results"][task].items()
        if "," in key and "_stderr" not in key
    }


@cache
def ce_bench_tasks() -> frozenset[str]:
    """ce-bench's own task names, indexed once."""
    from lm_eval.tasks import TaskManager

    from ce_bench import register

    register()
    return frozenset(TaskManager(include_defaults=False).all_tasks)
