"""Imported from `ce_bench_lm_eval.pth` at every interpreter start; registers only inside lm_eval.

Gated on the command line so that unrelated Python processes do not import lm-eval (about 1 s).
"""

import os
import sys


def _is_lm_eval_process(argv: list[str]) -> bool:
    if len(argv) > 1 and os.path.basename(argv[1]) in {"lm_eval", "lm-eval"}:
        return True
    return len(argv) > 2 and argv[1] == "-m" and argv[2] == "lm_eval"


if _is_lm_eval_process(list(getattr(sys, "orig_argv", sys.argv))):
    from ce_bench.registration import print_input_errors_briefly, register

    register()
    print_input_errors_briefly()
