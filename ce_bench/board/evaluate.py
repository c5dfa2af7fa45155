"""Run lm-eval from Python and write its results exactly as `lm_eval --output_path DIR
--log_samples` does, so that files from the sweep and from a user's own CLI runs read alike."""

from __future__ import annotations

from functools import cache
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
) -> None:
    """Evaluate `lm` (an `EditedHFLM`) on `tasks`, writing results and samples into `directory`."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from ce_bench import register

    register()
    tracker = EvaluationTracker(output_path=str(directory))
    manager = TaskManager(include_defaults=not set(tasks) <= ce_bench_tasks(), metadata=metadata)
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


@cache
def ce_bench_tasks() -> frozenset[str]:
    """ce-bench's own task names, indexed once: runs of only these skip lm-eval's index (~20 s)."""
    from lm_eval.tasks import TaskManager

    from ce_bench import register

    register()
    return frozenset(TaskManager(include_defaults=False).all_tasks)
