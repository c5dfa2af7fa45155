"""The paired CI gate on a real `--log_samples` run of the embedded model: documents are paired
by doc_id, a real drop fails, balanced changes and an identical copy pass, mismatched documents
are unusable, and a gate without samples says how blind it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ce_bench.board.regress import FAIL, PASS, UNUSABLE
from ce_bench.cli import app
from tests.helpers import lm_eval

pytestmark = pytest.mark.slow
TASK = "ce_mini_arc_easy"


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, embedded_dir) -> Path:  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("gate")
    proc = lm_eval(
        "--model", "edited_hf", "--tasks", TASK, "--limit", "50", "--batch_size", "16",
        "--output_path", str(work / "base"), "--log_samples",
        cwd=work,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "base"


def _copy_with(base: Path, out: Path, change) -> Path:  # type: ignore[no-untyped-def]
    """A copy of the run whose TASK samples went through `change(rows)`, results kept in step."""
    shutil.copytree(base, out)
    (samples,) = out.rglob(f"samples_{TASK}_*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    change(rows)
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (results,) = out.rglob("results_*.json")
    data = json.loads(results.read_text())
    data["results"][TASK]["acc,none"] = sum(r["acc"] for r in rows) / len(rows)
    results.write_text(json.dumps(data))
    return out


def _flip(right_to_wrong: int, wrong_to_right: int):  # type: ignore[no-untyped-def]
    def change(rows: list[dict]) -> None:
        right = [r for r in rows if r["acc"] == 1.0][:right_to_wrong]
        wrong = [r for r in rows if r["acc"] == 0.0][:wrong_to_right]
        assert len(right) == right_to_wrong and len(wrong) == wrong_to_right
        for r in right:
            r["acc"] = 0.0
        for r in wrong:
            r["acc"] = 1.0

    return change


def _gate(base: Path, candidate: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = ["regress", "--baseline", str(base), "--candidate", str(candidate), "--task", TASK]
    return CliRunner().invoke(app, [*args, *extra], env={"COLUMNS": "80"})


def test_six_answers_turned_wrong_fail_the_paired_gate(base_run, tmp_path) -> None:
    candidate = _copy_with(base_run, tmp_path / "worse", _flip(6, 0))
    result = _gate(base_run, candidate)
    assert result.exit_code == FAIL, result.output
    assert "6/0" in result.output and "+0.120 [" in result.output  # discordant, drop, CI
    assert "unpaired" not in result.output


def test_balanced_changes_and_an_identical_copy_pass(base_run, tmp_path) -> None:
    balanced = _copy_with(base_run, tmp_path / "balanced", _flip(3, 3))
    result = _gate(base_run, balanced)
    assert result.exit_code == PASS, result.output
    assert "3/3" in result.output
    assert _gate(base_run, base_run).exit_code == PASS


def test_a_small_drop_that_is_significant_still_passes_within_max_drop(base_run, tmp_path) -> None:
    candidate = _copy_with(base_run, tmp_path / "worse", _flip(6, 0))
    assert _gate(base_run, candidate, "--max-drop", "0.15").exit_code == PASS


def test_documents_whose_hash_differs_are_unusable_naming_the_task(base_run, tmp_path) -> None:
    def change(rows: list[dict]) -> None:
        rows[3]["doc_hash"] = "0" * 64

    other = _copy_with(base_run, tmp_path / "other", change)
    result = _gate(base_run, other)
    assert result.exit_code == UNUSABLE
    assert f"{TASK}: document 3 differs between the runs" in " ".join(result.output.split())


def test_without_samples_the_gate_says_it_is_unpaired_and_how_big_a_drop_it_needs(
    base_run, tmp_path
) -> None:
    candidate = _copy_with(base_run, tmp_path / "worse", _flip(6, 0))
    for samples in candidate.rglob("samples_*.jsonl"):
        samples.unlink()
    result = _gate(base_run, candidate)
    assert result.exit_code == PASS, result.output  # the unpaired rule cannot see 0.12 at n=50
    text = " ".join(result.output.split())
    assert "(needs >0.1" in text and "--log_samples for the paired test" in text
