"""`lm_eval` run as a subprocess, exactly as a user types it, on the embedded model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ce_bench.artifacts import save_artifact
from ce_bench.embedded import load_model
from ce_bench.locate.diffmean import DiffmeanConfig, locate_diffmean
from tests.helpers import lm_eval, results_of

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.fixture(scope="module")
def happy_sv(tmp_path_factory, embedded_dir) -> Path:  # type: ignore[no-untyped-def]
    model, tokenizer = load_model("smollm2-135m", "cpu")
    lines = [(EXAMPLES / f"{name}.txt").read_text().splitlines() for name in ("happy", "neutral")]
    config = DiffmeanConfig(layer=15, strength=6.0)
    art = locate_diffmean(model, tokenizer, lines[0], lines[1], config, model_name="smollm2-135m")
    return save_artifact(art, tmp_path_factory.mktemp("sv") / "happy_sv")


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, embedded_dir, happy_sv):  # type: ignore[no-untyped-def]
    """hf, edited_hf without and with a steer artifact, on ce_general_mini --limit 4; and the
    steer artifact on ce_paired_general_mini with --log_samples ("paired", in out["dir"])."""
    work = tmp_path_factory.mktemp("runs")
    common = ["--limit", "4", "--batch_size", "8"]
    steer = ["--model", "edited_hf", "--model_args", f"intervention={happy_sv}"]
    runs = {
        "hf": ["--model", "hf", "--model_args", f"pretrained={embedded_dir}"],
        "bare": ["--model", "edited_hf"],
        "steer": steer,
        "paired": [*steer, "--log_samples"],
    }
    out = {"dir": work}
    for name, args in runs.items():
        tasks = "ce_paired_general_mini" if name == "paired" else "ce_general_mini"
        where = ["--tasks", tasks, "--output_path", str(work / name)]
        proc = lm_eval(*args, *common, *where, cwd=work)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = results_of(work / name)
    return out


def test_one_paired_run_holds_what_an_unedited_and_an_edited_run_measure(three_runs) -> None:
    paired, hf, steer = (three_runs[k]["results"] for k in ("paired", "hf", "steer"))
    for task, metrics in hf.items():
        if task == "ce_general_mini":
            continue
        twin = paired[task.replace("ce_mini_", "ce_paired_mini_")]
        for key in (k for k in metrics if k.startswith("acc") and "stderr" not in k):
            name, _, filt = key.partition(",")
            assert twin[f"{name}_base,{filt}"] == pytest.approx(metrics[key], abs=1e-9), task
            assert twin[key] == pytest.approx(steer[task][key], abs=1e-9), task
    assert len(paired) == 6 + 1  # the six tasks and their group


def test_regress_gates_a_paired_run_alone_over_its_documents(three_runs) -> None:
    from typer.testing import CliRunner

    from ce_bench.cli import app

    run = str(three_runs["dir"] / "paired")
    result = CliRunner().invoke(app, ["regress", "--paired", run], env={"COLUMNS": "80"})
    assert result.exit_code in (0, 1), result.output
    assert "ce_paired_mini_truthfulqa_mc2" in result.output and "unpaired" not in result.output
    typo = CliRunner().invoke(app, ["regress", "--paired", run, "--max-drop", "ce_perplexty=2"])
    assert typo.exit_code == 2 and "ce_perplexty" in typo.output
    plain = str(three_runs["dir"] / "hf")
    result = CliRunner().invoke(app, ["regress", "--paired", plain])
    assert result.exit_code == 2 and "no paired general-ability task" in result.output


def _metrics(results: dict) -> dict:
    return {
        task: {k: v for k, v in m.items() if k != "alias"} for task, m in results["results"].items()
    }


def test_edited_hf_without_intervention_matches_hf_exactly(three_runs) -> None:
    assert _metrics(three_runs["bare"]) == _metrics(three_runs["hf"])
    assert set(three_runs["hf"]["results"]) >= {
        "ce_mini_arc_easy",
        "ce_mini_mmlu",
        "ce_mini_winogrande",
    }


def test_steer_artifact_changes_results_and_is_fingerprinted(three_runs, happy_sv) -> None:
    assert _metrics(three_runs["steer"]) != _metrics(three_runs["hf"])
    info = three_runs["steer"]["config"]["ce_bench"]
    assert info["interventions"][0]["kind"] == "steer"
    assert info["interventions"][0]["artifact"] == str(happy_sv.resolve())
    assert info["fingerprint"] != three_runs["bare"]["config"]["ce_bench"]["fingerprint"]


def test_lm_eval_lists_ce_bench_and_builtin_tasks(tmp_path) -> None:
    proc = lm_eval("ls", "tasks", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("ce_general_mini", "ce_mini_hellaswag", "ce_paired_generation", "arc_easy"):
        assert name in proc.stdout


def test_paired_task_with_hf_fails_saying_it_needs_edited_hf(tmp_path, embedded_dir) -> None:
    proc = lm_eval(
        "--model",
        "hf",
        "--model_args",
        f"pretrained={embedded_dir}",
        "--tasks",
        "ce_paired_generation",
        "--limit",
        "1",
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "needs `--model edited_hf`" in proc.stderr


def test_bad_artifact_fails_before_evaluation_with_its_message(tmp_path, happy_sv) -> None:
    proc = lm_eval(
        "--model",
        "edited_hf",
        "--model_args",
        f"intervention={happy_sv},positions=middle",
        "--tasks",
        "ce_mini_arc_easy",
        "--limit",
        "1",
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "positions must be one of all, prompt, generated, last" in proc.stderr
    assert "Running loglikelihood requests" not in proc.stderr


def test_concept_emotion_without_a_judge_key_fails_before_the_model_loads_naming_both_fixes(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args = ["--model", "edited_hf", "--tasks", "concept_emotion", "--limit", "1"]
    missing = str(tmp_path / "no-model")  # loading it would fail: the check must come first
    proc = lm_eval(*args[:2], "--model_args", f"pretrained={missing}", *args[2:], cwd=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ce-bench: error: concept_emotion cannot build its judge")
    assert "OPENAI_API_KEY" in last and '{"judge": "lexicon"}' in last
    assert "Traceback" not in proc.stderr and "no-model" not in proc.stderr


def test_bad_input_shows_its_traceback_when_asked(tmp_path, happy_sv) -> None:
    proc = lm_eval(
        "--model", "edited_hf",
        "--model_args", f"intervention={happy_sv},positions=middle",
        "--tasks", "ce_mini_arc_easy",
        cwd=tmp_path, env={"CE_BENCH_TRACEBACK": "1"},
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_use_cache_never_returns_another_interventions_answer(tmp_path, happy_sv) -> None:
    cache = str(tmp_path / "cache" / "lm")
    common = ["--tasks", "ce_paired_mini_arc_easy", "--limit", "3", "--use_cache", cache]
    first = lm_eval(
        "--model",
        "edited_hf",
        "--model_args",
        f"intervention={happy_sv}",
        *common,
        "--output_path",
        str(tmp_path / "a"),
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    second = lm_eval(
        "--model",
        "edited_hf",
        "--model_args",
        f"intervention={happy_sv},strength=0",
        *common,
        "--output_path",
        str(tmp_path / "b"),
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    strong = results_of(tmp_path / "a")["results"]["ce_paired_mini_arc_easy"]
    zero = results_of(tmp_path / "b")["results"]["ce_paired_mini_arc_easy"]
    assert zero["agree,none"] == 1.0  # k = 0: edited == unedited, not the cached k = 6 answers
    assert strong["acc_base,none"] == zero["acc_base,none"]


def test_plain_python_processes_do_not_import_lm_eval() -> None:
    code = "import sys; print('lm_eval' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
        == "False"
    )
