"""`make demo`: locate a steering vector on the embedded model and measure its side effects.

1. Locate a diff-mean vector (happy vs neutral sentences in `examples/`) at layer 15.
2. Evaluate `ce_general_mini` through lm-eval with `edited_hf`, without and with the vector.
3. Print both results side by side and write the results JSON under `out/demo/`.

Run with `python -m ce_bench.demo [--limit N] [--strength K] [--layer L]`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--strength", type=float, default=2.0)
    parser.add_argument("--limit", type=int, default=20, help="items per task (0: all 50)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    args = parser.parse_args(argv)

    import lm_eval

    from ce_bench import register
    from ce_bench.artifacts import save_artifact
    from ce_bench.locate.diffmean import locate_diffmean
    from ce_bench.models.embedded import EMBEDDED_NAME, load_model

    register()
    console = Console()
    model, tokenizer = load_model(EMBEDDED_NAME, "cpu")
    positive, negative = (_lines(EXAMPLES / f"{n}.txt") for n in ("happy", "neutral"))
    artifact = locate_diffmean(model, tokenizer, positive, negative, args.layer, EMBEDDED_NAME)
    artifact_dir = save_artifact(artifact, args.out / "happy_sv")
    console.print(f"located {artifact_dir} (steer at {artifact.site})")
    del model

    runs = {
        "unedited": "",
        f"steer k={args.strength:g}": f"intervention={artifact_dir},strength={args.strength}",
    }
    results = {}
    for name, model_args in runs.items():
        console.rule(f"ce_general_mini, {name}")
        out = lm_eval.simple_evaluate(
            model="edited_hf",
            model_args=model_args,
            tasks=["ce_general_mini"],
            limit=args.limit or None,
            batch_size=8,
        )
        results[name] = out["results"]
        path = args.out / f"results_{'unedited' if not model_args else 'steer'}.json"
        path.write_text(json.dumps(out["results"], indent=2, default=str))
    console.print(side_by_side(results))


def side_by_side(results: dict[str, dict[str, Any]]) -> Table:
    """One row per task and metric, one column per run, plus the delta of the last vs the first."""
    names = list(results)
    table = Table(title="ce_general_mini: unedited vs edited")
    for column in ("task", "metric", *names, "delta"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    first = results[names[0]]
    for task in sorted(first):
        for key, value in first[task].items():
            if not isinstance(value, float) or "stderr" in key:
                continue
            values = [results[n][task][key] for n in names]
            stderr = first[task].get(key.replace(",", "_stderr,"), None)
            cells = [f"{v:.3f}" for v in values]
            if isinstance(stderr, float):
                cells[0] += f" ± {stderr:.3f}"
            table.add_row(task, key.split(",")[0], *cells, f"{values[-1] - values[0]:+.3f}")
    return table


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    main()
