"""Speed of batched integrated gradients against the per-step loop, on the embedded model.

Not a test: a benchmark to run by hand on CPU with the embedded model (smollm2-135m):

    .venv/bin/python bench/ig_speed.py [--prompts N] [--layer L] [--steps M] [--threads T]

For the first N anger prompts of the shipped locate split, `neuron_attributions` (one forward and
backward over a batch of M rows, Unified Concept Editing A.8) and `neuron_attributions_reference` (M
forwards and backwards of one row) are timed in turn after one warm-up call each; the two must
agree. Then `locate_knowledge_neurons` runs on the same prompts and its time per prompt is printed.

The last line printed is machine-readable:
    batched_vs_loop=R
(batched time / loop time, summed over the prompts; below 1 means the batch is faster).
"""

from __future__ import annotations

import argparse
import time

import torch

from ce_bench.embedded import load_model
from ce_bench.emotions import emotion_prompts, load_scenarios, split_scenarios
from ce_bench.locate.knowledge_neurons import (
    KnowledgeNeuronsConfig,
    locate_knowledge_neurons,
    neuron_attributions,
    neuron_attributions_reference,
)
from ce_bench.runtime import EMBEDDED_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default: torch's")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model(EMBEDDED_NAME, "cpu")
    split = split_scenarios(load_scenarios())["anger"]
    prompts = emotion_prompts("anger", split.locate)[: args.prompts]
    run = {"batched": neuron_attributions, "loop": neuron_attributions_reference}
    for fn in run.values():  # warm-up: allocator, first-call dispatch
        fn(model, tokenizer, prompts[0].text, " " + prompts[0].golden, args.layer, args.steps)

    totals = dict.fromkeys(run, 0.0)
    print(
        f"{EMBEDDED_NAME}, layer {args.layer}, m = {args.steps}, {torch.get_num_threads()} threads"
    )
    for prompt in prompts:
        results, times = {}, {}
        for name, fn in run.items():
            start = time.perf_counter()
            results[name] = fn(
                model, tokenizer, prompt.text, " " + prompt.golden, args.layer, args.steps
            )
            times[name] = time.perf_counter() - start
            totals[name] += times[name]
        gap = float((results["batched"] - results["loop"]).abs().max())
        scale = float(results["loop"].abs().max())
        print(
            f"  batched {times['batched']:6.2f} s  loop {times['loop']:6.2f} s"
            f"  max |diff| / max |attr| = {gap / scale:.1e}  {prompt.text[:50]!r}"
        )
    print(f"total: batched {totals['batched']:.2f} s, loop {totals['loop']:.2f} s")

    start = time.perf_counter()
    config = KnowledgeNeuronsConfig(layer=args.layer, steps=args.steps, min_share=0.0)
    artifact = locate_knowledge_neurons(model, tokenizer, prompts, config, model_name=EMBEDDED_NAME)
    per_prompt = (time.perf_counter() - start) / len(prompts)
    kept = artifact.tensors["neurons"].numel()
    print(f"locate: {per_prompt:.2f} s per prompt ({len(prompts)} prompts, {kept} neurons kept)")
    print(f"batched_vs_loop={totals['batched'] / totals['loop']:.3f}")


if __name__ == "__main__":
    main()
