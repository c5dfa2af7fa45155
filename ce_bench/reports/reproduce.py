"""`ce-bench reproduce NAME [--full]`: a paper's main table at the paper's size, resumable.

`make demo` shows every family at small limits in minutes; these are the runs behind the
README's findings, each a preset of one report (`concept`, `erasure`, `lifelong`, `privacy`).
Each says up front what it runs and how long it took on two CPU cores, writes into its own
folder, and picks up where an interrupted run stopped (finished cells are kept when the
settings match).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ce_bench.emotions import EMOTIONS


@dataclass(frozen=True)
class Preset:
    what: str  # what it runs, in a sentence
    time: str  # how long it took on 2 CPU cores, and when; or that it was not measured
    run: Callable[[Path, Console], object]


def _concept(full: bool) -> Preset:
    from ce_bench.reports.concept import BenchmarkConfig, run_benchmark

    if full:
        config = BenchmarkConfig(emotions=EMOTIONS, resume=True)  # every prompt, 48 new tokens
        what = (
            "Unified Concept Editing Tables 2, 4-5: NE, SAE, SV and SFT for the six emotions at"
            " layer 27, every locate scenario, every validation and test prompt"
        )
        time = "not measured on 2 cores: several hours (every prompt, 3 strengths, 4 methods)"
    else:
        config = BenchmarkConfig(
            emotions=EMOTIONS, locate_limit=3, validation_limit=3, test_limit=8, max_gen_toks=20,
            resume=True,
        )  # fmt: skip
        what = (
            "Unified Concept Editing Table 2: NE, SAE, SV and SFT for the six emotions at layer"
            " 27 (3 locate scenarios, 3 validation and 8 test prompts per emotion)"
        )
        time = "7.9 min with the SAE cached, plus 3 min to train it (2026-11/12)"

    def run(out: Path, console: Console) -> object:
        from dataclasses import replace

        return run_benchmark(replace(config, out=out), console)

    return Preset(what, time, run)


def _erasure(full: bool) -> Preset:
    from ce_bench.classification import DATASETS
    from ce_bench.reports.erasure import ErasureConfig, run_erasure_report

    datasets = tuple(DATASETS) if full else ("agnews",)
    what = (
        "NeuronLens Tables 3-4: neuron masking vs range masking for every class of "
        + ", ".join(datasets)
        + ", every shipped test example, with Appendix M's baselines and the PPL/MMLU side"
        " effects"
    )
    time = (
        "AG News 25.8 min (2026-11); the five datasets were not run together here"
        if full
        else "25.8 min (2026-11, AG News, 2 cores shared with another job)"
    )

    def run(out: Path, console: Console) -> object:
        for name in datasets:
            config = ErasureConfig(
                dataset=name, baselines=True, side_limit=8, out=out / name, resume=True
            )
            run_erasure_report(config, console)
        return None

    return Preset(what, time, run)


def _lifelong(full: bool) -> Preset:
    from ce_bench.reports.lifelong import LifelongReportConfig, run_lifelong_report

    tables = ("zsre", "selfcheckgpt") if full else ("zsre",)
    what = (
        "MicroEdit Table 1"
        + (" and Table 2" if full else "")
        + ": FT, FT-EWC, ROME, MEMIT, MEND, GRACE, WISE, MicroEdit and AlphaEdit after T = 1,"
        " 10, 100 ZsRE edits"
        + (" and T = 1, 10, 50 hallucination edits" if full else "")
        + " (MEND needs `ce-bench train-mend` first)"
    )
    time = (
        "about 5.8 h for Table 1 and 17 h for Table 2 (measured in 2026-12 with one torch"
        " thread each, but for ROME's T = 50 cell, 8.7 h from its first 36 edits);"
        " a cell cut off continues after its last edit"
        if full
        else "about 5.8 h (its 27 cells measured in 2026-12 with one torch thread each, the other"
        " core busy); a cell cut off continues after its last edit"
    )

    def run(out: Path, console: Console) -> object:
        for edits in tables:
            run_lifelong_report(LifelongReportConfig(edits=edits, out=out / edits), console)
        return None

    return Preset(what, time, run)


def _privacy(full: bool) -> Preset:
    from ce_bench.reports.privacy import PrivacyConfig, run_privacy_report

    what = (
        "Knowledge Microscope: the 42 shipped private facts injected into layer 20, erased by"
        " FeatureEdit at three budgets and by knowledge neurons at two"
        + (" (--full is the same: the shipped set is the whole set)" if full else "")
    )
    time = (
        "about 17 min (2026-12-03, one torch thread: injection 5.5 min, the five locates 4.5"
        " min with the layer-20 SAE, the five evaluations 7 min)"
    )

    def run(out: Path, console: Console) -> object:
        return run_privacy_report(PrivacyConfig(out=out), console)

    return Preset(what, time, run)


PRESETS: dict[str, Callable[[bool], Preset]] = {
    "concept": _concept,
    "erasure": _erasure,
    "lifelong": _lifelong,
    "privacy": _privacy,
}


def reproduce(name: str, full: bool, out: Path, console: Console) -> None:
    """Say what runs and how long it took here, then run it into `out` (resuming)."""
    if name not in PRESETS:
        raise ValueError(f"unknown run {name!r}: choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name](full)
    console.print(f"[bold]{name}{' --full' if full else ''}[/bold]: {preset.what}.")
    console.print(f"Time on 2 CPU cores: {preset.time}. Output: {out}/ (resumable).")
    preset.run(out, console)
