"""`ce-bench sweep --executor ray` on a local Ray instance started here (2 CPUs, loopback, shut
down after): the same metrics as the serial executor, a killed run restarted skips what it
finished, a cell that raises is recorded and named; and the claim that keeps two workers from
writing one cell."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ce_bench.artifacts import save_artifact
from ce_bench.board.cells import CLAIM, ERROR, MARKER, Cell, CellJob, claimed
from ce_bench.board.executors import ExecutorError, RayExecutor, Resources
from ce_bench.board.runs import load_runs
from ce_bench.board.sweep import Sweep, SweepConfig
from ce_bench.cli import app
from ce_bench.sites import Site
from tests.conftest import tiny_model
from tests.helpers import SWEEP_CONFIG, Interrupted, make_artifact

# Ray on Linux advertises (and binds) the host's address; this makes the local instances of
# these tests, and their workers, use and listen on loopback only. Read when ray is imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

# The serial sweep's cells but the lifelong one, plus an artifact located on another model.
RAY_CONFIG = SWEEP_CONFIG.split("lifelong:")[0] + (
    "artifacts:\n  - path: {foreign}\n    tasks: [ce_mini_arc_easy]\n"
)


def _start_local_ray():  # type: ignore[no-untyped-def]
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    return ray


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A Ray sweep killed with its cluster after its first evaluated cell, then restarted on a
    new cluster with `ce-bench sweep --executor ray`: (config, the markers' mtimes when the
    restart began, the restart's CLI result). The second cluster lives until the module ends."""
    work = tmp_path_factory.mktemp("ray_sweep")
    foreign = make_artifact(
        tiny_model("llama"), "steer", Site("resid_post", 1), {"strength": 2.0},
        vector=torch.randn(32),
    )  # fmt: skip
    save_artifact(foreign, work / "foreign")
    (work / "sweep.yaml").write_text(RAY_CONFIG.format(foreign=work / "foreign"))
    config = SweepConfig.from_yaml(work / "sweep.yaml", out=work / "out")
    ray = _start_local_ray()
    first = Sweep(config, executor=RayExecutor(config.resources))

    def stop(cell: Cell) -> None:
        raise Interrupted

    try:
        with pytest.raises(Interrupted):
            first.run(after_cell=stop)
    finally:
        ray.shutdown()  # the whole cluster goes, with whatever its workers were doing
    before = {p.parent.name: p.stat().st_mtime for p in (config.out / "runs").glob(f"*/{MARKER}")}
    _start_local_ray()
    try:
        result = CliRunner().invoke(
            app,
            ["sweep", str(work / "sweep.yaml"), "--out", str(config.out), "--executor", "ray"],
        )
        yield config, before, result
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_ray_sweep_gives_the_serial_sweeps_metrics_cell_by_cell(sweep, ray_sweep) -> None:
    serial_out, ray_out = sweep[0].out / "runs", ray_sweep[0].out / "runs"
    compared = 0
    for directory in ray_out.iterdir():
        if not (directory / MARKER).exists():
            continue
        expected = _scores(serial_out / directory.name)  # same spec, same fingerprint
        for key, value in _scores(directory).items():
            assert value == pytest.approx(expected[key], rel=1e-4, abs=1e-6, nan_ok=True)
            compared += 1
    assert compared and len(list(ray_out.glob(f"*/{MARKER}"))) == 4  # unedited, 2 strengths, test


def _scores(cell: Path) -> dict[tuple[str, str], float]:
    """(task, metric) -> value over a cell's results files."""
    runs = load_runs([cell])
    return {(t, m): s.value for run in runs for t, ms in run.scores.items() for m, s in ms.items()}


@pytest.mark.slow
def test_a_restarted_ray_sweep_skips_the_cells_the_stopped_one_finished(ray_sweep) -> None:
    config, before, result = ray_sweep
    assert before  # the stopped run finished at least its first cell
    for name, mtime in before.items():  # not evaluated again
        assert (config.out / "runs" / name / MARKER).stat().st_mtime == mtime
    finished = list((config.out / "runs").glob(f"*/{MARKER}"))
    assert len(finished) == 4 and "already finished" in result.output


@pytest.mark.slow
def test_a_cell_that_raises_is_recorded_and_named_and_the_sweep_exits_1(ray_sweep) -> None:
    config, _, result = ray_sweep
    assert result.exit_code == 1, result.output
    (failed,) = [d for d in (config.out / "runs").iterdir() if (d / ERROR).exists()]
    assert failed.name.startswith("foreign") and not (failed / MARKER).exists()
    error = json.loads((failed / ERROR).read_text())
    assert "located on a model with" in error["error"] and "Traceback" in error["traceback"]
    assert "FAILED: 1 job(s): foreign" in result.output
    assert (config.out / "leaderboard" / "board.md").exists()  # the board of the other cells


@pytest.mark.slow
def test_ray_executor_refuses_resources_no_node_has(ray_sweep) -> None:
    with pytest.raises(ExecutorError, match="asks for 1 GPU, but the cluster has 0"):
        RayExecutor(Resources(num_gpus=1))


# ---------------------------------------------------------------------- the claim
def _hold_claim(directory: Path, seconds: float, finish: Cell | None) -> None:
    with claimed(directory):
        time.sleep(seconds)
        if finish is not None:
            marker = {"fingerprint": finish.fingerprint}
            (directory / MARKER).write_text(json.dumps(marker))


def _start(target, *args) -> multiprocessing.Process:  # type: ignore[no-untyped-def]
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    return process


def test_a_cell_another_process_is_evaluating_is_waited_for_then_skipped(tmp_path) -> None:
    cell = Cell("c", {"x": 1})
    # a model that cannot load: the job would fail if it evaluated instead of waiting
    job = CellJob(cell, tmp_path, "no-such-model", "cpu", 1, {}, [(["t"], 1)], {})
    holder = _start(_hold_claim, cell.directory(tmp_path), 3.0, cell)
    while not (cell.directory(tmp_path) / CLAIM).exists():
        time.sleep(0.05)
    time.sleep(0.5)
    assert job().status == "skipped"
    holder.join()


def test_a_killed_workers_claim_is_released_at_once(tmp_path) -> None:
    holder = _start(_hold_claim, tmp_path / "cell", 60.0, None)
    while not (tmp_path / "cell" / CLAIM).exists():
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    start = time.monotonic()
    with claimed(tmp_path / "cell", poll=0.1):
        assert time.monotonic() - start < 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "slurm"], "unknown --executor 'slurm'; known: serial, ray"),
        (["--address", "10.0.0.1:6379"], "--address needs --executor ray"),
    ],
)
def test_sweep_refuses_an_unknown_executor_or_an_address_without_ray(
    tmp_path, args, message
) -> None:
    (tmp_path / "sweep.yaml").write_text("general_tasks: [ce_mini_arc_easy]\n")
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "sweep.yaml"), *args])
    assert result.exit_code == 2 and message in result.output
