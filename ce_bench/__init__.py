"""ce-bench: concept editing, knowledge editing and concept erasure on one footing, inside lm-eval.

Example:
    >>> import ce_bench
    >>> ce_bench.register()  # makes `edited_hf` and ce-bench's tasks visible to lm-eval
"""

from ce_bench.registration import register

__version__ = "0.1.0"
__all__ = ["__version__", "register"]
