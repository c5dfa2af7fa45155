"""Make `edited_hf` and ce-bench's task folder visible to lm-eval without any flag.

lm-eval 0.4.13 has no plugin discovery: its model registry is filled
only when `lm_eval.models` is imported and before that a registered plugin would hide the
built-ins, and its TaskManager scans only `lm_eval/tasks` and `--include_path`. `register()` handles
both and is idempotent; the `ce_bench_lm_eval.pth` hook and `ce-bench eval` call it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from pathlib import Path

from ce_bench.runtime import task_dir

MODEL_NAME = "edited_hf"
MODEL_TARGET = "ce_bench.models.edited_hf:EditedHFLM"


def register() -> None:
    """Register the `edited_hf` model and ce-bench's tasks with lm-eval (safe to call twice)."""
    import lm_eval.models  # noqa: F401  (fills the registry with the built-in models first)
    from lm_eval.api.registry import model_registry
    from lm_eval.tasks import TaskManager

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)
    if not getattr(TaskManager.__init__, "_ce_bench", False):
        TaskManager.__init__ = _with_our_tasks(TaskManager.__init__)
        TaskManager.match_tasks = _with_preflight(TaskManager.match_tasks)


# Checks a task can make from the metadata alone, run when lm-eval's CLI selects the task, before
# it loads the model (minutes for a large one): task name prefix -> "module:function(metadata)".
PREFLIGHT = {"concept_emotion": "ce_bench.tasks.concept_emotion.task:task_judge"}


def _with_preflight(match):  # type: ignore[no-untyped-def]
    """Wrap TaskManager.match_tasks (lm-eval's CLI calls it on --tasks before the model loads)."""

    @functools.wraps(match)
    def wrapped(self, task_list):  # type: ignore[no-untyped-def]
        matched = match(self, task_list)
        for prefix, target in PREFLIGHT.items():
            if any(str(name).startswith(prefix) for name in matched):
                module, _, function = target.partition(":")
                getattr(importlib.import_module(module), function)(dict(self.metadata or {}))
        return matched

    return wrapped


def print_input_errors_briefly() -> None:
    """In lm-eval's CLI, print a ValueError that ce-bench raised on purpose (bad input: its
    message names the file, the field and the fix) as that message alone, not a traceback.
    CE_BENCH_TRACEBACK=1 shows the traceback."""
    default = sys.excepthook

    def hook(kind, error, trace):  # type: ignore[no-untyped-def]
        if issubclass(kind, ValueError) and _raised_by_us(trace) and not _wants_traceback():
            print(f"ce-bench: error: {error}", file=sys.stderr)
            return
        default(kind, error, trace)

    sys.excepthook = hook


def _raised_by_us(trace) -> bool:  # type: ignore[no-untyped-def]
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    if trace is None:
        return False
    where = Path(trace.tb_frame.f_code.co_filename).resolve()
    ours = (Path(__file__).resolve().parent, task_dir().resolve())
    return any(where.is_relative_to(folder) for folder in ours)


def _wants_traceback() -> bool:
    return os.environ.get("CE_BENCH_TRACEBACK", "") not in ("", "0")


def _with_our_tasks(init):  # type: ignore[no-untyped-def]
    """Wrap TaskManager.__init__: our task dir after lm-eval's, before the user's paths."""

    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        bound = signature.bind(self, *args, **kwargs)
        user = bound.arguments.get("include_path") or []
        user = list(user) if isinstance(user, (list, tuple)) else [user]
        bound.arguments["include_path"] = [task_dir(), *user]
        init(*bound.args, **bound.kwargs)

    wrapped._ce_bench = True  # type: ignore[attr-defined]
    return wrapped
