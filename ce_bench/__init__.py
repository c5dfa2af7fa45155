"""ce-bench: concept editing, knowledge editing and concept erasure on one footing, inside lm-eval.

Example:
    >>> import ce_bench
    >>> ce_bench.register()  # makes `edited_hf` and ce-bench's tasks visible to lm-eval
    >>> with ce_bench.InterventionSet.attach(model, ["artifacts/anger_sv"], strength=4) as edits:
    ...     edited = model.generate(**batch)
"""

from __future__ import annotations

from typing import Any

from ce_bench.registration import register

__version__ = "0.1.0"
__all__ = ["InterventionSet", "__version__", "register"]


def __getattr__(name: str) -> Any:
    """`InterventionSet` loads torch and every intervention kind (lifelong editors included) on
    first use, so that `import ce_bench` stays light for lm-eval's CLI."""
    if name == "InterventionSet":
        import ce_bench.lifelong  # noqa: F401 (registers the editors' kinds)
        from ce_bench.interventions import InterventionSet

        return InterventionSet
    raise AttributeError(f"module 'ce_bench' has no attribute {name!r}")
