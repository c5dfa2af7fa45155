"""Speed overhead of range masking (NeuronLens) against plain lm-eval `hf` on classification.

Not a test: a benchmark to run by hand on CPU with the embedded model (smollm2-135m):

    .venv/bin/python bench/erasure_overhead.py [--items N] [--repeats N] [--threads T]

The workload is what `erasure_agnews` asks of the model: the few-shot prompt of each test
example with every label word as a continuation (loglikelihood, batch size 8). Configurations:

- `hf`: lm-eval's HFLM, the reference;
- `range_mask`: the Sports ranges located at the penultimate layer (positions=last, as the task
  runs them), gate=range;
- `neuron masking`: the same artifact with gate=always.

After one warm-up pass the repeats run round-robin and each configuration keeps its minimum.
Target: range_mask <= 1.03 x hf. The last line printed is machine-readable:
    range_vs_hf=R neuron_vs_hf=R
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from ce_bench.artifacts import save_artifact
from ce_bench.classification import DATASETS, choose_shots, few_shot_prompt, load_examples
from ce_bench.embedded import embedded_model_dir
from ce_bench.locate.ranges import RangesConfig, locate_ranges
from ce_bench.models.edited_hf import EditedHFLM
from ce_bench.runtime import EMBEDDED_NAME

BATCH_SIZE = 8
TARGET = 1.03


def requests(items: int) -> list[Instance]:
    data = DATASETS["agnews"]
    shots = choose_shots(data, load_examples(data, "train"))
    prompts = [few_shot_prompt(data, e.text, shots) for e in load_examples(data, "test")[:items]]
    pairs = [(prompt, f" {word}") for prompt in prompts for word in data.words]
    return [Instance("loglikelihood", {}, args, i) for i, args in enumerate(pairs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32, help="test examples (x 4 labels)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    work = requests(args.items)
    hf = HFLM(pretrained=str(embedded_model_dir()), device="cpu", batch_size=BATCH_SIZE)
    config = RangesConfig(target="Sports", per_class=8)  # at the penultimate layer
    located = locate_ranges(
        hf.model, hf.tokenizer, DATASETS["agnews"], config, model_name=EMBEDDED_NAME
    )
    models: dict[str, HFLM] = {"hf": hf}
    with tempfile.TemporaryDirectory(prefix="ce-bench-erasure-") as workdir:
        for name, gate in (("range_mask", "range"), ("neuron masking", "always")):
            artifact = dataclasses.replace(located, params={**located.params, "gate": gate})
            path = save_artifact(artifact, Path(workdir) / gate)
            models[name] = EditedHFLM(intervention=str(path), device="cpu", batch_size=BATCH_SIZE)
        times: dict[str, list[float]] = {name: [] for name in models}
        scores = {name: lm.loglikelihood(work, disable_tqdm=True) for name, lm in models.items()}
        if scores["range_mask"] == scores["hf"]:
            raise RuntimeError("range_mask scores equal hf: the intervention is not applied")
        names = list(models)
        for repeat in range(max(1, args.repeats)):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                models[name].loglikelihood(work, disable_tqdm=True)
                times[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in times.items()}
    print(f"classification workload: {len(work)} requests, {torch.get_num_threads()} threads")
    for name, seconds in best.items():
        print(f"  {name:15s} {seconds:7.3f} s  x hf {seconds / best['hf']:.3f}")
    ratio = best["range_mask"] / best["hf"]
    print(f"target range_mask <= {TARGET} x hf: {'met' if ratio <= TARGET else 'NOT met'}")
    print(f"range_vs_hf={ratio:.3f} neuron_vs_hf={best['neuron masking'] / best['hf']:.3f}")


if __name__ == "__main__":
    main()
