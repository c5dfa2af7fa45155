"""Run lm-eval from Python and write its results exactly as `lm_eval --output_path DIR
--log_samples` does, so that files from the sweep and from a user's own CLI runs read alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BOOTSTRAP_ITERS = 1000  # lm-eval's default 100000 costs seconds per metric on a CPU


def evaluate_to_directory(
    directory: Path,
    lm: Any,
    tasks: list[str],
    limit: int | None,
    metadata: dict[str, Any],
    gen_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Evaluate `lm` (an `EditedHFLM`) on `tasks`; returns the results file written."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from ce_bench import register

    register()
    tracker = EvaluationTracker(output_path=str(directory))
    manager = TaskManager(include_defaults=not _all_ours(tasks), metadata=metadata)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        limit=limit,
        task_manager=manager,
        log_samples=True,
        evaluation_tracker=tracker,
        gen_kwargs=gen_kwargs,
        bootstrap_iters=BOOTSTRAP_ITERS,
        verbosity="ERROR",  # the sweep shows its own progress
    )
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    return max(directory.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)


def _all_ours(tasks: list[str]) -> bool:
    """True when ce-bench's own task index has every task (indexing lm-eval's takes ~20 s)."""
    from lm_eval.tasks import TaskManager

    from ce_bench import register

    register()
    return set(tasks) <= set(TaskManager(include_defaults=False).all_tasks)
