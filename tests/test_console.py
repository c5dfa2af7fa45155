"""The terminal contract of long commands: library chatter goes to a log file, ours stays."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from rich.console import Console
from tqdm import tqdm

from ce_bench.console import LogStream, current_log, quiet_to, step_progress, waiting


@pytest.fixture
def loud():  # type: ignore[no-untyped-def]
    """The libraries' loggers at WARNING and every warning shown, whatever earlier tests (or
    lm-eval runs with verbosity=ERROR) left behind."""
    loggers = [logging.getLogger(name) for name in ("lm_eval", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def _chatter() -> None:
    """What lm-eval, transformers and friends print during a run."""
    logging.getLogger("lm_eval.api.task").warning("Custom kwargs can be passed to `--metadata`")
    logging.getLogger("transformers.modeling_utils").warning("some weights were not used")
    warnings.warn("`torch_dtype` is deprecated", FutureWarning, stacklevel=1)
    for _ in tqdm(range(3), desc="Running generate_until requests"):
        pass
    print("a stray line on stderr", file=sys.stderr)
    subprocess.run(["sh", "-c", "echo fatal: not a git repository >&2"], check=True)


def test_quiet_to_sends_library_logging_warnings_and_output_to_the_log(tmp_path, capfd, loud):
    log = tmp_path / "out" / "ce-bench.log"
    console = Console(width=80)  # ours: follows sys.stdout, as the commands' console does
    with quiet_to(log, console):
        _chatter()
        print("bootstrapping for stddev: nanmean")  # lm-eval prints this, to stdout
        console.print("our table")
    out, err = capfd.readouterr()
    assert out == "our table\n"
    assert err == ""
    text = log.read_text()
    for line in (
        "WARNING lm_eval.api.task: Custom kwargs",
        "WARNING transformers.modeling_utils: some weights were not used",
        "FutureWarning: `torch_dtype` is deprecated",
        "Running generate_until requests: 100%",
        "a stray line on stderr",
        "fatal: not a git repository",
        "bootstrapping for stddev: nanmean",
    ):
        assert line in text


def test_the_log_keeps_a_progress_bars_last_state_only(tmp_path):
    log = tmp_path / "ce-bench.log"
    with quiet_to(log):
        for _ in tqdm(range(50), desc="bar", mininterval=0):
            pass
    lines = [line for line in log.read_text().splitlines() if line.startswith("bar")]
    assert len(lines) == 1 and "50/50" in lines[0]


def test_quiet_to_gives_the_terminal_back_afterwards(tmp_path, capfd):
    logger = logging.getLogger("transformers")
    handlers = list(logger.handlers)
    with quiet_to(tmp_path / "ce-bench.log"):
        assert current_log() == tmp_path / "ce-bench.log"
    assert current_log() is None
    assert logger.handlers == handlers
    print("visible", file=sys.stderr)
    subprocess.run(["sh", "-c", "echo also visible >&2"], check=True)
    assert capfd.readouterr().err == "visible\nalso visible\n"


def test_verbose_leaves_everything_on_the_terminal(capfd):
    with quiet_to(None):
        assert current_log() is None
        print("shown", file=sys.stderr)
    assert capfd.readouterr().err == "shown\n"


def test_an_error_inside_still_restores_the_terminal(tmp_path, capfd):
    try:
        with quiet_to(tmp_path / "ce-bench.log"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    print("after", file=sys.stderr)
    assert capfd.readouterr().err == "after\n"


def test_log_stream_writes_whole_lines_and_flushes_a_partial_one_on_close(tmp_path: Path):
    file = io.StringIO()
    file.close = lambda: None  # type: ignore[method-assign] (read it after close)
    stream = LogStream(file)
    stream.write("one\ntw")
    stream.write("o\n\r 10%\r 20%")
    assert file.getvalue() == "one\ntwo\n"
    stream.close()
    assert file.getvalue() == "one\ntwo\n 20%\n"


def test_a_spinner_or_progress_keeps_the_log_off_the_terminal(tmp_path, capfd):
    console = Console(force_terminal=True, width=80)  # rich redirects only on a terminal
    with quiet_to(tmp_path / "ce-bench.log", console):
        with waiting(console, "training the SAE"):
            print("sae-lens chatter", file=sys.stderr)
        with step_progress(console) as progress:
            progress.add_task("cells", total=1, detail="")
            print("lm-eval chatter")
    out, err = capfd.readouterr()
    assert "chatter" not in out + err
    assert "sae-lens chatter" in (tmp_path / "ce-bench.log").read_text()
