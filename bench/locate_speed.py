"""Locate time per concept-editing method (Unified Concept Editing Table 8's "Train/Locate" column),
on CPU.

Not a test: a benchmark to run by hand with the embedded model (smollm2-135m):

    .venv/bin/python bench/locate_speed.py [--emotion E] [--layer L] [--limit N] [--threads T]

Each of `ce-bench locate steering | knowledge-neurons | sae-features | sft` runs once for one
emotion on the same locate scenarios (N of them, each under every template), after the SAE for
the layer is trained or loaded (its training is not timed). Prints seconds per method and the
ratio to steering, the cheapest; the last line is machine-readable:
    ne_vs_sv=R sae_vs_sv=R sft_vs_sv=R
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from rich.console import Console
from rich.table import Table

from ce_bench.embedded import load_model
from ce_bench.locate.emotion import EmotionData, EmotionJob, locate_emotion
from ce_bench.locate.sae_features import FeatureNotFound, SAESource
from ce_bench.runtime import EMBEDDED_NAME
from ce_bench.sae_training import ensure_sae

METHODS = {"steering": "sv", "knowledge-neurons": "ne", "sae-features": "sae", "sft": "sft"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emotion", default="anger")
    parser.add_argument("--layer", type=int, default=27)
    parser.add_argument("--limit", type=int, default=6, help="locate scenarios")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    sae = SAESource(sae_path=str(ensure_sae(args.layer)))
    model, tokenizer = load_model(EMBEDDED_NAME, "cpu")
    data = EmotionData.load()
    seconds: dict[str, float] = {}
    for method in METHODS:
        job = EmotionJob(model, tokenizer, EMBEDDED_NAME, data, args.emotion, args.layer)
        job.limit, job.sae = args.limit, sae
        started = time.perf_counter()
        # a search that finds no SAE feature still ran in full: its time counts the same
        with contextlib.suppress(FeatureNotFound):
            locate_emotion(method, job)
        seconds[method] = time.perf_counter() - started

    prompts = len(data.prompts(args.emotion, args.limit))
    table = Table(title=f"locate time, {args.emotion}, layer {args.layer}, {prompts} prompts")
    for column in ("method", "seconds", "s / prompt", "x steering"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, value in seconds.items():
        ratio = value / seconds["steering"]
        table.add_row(method, f"{value:.1f}", f"{value / prompts:.2f}", f"{ratio:.1f}")
    Console().print(table)
    others = [(m, short) for m, short in METHODS.items() if m != "steering"]
    print(" ".join(f"{short}_vs_sv={seconds[m] / seconds['steering']:.2f}" for m, short in others))


if __name__ == "__main__":
    main()
