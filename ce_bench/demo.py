"""`make demo`: a ten-minute tour of ce-bench on the embedded model, ending at the leaderboard.

1. SAE: train (or load the cached) Top-k SAE of the embedded model at the deep layer.
2. Concept editing (Unified Concept Editing Table 2): NE, SAE, SV and SFT for a few emotions,
   each strength chosen on the validation split, tested through lm-eval and the offline lexicon
   judge (both orders); Table 4 (output generalisation) and Table 5 (neuron overlap).
3. Class erasure (NeuronLens Table 3/4) on SST-2: neuron masking vs activation range masking,
   with the PPL and MMLU side effects.
4. Lifelong editing (MicroEdit Table 1): FT, GRACE and MicroEdit over 10 ZsRE edits, scored
   after 1, 5 and 10 (a retention curve), with the side effects on the edited model.
5. The general-ability gate (`ce-bench regress --paired`) on GRACE's run and on neuron
   masking's.
6. The leaderboard over every run above (board.html, plots).

Each step shows one progress line and its tables, which fit 80 columns; lm-eval's and
transformers' messages go to `OUT/ce-bench.log` (`--verbose` shows them). The limits keep the
tour to about ten minutes on two CPU cores; the paper-size runs are the report commands
(`ce-bench erasure-report`, `lifelong-report`; README gives their times).
Run with `python -m ce_bench.demo [--emotions anger happiness] [--test-limit N] ...`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from ce_bench.console import log_file_for, quiet_to, waiting
from ce_bench.emotions import EMOTIONS
from ce_bench.locate.sae_features import SAESource
from ce_bench.reports.concept import (
    DEEP_LAYER,
    METHODS,
    SHORT,
    BenchmarkConfig,
    Cell,
    run_benchmark,
)
from ce_bench.runtime import EMBEDDED_NAME
from ce_bench.tables import Grid, show

PAIRS = ("NE-SAE", "NE-SV", "NE-SFT", "SAE-SV", "SAE-SFT", "SV-SFT")
# The tour's lifelong editors: the ones that take seconds per edit on 2 CPU cores (ROME, MEMIT
# and AlphaEdit take 15-40 s, WISE 8-20 s; `ce-bench lifelong-report` runs them all).
DEMO_EDITORS = ("ft", "grace", "microedit:alpha=auto")
SIDE_TASKS = ("ce_perplexity", "ce_paired_mini_mmlu")  # paired: the gate reads both halves
STEPS = 6


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    console = Console()
    started = time.monotonic()
    log = log_file_for(args.out, args.verbose, console)
    minutes: dict[str, float] = {}
    with quiet_to(log, console):
        from ce_bench.embedded import load_model

        loaded = load_model(EMBEDDED_NAME, "cpu")
        results: dict[str, Any] = {}  # step -> what it returned (the SAE's path for later steps)
        steps = (
            ("SAE", lambda: sae_step(args, console)),
            ("concept editing", lambda: concept_step(args, console, loaded, results["SAE"])),
            ("class erasure", lambda: erasure_step(args, console, loaded)),
            ("lifelong editing", lambda: lifelong_step(args, console, results["SAE"])),
            ("gate", lambda: gate_step(args, console, results["class erasure"])),
            ("leaderboard", lambda: board_step(args, console)),
        )
        for n, (name, run) in enumerate(steps, 1):
            console.rule(f"[bold]{n}/{STEPS} {name}")
            begin = time.monotonic()
            results[name] = run()
            minutes[name] = (time.monotonic() - begin) / 60
    total = (time.monotonic() - started) / 60
    _write_command(args, argv, minutes, total)
    _closing_summary(console, results, total, log)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=DEEP_LAYER)
    parser.add_argument("--emotions", nargs="+", default=["anger", "happiness"], choices=EMOTIONS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--locate-limit", type=int, default=3, help="locate scenarios/emotion")
    parser.add_argument("--validation-limit", type=int, default=3, help="prompts per strength")
    parser.add_argument("--test-limit", type=int, default=8, help="test prompts per emotion")
    parser.add_argument("--max-gen-toks", type=int, default=20)
    parser.add_argument("--erasure-limit", type=int, default=16, help="test examples per run")
    parser.add_argument("--erasure-classes", nargs="+", default=[], help="default: both")
    parser.add_argument("--side-limit", type=int, default=6, help="PPL documents / MMLU items")
    parser.add_argument("--lifelong-edits", type=int, default=10, help="T of the lifelong step")
    parser.add_argument("--editors", nargs="+", default=list(DEMO_EDITORS), help="lifelong rows")
    parser.add_argument(
        "--sae-tokens", type=int, help="SAE training tokens; default: the default SAE"
    )
    parser.add_argument("--out", type=Path, default=Path("results/demo"))
    parser.add_argument("--verbose", action="store_true", help="library messages here, no log")
    return parser.parse_args(argv)


def sae_step(args: argparse.Namespace, console: Console) -> Path | None:
    """The SAE that concept editing's SAE method and MicroEdit read (trained once, cached)."""
    from ce_bench.sae_training import SAESettings, load_report, train_sae

    if "sae-features" not in args.methods and not any("microedit" in e for e in args.editors):
        console.print("No SAE needed: neither the SAE method nor MicroEdit is in the tour.")
        return None
    note = "training it once: about 3 min on 2 cores, cached afterwards"
    with waiting(console, f"SAE at layer {args.layer}: loading it, or {note}"):
        path = train_sae(args.layer, tokens=args.sae_tokens or SAESettings.tokens)
    report = load_report(path)
    console.print(
        f"SAE at layer {args.layer}: {report['settings']['d_sae']} latents, explained variance"
        f" {report['explained_variance']:.3f}, L0 {report['mean_l0']:.0f}, dead"
        f" {100 * report['dead_feature_share']:.1f}% ({path})",
        markup=False,
    )
    return path


def concept_step(
    args: argparse.Namespace, console: Console, loaded: tuple[Any, Any], sae: Path | None
) -> None:
    config = BenchmarkConfig(
        layer=args.layer,
        emotions=tuple(args.emotions),
        locate_limit=args.locate_limit,
        validation_limit=args.validation_limit,
        test_limit=args.test_limit,
        max_gen_toks=args.max_gen_toks,
        methods=tuple(args.methods),
        sae=SAESource(sae_path=str(sae)) if sae else None,
        out=args.out / "concept",
    )
    cells = run_benchmark(config, console, loaded)
    write_analyses(cells, config, console, loaded)
    console.print(sae_hit_rate(cells), markup=False)


def erasure_step(args: argparse.Namespace, console: Console, loaded: tuple[Any, Any]) -> Path:
    """NeuronLens on SST-2; returns the first class's neuron-masking run (the gate's fail)."""
    from ce_bench.reports.erasure import ErasureConfig, run_erasure_report, runs_dir

    config = ErasureConfig(
        dataset="sst2", targets=tuple(args.erasure_classes), limit=args.erasure_limit,
        side_limit=args.side_limit, out=args.out / "erasure",
    )  # fmt: skip
    rows = run_erasure_report(config, console, loaded)
    return runs_dir(config, rows[0].target, "neuron masking")


def lifelong_step(args: argparse.Namespace, console: Console, sae: Path | None) -> None:
    from ce_bench.reports.lifelong import LifelongReportConfig, run_lifelong_report

    t = args.lifelong_edits
    own = f",sae_path={sae}" if args.sae_tokens else ""  # the step-1 SAE, when not the default
    editors = tuple(e + own if e.startswith("microedit") else e for e in args.editors)
    config = LifelongReportConfig(
        editors=editors,
        num_edits=(t,),
        out=args.out / "lifelong",
        resume=False,
        eval_at="+".join(str(c) for c in sorted({1, max(t // 2, 1), t})),
        side_tasks=SIDE_TASKS,
        side_limit=args.side_limit,
    )
    run_lifelong_report(config, console)


def gate_step(
    args: argparse.Namespace, console: Console, masking: Path
) -> list[tuple[str, bool, str]]:
    """`ce-bench regress --paired` on two runs of the tour: (run, passed, why) each."""
    from ce_bench.board.leaderboard import signed
    from ce_bench.board.regress import compare_paired_run, one_run
    from ce_bench.reports.lifelong import LifelongReportConfig, runs_dir

    lifelong = LifelongReportConfig(out=args.out / "lifelong")
    editor = "grace" if "grace" in args.editors else args.editors[0]  # GRACE leaves the rest be
    candidates = {
        f"{editor}, {args.lifelong_edits} edits": runs_dir(lifelong, editor, args.lifelong_edits),
        f"neuron masking (SST-2 {masking.parent.name})": masking,
    }
    decisions, rows = [], []
    for name, path in candidates.items():
        checks = compare_paired_run(one_run(path, name))
        failed = [c for c in checks if c.failed]
        why = ", ".join(f"{c.metric} {signed(c.drop)}" for c in failed)
        decisions.append((name, not failed, why or f"{len(checks)} metrics within their limits"))
        for c in checks:
            p = "" if c.p_adjusted is None else f"{c.p_adjusted:.2g}"
            verdict = "FAIL" if c.failed else "ok"
            rows.append([name, c.metric, signed(c.drop), f"{c.max_drop:g}", p, verdict])
    heads = ["edit", "metric", "drop", "allowed", "p (Holm)", "verdict"]
    title = "The gate: ce-bench regress --paired RUN (a drop fails past 'allowed' when p < 0.05)"
    show(console, Grid(title, heads, rows, keys=2))
    for name, passed, why in decisions:
        console.print(f"{name}: {'passed' if passed else 'FAILED'}: {why}", markup=False)
    return decisions


def board_step(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """The leaderboard of every run the tour made."""
    from ce_bench.board.leaderboard import build_board, write_board
    from ce_bench.board.runs import load_runs

    folders = [args.out / part / "runs" for part in ("concept", "erasure", "lifelong")]
    sections = build_board(load_runs([f for f in folders if f.is_dir()]))
    files = write_board(sections, args.out / "board")
    lines = [best_line(s) for s in sections if s.title == s.family and s.ranking]
    return {"files": files, "lines": lines}


def best_line(section: Any) -> str:
    """'Erasure: best acc: X, 0.500 [0.25, 0.75]; not separable from Y (p = 0.4)': a family's
    leader by its headline metric with the value's 95% interval (1.96 stderrs) and the paired
    test against the runner-up."""
    from ce_bench.board.leaderboard import delta_text, number

    top = section.ranking[0]
    metric = section.rank_by
    row = next(
        r for r in section.rows if r.run.label == top.above and (r.task or metric.task) == top.task
    )
    cell = row.cells[metric.title]
    shown = number(cell.score.value)
    if cell.score.stderr:
        half = 1.96 * cell.score.stderr
        shown += f" [{number(cell.score.value - half)}, {number(cell.score.value + half)}]"
    if cell.delta is not None:
        shown += f", change {delta_text(cell)}"
    if top.p_value is None:
        versus = f"untested against {top.below} (no stderr)"
    elif top.significant:
        versus = f"ahead of {top.below} (p = {top.p_value:.2g})"
    else:
        versus = f"not separable from {top.below} (p = {top.p_value:.2g})"
    return f"{section.title}: best {metric.metric} on {top.task}: {top.above}, {shown}; {versus}"


def _closing_summary(
    console: Console, results: dict[str, Any], minutes: float, log: Path | None
) -> None:
    console.rule("[bold]summary")
    console.print(f"Done in {minutes:.1f} min.")
    console.print("Best per family (95% intervals; p from a paired test on the same documents):")
    for line in results["leaderboard"]["lines"]:
        console.print(f"  {line}", markup=False)
    for name, passed, why in results["gate"]:
        console.print(f"  gate: {name} {'passed' if passed else 'FAILED'}: {why}", markup=False)
    files = results["leaderboard"]["files"]
    plots = [p for k, p in files.items() if k not in ("markdown", "html", "json")]
    if log is not None:
        console.print(f"Log: {log}", markup=False)
    console.print(f"Plots: {', '.join(p.name for p in plots)} in {files['html'].parent}/")
    console.print(f"Leaderboard: {files['html'].resolve().as_uri()}", markup=False, soft_wrap=True)


def _write_command(
    args: argparse.Namespace, argv: list[str] | None, minutes: dict[str, float], total: float
) -> None:
    command = shlex.join(["python", "-m", "ce_bench.demo", *(argv or sys.argv[1:])])
    steps = ", ".join(f"{name} {m:.1f}" for name, m in minutes.items())
    (args.out / "COMMAND.md").write_text(
        f"Made by `{command}` (from `make demo`) in {total:.1f} min ({steps} min). Judge: the"
        " offline NRC-lexicon proxy (`judge=lexicon`), not GPT-4. Limits: the command's"
        " defaults (python -m ce_bench.demo --help).\n"
    )


def write_analyses(
    cells: list[Cell], config: BenchmarkConfig, console: Console, loaded: tuple[Any, Any]
) -> None:
    """Table 4 (generalisation, anger when it ran) and Table 5 (overlap per emotion), on the
    unedited (model, tokenizer) `loaded`."""
    from ce_bench.analysis import (
        generalization_grid,
        neuron_overlap,
        output_generalization,
    )
    from ce_bench.locate.emotion import EmotionData

    model, tokenizer = loaded
    emotion = "anger" if "anger" in config.emotions else config.emotions[0]
    chosen = {c.method: _tuned(c) for c in cells if c.emotion == emotion and c.artifact}
    report = output_generalization(
        model, tokenizer, emotion, {SHORT[m]: a for m, a in chosen.items()}
    )
    grid = generalization_grid(report)
    show(console, grid)
    (config.out / "generalization.md").write_text(grid.markdown())

    data = EmotionData.load(config.scenarios)
    rows = {}
    for emotion in config.emotions:
        arts = {c.method: _tuned(c) for c in cells if c.emotion == emotion and c.artifact}
        if "knowledge-neurons" not in arts:
            continue
        texts = [p.text for p in data.prompts(emotion, config.locate_limit)]
        overlap = neuron_overlap(
            model,
            tokenizer,
            texts,
            ne=arts.get("knowledge-neurons"),
            sae=arts.get("sae-features"),
            sv=arts.get("steering"),
            sft=arts.get("sft"),
            emotion=emotion,
        )
        rows[emotion] = overlap.overlaps
    grid = overlap_table(rows, config.layer)
    show(console, grid)
    (config.out / "overlap.md").write_text(grid.markdown())
    (config.out / "overlap.json").write_text(json.dumps(rows, indent=2) + "\n")
    (config.out / "generalization.json").write_text(json.dumps(asdict(report), indent=2) + "\n")


def sae_hit_rate(cells: list[Cell]) -> str:
    """Unified Concept Editing 4.2's check of the SAE localisation: how often the chosen feature is
    among a locate prompt's top 10 by attribution (the paper: 79.8%)."""
    from ce_bench.artifacts import load_artifact

    sae = [c for c in cells if c.method == "sae-features"]
    rates = [
        load_artifact(c.artifact).provenance.report["top10_hit_rate"] for c in sae if c.artifact
    ]
    if not rates:
        return f"SAE: no emotion's feature found among {len(sae)} tried"
    return (
        f"SAE: feature found for {len(rates)} of {len(sae)} emotions; chosen feature in a locate"
        f" prompt's top 10: {100 * sum(rates) / len(rates):.1f}% on average"
        " (Unified Concept Editing: 79.8%)"
    )


def _tuned(cell: Cell):  # type: ignore[no-untyped-def]
    """The cell's artifact at the strength chosen on the validation split."""
    from ce_bench.artifacts import load_artifact

    artifact = load_artifact(cell.artifact)
    artifact.params["strength"] = cell.strength
    return artifact


def overlap_table(rows: dict[str, dict[str, float | None]], layer: int) -> Grid:
    """Unified Concept Editing Table 5: overlap (%) per emotion and method pair, with the
    average."""
    average = {p: [r[p] for r in rows.values() if r.get(p) is not None] for p in PAIRS}
    body = {**rows, "Average": {p: (sum(v) / len(v) if v else None) for p, v in average.items()}}
    lines = [
        [name, *("-" if row.get(p) is None else f"{row[p]:.2f}" for p in PAIRS)]
        for name, row in body.items()
    ]
    title = f"Neuron overlap (%) at layer {layer}"
    return Grid(title, ["emotion", *PAIRS], lines, bold={"Average"})


if __name__ == "__main__":
    main()
