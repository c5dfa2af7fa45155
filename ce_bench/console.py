"""What the terminal shows during long work: ce-bench's steps and tables, and nothing else.

lm-eval, transformers, datasets and sae-lens talk a lot while a report runs: INFO lines, the same
warning once per task, a tqdm bar per request type and per weight load. Inside
`quiet_to(log, console)` all of that goes to the log file instead: those libraries' Python
logging, Python warnings, whatever is written to stderr (where tqdm draws) from Python, C code
or a subprocess, and what is printed to stdout (lm-eval prints). ce-bench's own rich `console`
stays on the terminal. `--verbose` on the commands skips it. The log keeps a progress bar's last
state rather than its every redraw.

Cells that run in a fresh process (the lifelong report) call `quiet_to(current_log())` again
there: a spawned child does not inherit the parent's logging set-up.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.spinner import Spinner

# The loggers that print to the terminal on their own (each has its own stderr handler or
# reaches the root one); "py.warnings" is where logging.captureWarnings sends warnings.
LIBRARY_LOGGERS = (
    "lm_eval", "transformers", "datasets", "sae_lens", "accelerate", "huggingface_hub", "torch",
    "py.warnings",
)  # fmt: skip

_active: list[Path] = []  # the log files of the quiet_to blocks now open, innermost last


class LogStream:
    """A text stream onto a log file that writes whole lines, and of a line redrawn with
    carriage returns (a progress bar) only its last state."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self.pending = ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self.file.write(_last_state(line) + "\n")
        if "\r" in self.pending:
            self.pending = "\r" + _last_state(self.pending)
        return len(text)

    def flush(self) -> None:
        self.file.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self.pending.strip():
            self.file.write(_last_state(self.pending) + "\n")
        self.pending = ""
        self.file.close()


def _last_state(line: str) -> str:
    parts = [p for p in line.split("\r") if p.strip()]
    return re.sub(r"\s+$", "", parts[-1]) if parts else ""


@contextmanager
def quiet_to(log_file: Path | None, console: Console | None = None) -> Iterator[None]:
    """Send the libraries' logging, Python warnings, stderr and stdout (lm-eval prints) to
    `log_file` (appended) for the block; `console`, ours, keeps writing to the terminal. None
    (the commands' --verbose) changes nothing."""
    if log_file is None:
        yield
        return
    import lm_eval.utils

    lm_eval.utils.setup_logging(logging.WARNING)  # its own stderr handler, made before we swap it
    log_file.parent.mkdir(parents=True, exist_ok=True)
    stream = LogStream(log_file.open("a", encoding="utf-8"))
    handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [(lg.handlers, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
    logging.captureWarnings(True)
    _active.append(log_file)
    sys.stderr.flush()
    terminal = os.dup(2)  # file descriptor 2 too: subprocesses (git) and C code write there
    os.dup2(stream.file.fileno(), 2)
    if console is not None:
        console.file = sys.stdout  # held, so that the redirection below does not take it
    try:
        with redirect_stderr(stream), redirect_stdout(stream):  # type: ignore[type-var]
            yield
    finally:
        if console is not None:
            console.file = None  # type: ignore[assignment] (back to following sys.stdout)
        stream.flush()
        os.dup2(terminal, 2)
        os.close(terminal)
        _active.pop()
        logging.captureWarnings(False)
        for lg, (handlers, propagate) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate
        stream.close()


def current_log() -> Path | None:
    """The log file of the innermost open `quiet_to` block (None: not quiet)."""
    return _active[-1] if _active else None


def log_file_for(out: Path, verbose: bool, console: Console) -> Path | None:
    """The log of a command writing to `out` (None with --verbose), named once at the start."""
    if verbose:
        return None
    path = out / "ce-bench.log"
    console.print(f"lm-eval's and transformers' messages go to {path}", style="dim")
    return path


def step_progress(console: Console) -> Progress:
    """The one progress display of a step: its name, a bar, done/total, elapsed time and an ETA;
    `detail` (a field) says what runs now."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        redirect_stdout=False,  # both may be the log (quiet_to): rich would print them here
        redirect_stderr=False,
    )


def waiting(console: Console, text: str) -> Live:
    """A spinner with `text` for work without steps to count (rich's `console.status`, which
    would print a redirected stderr, the log, on the terminal)."""
    return Live(
        Spinner("dots", text),
        console=console,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )
