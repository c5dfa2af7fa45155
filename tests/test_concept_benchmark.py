"""The concept-editing benchmark (Unified Concept Editing Table 2): strength selection, then one
test run."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from lm_eval.models.huggingface import HFLM

from ce_bench.artifacts import load_artifact
from ce_bench.reports.concept import (
    GRIDS,
    BenchmarkConfig,
    choose_strength,
    run_benchmark,
    strength_grid,
)

LAST = 2  # the tiny model's last layer


def _v(strength: float, success: float, degenerate: float) -> dict[str, float]:
    return {"strength": strength, "success_rate": success, "degenerate_rate": degenerate}


def test_strength_is_the_best_success_among_those_under_the_degenerate_bound() -> None:
    sweep = [_v(1, 0.2, 0.0), _v(2, 0.6, 0.4), _v(4, 0.9, 0.8)]
    assert choose_strength(sweep, max_degenerate=0.5) == 2


def test_strength_ties_go_to_the_weaker_edit_and_nan_success_never_wins() -> None:
    assert choose_strength([_v(1, 0.5, 0.0), _v(2, 0.5, 0.0)], 0.5) == 1
    assert choose_strength([_v(1, math.nan, 0.0), _v(2, 0.0, 0.0)], 0.5) == 2


def test_when_every_strength_is_degenerate_the_least_degenerate_is_kept() -> None:
    assert choose_strength([_v(1, 0.9, 0.9), _v(2, 0.9, 0.7)], 0.5) == 2


def test_benchmark_selects_on_validation_tests_once_and_shares_unedited_answers(
    tiny_llama_dir, tmp_path, monkeypatch
) -> None:
    calls: list[int] = []
    generate = HFLM._model_generate

    def counting(self, context, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(context.shape[0])
        return generate(self, context, *args, **kwargs)

    monkeypatch.setattr(HFLM, "_model_generate", counting)
    config = BenchmarkConfig(
        model=str(tiny_llama_dir),
        layer=LAST,
        emotions=("anger",),
        methods=("steering",),
        locate_limit=1,
        validation_limit=2,
        test_limit=3,
        max_gen_toks=4,
        out=tmp_path,
    )
    (cell,) = run_benchmark(config)

    artifact = load_artifact(cell.artifact)
    assert [v["strength"] for v in cell.validation] == strength_grid(artifact)
    assert len(cell.validation) == len(GRIDS["steer"])
    assert cell.strength in strength_grid(artifact)
    assert 0.0 <= cell.test["success_rate"] <= 1.0
    # one ON batch per run (3 strengths + test), the OFF batch once per split
    assert calls == [2, 2, 2, 2, 3, 3]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["cells"][0]["strength"] == cell.strength
    table = (tmp_path / "table2.md").read_text()
    assert f"| anger | {100 * cell.test['success_rate']:.2f} |" in table
    assert list((tmp_path / "runs" / "steering" / "anger").rglob("results_*.json"))  # the board's

    def must_not_run(*args):  # type: ignore[no-untyped-def]
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr("ce_bench.reports.concept._run_cell", must_not_run)
    assert run_benchmark(replace(config, resume=True)) == [cell]  # resumed: nothing runs
    with pytest.raises(AssertionError, match="ran again"):  # other settings: other cells
        run_benchmark(replace(config, resume=True, test_limit=2))


def test_sae_features_on_another_model_needs_an_sae(tiny_llama_dir, tmp_path) -> None:
    config = BenchmarkConfig(model=str(tiny_llama_dir), methods=("sae-features",), out=tmp_path)
    with pytest.raises(ValueError, match="needs an SAE"):
        run_benchmark(config)
