"""Time per edit and peak memory of each lifelong editor (MicroEdit) at T edits.

Not a test: a benchmark to run by hand on CPU with the embedded model (smollm2-135m):

    .venv/bin/python bench/lifelong_edit_cost.py [--editors ft grace wise microedit]
        [--num-edits 10 100] [--threads T]

Each (editor, T) runs in its own process, which loads the model, applies the first T records of
the shipped ZsRE set with the editor's paper defaults (MicroEdit with alpha=auto) and reports
seconds per edit, its peak resident memory and the size of the editor's state. A reference
process measured in the same run loads the model and runs a forward pass of an edit prompt:
edit time is printed in those passes, and memory as the peak above the reference's (a model
loaded to answer). Target (issue 5): memory grows with T by no more than the editor's
stored state. The last line printed is machine-readable:
    EDITOR_T=seconds_per_edit/extra_peak_MB/state_MB ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from ce_bench.runtime import peak_rss_mb

CHILD = "--child"


def reference() -> dict[str, float]:
    """One forward pass of an edit prompt on the loaded model: the unit of edit cost."""
    from ce_bench.embedded import load_model
    from ce_bench.lifelong import load_stream
    from ce_bench.lifelong.editor import edit_batch

    model, tokenizer = load_model(None, "cpu")
    batch = edit_batch(tokenizer, load_stream("zsre", 1).records[0], torch.device("cpu"))
    with torch.no_grad():
        model(input_ids=batch.input_ids)  # warm-up
        start = time.perf_counter()
        for _ in range(10):
            model(input_ids=batch.input_ids)
    return {"seconds": (time.perf_counter() - start) / 10}


def edit(editor: str, num_edits: int) -> dict[str, float]:
    """Apply the first `num_edits` ZsRE records with `editor`; its time and state size."""
    from ce_bench.embedded import load_model
    from ce_bench.interventions import Switch
    from ce_bench.lifelong import load_stream, new_editor

    model, tokenizer = load_model(None, "cpu")
    params = {"alpha": "auto"} if editor == "microedit" else {}
    fresh = new_editor(editor, model, params)
    fresh.attach(model, Switch())
    records = load_stream("zsre", num_edits).records
    fresh.start_stream(model, tokenizer, records)
    start = time.perf_counter()
    for record in records:
        fresh.apply_edit(model, tokenizer, record)
    seconds = (time.perf_counter() - start) / num_edits
    state = sum(t.numel() * t.element_size() for t in fresh.tensors.values())
    return {"seconds": seconds, "state_mb": state / 2**20}


def run_child(args: list[str], threads: int) -> dict[str, float]:
    command = [sys.executable, __file__, CHILD, *args, "--threads", str(threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editors", nargs="+", default=["ft", "grace", "wise", "microedit"])
    parser.add_argument("--num-edits", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(CHILD, nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        result = (
            reference() if args.child == ["reference"] else edit(args.child[0], int(args.child[1]))
        )
        print(json.dumps({**result, "peak_mb": peak_rss_mb()}))
        return
    base = run_child(["reference"], args.threads)
    print(
        f"reference: a forward pass of one edit prompt {base['seconds'] * 1000:.0f} ms,"
        f" peak {base['peak_mb']:.0f} MB ({torch.get_num_threads()} threads)"
    )
    print(f"{'editor':<10} {'T':>4} {'s/edit':>7} {'x fwd':>7} {'+peak MB':>9} {'state MB':>9}")
    summary = []
    for editor in args.editors:
        for t in args.num_edits:
            r = run_child([editor, str(t)], args.threads)
            extra = r["peak_mb"] - base["peak_mb"]
            print(
                f"{editor:<10} {t:>4} {r['seconds']:>7.2f} {r['seconds'] / base['seconds']:>7.0f}"
                f" {extra:>9.0f} {r['state_mb']:>9.1f}",
                flush=True,
            )
            summary.append(f"{editor}_{t}={r['seconds']:.2f}/{extra:.0f}/{r['state_mb']:.1f}")
    print(" ".join(summary))


if __name__ == "__main__":
    main()
