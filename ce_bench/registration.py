"""Make `edited_hf` and ce-bench's task folder visible to lm-eval without any flag.

lm-eval 0.4.13 has no plugin discovery (../shared/DESIGN.md section 3): its model registry is filled
only when `lm_eval.models` is imported and before that a registered plugin would hide the
built-ins, and its TaskManager scans only `lm_eval/tasks` and `--include_path`. `register()` handles
both and is idempotent; the `ce_bench_lm_eval.pth` hook and `ce-bench eval` call it.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

MODEL_NAME = "edited_hf"
MODEL_TARGET = "ce_bench.models.edited_hf:EditedHFLM"


def task_dir() -> Path:
    """The folder holding ce-bench's task YAMLs (the installed `ce_bench.tasks` package)."""
    import ce_bench.tasks

    return Path(ce_bench.tasks.__file__).parent


def register() -> None:
    """Register the `edited_hf` model and ce-bench's tasks with lm-eval (safe to call twice)."""
    import lm_eval.models  # noqa: F401  (fills the registry with the built-in models first)
    from lm_eval.api.registry import model_registry
    from lm_eval.tasks import TaskManager

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)
    if not getattr(TaskManager.__init__, "_ce_bench", False):
        TaskManager.__init__ = _with_our_tasks(TaskManager.__init__)


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
