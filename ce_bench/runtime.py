"""The ground floor: where ce-bench keeps its files, its task folder, and how it uses the CPU.

Everything here is imported by modules on every floor above, and imports nothing of ce-bench's
except the installed task package.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

EMBEDDED_NAME = "smollm2-135m"  # the embedded default model (ce_bench.embedded)


def ce_bench_home() -> Path:
    """Where ce-bench caches converted models and other derived files (`$CE_BENCH_HOME`,
    default `~/.cache/ce_bench`)."""
    return Path(os.environ.get("CE_BENCH_HOME", Path.home() / ".cache" / "ce_bench"))


def task_dir() -> Path:
    """The folder of ce-bench's task YAMLs and their shipped data (the installed
    `ce_bench.tasks` package: the top-level `tasks/` folder of the repository)."""
    import ce_bench.tasks

    return Path(ce_bench.tasks.__file__).parent


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch threads, then restore the previous number."""
    import torch  # here, not at the top: `import ce_bench` must stay light

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def free_cores() -> int:
    """Cores not already busy with other processes, at least 1."""
    import torch

    busy = os.getloadavg()[0]
    return max(1, min(torch.get_num_threads(), round((os.cpu_count() or 1) - busy)))


def exit_with_parent(parent: int, poll_seconds: float = 2.0) -> None:
    """End this worker process soon after the process that started it, `parent` (its pid, as
    the parent saw it), ends (killed included), so that a stopped report leaves no cell
    editing on and writing the progress that the report, started again, writes too. A parent
    gone before this call (killed while the worker was still importing) ends it at once."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def reset_peak_memory() -> None:
    """Start the peaks `peak_rss_mb` and CUDA report anew from here: Linux lets a process
    reset its resident high-water mark (`/proc/self/clear_refs`, 5); elsewhere the peak
    stays the process's."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (getrusage: KB on Linux, bytes on
    macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def model_cache_name(model: Any) -> str:
    """The name a loaded model's derived files are cached under (C, MEND networks): its folder
    or hub name, else its model type."""
    return Path(str(model.config.name_or_path)).name or model.config.model_type
