"""A sweep's units of work, each runnable in this process or on a Ray worker: locating an
artifact (`LocateJob`) and evaluating one cell through lm-eval (`CellJob`).

A cell's directory is its record on the shared output directory:

- `cell.json`, written after lm-eval's results: the cell is finished (and skipped by every
  later run, serial or Ray, whose spec hashes to the same fingerprint);
- `error.json`: the last attempt raised (type, message, traceback); the next run tries again;
- `.claim`: locked (`flock`) by the one process evaluating the cell. A second process that
  reaches the cell waits for the lock, then finds the cell finished. The kernel drops the lock
  of a killed process, so a killed run never blocks its restart.

A worker keeps the models it loaded (`worker_model`), so its next cell on the same base model
reuses them, as the serial sweep does.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MARKER = "cell.json"
ERROR = "error.json"
CLAIM = ".claim"
Call = tuple[list[str], int | None]  # one lm-eval call of a cell: tasks and their --limit


@dataclass(frozen=True)
class Cell:
    """One lm-eval evaluation: what model, which edit, which tasks on which data."""

    name: str  # readable part of the directory name
    spec: dict[str, Any]  # everything that decides its results (hashed for the directory)

    @property
    def fingerprint(self) -> str:
        return digest(self.spec)

    def directory(self, out: Path) -> Path:
        return out / "runs" / f"{self.name}-{self.fingerprint}"

    def finished(self, out: Path) -> bool:
        marker = self.directory(out) / MARKER
        if not marker.is_file():
            return False
        try:
            return json.loads(marker.read_text()).get("fingerprint") == self.fingerprint
        except (OSError, json.JSONDecodeError):
            return False


@dataclass
class Outcome:
    """What became of one job: `ran`, `skipped` (finished before), `failed`, or (a locate job
    whose method found nothing) `not located`."""

    name: str
    status: str
    seconds: float = 0.0
    error: str | None = None
    grid: list[float] | None = None  # a LocateJob's strengths (its method's grid)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def record_failure(directory: Path, name: str, error: BaseException | str) -> Outcome:
    """Write `error.json` into `directory` and say the job failed (the sweep goes on)."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    trace = "" if isinstance(error, str) else "".join(traceback.format_exception(error))
    directory.mkdir(parents=True, exist_ok=True)
    record = {"error": text, "traceback": trace, "host": socket.gethostname(), "pid": os.getpid()}
    (directory / ERROR).write_text(json.dumps(record, indent=1) + "\n")
    return Outcome(name, "failed", error=text)


@contextmanager
def claimed(directory: Path, poll: float = 1.0) -> Iterator[None]:
    """Hold `directory`'s claim, waiting while another process holds it. The claim file names
    its holder, for the person who finds a sweep waiting."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / CLAIM, "a+") as handle:
        for attempt in itertools.count():
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not attempt:
                    handle.seek(0)
                    holder = handle.read().strip()
                    logger.warning("%s is claimed by %s: waiting for it", directory, holder)
                time.sleep(poll)
        handle.truncate(0)
        handle.write(f"{socket.gethostname()} pid {os.getpid()} since {time.ctime()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------- a worker's models
@dataclass
class WorkerModel:
    """A base model loaded once per process, with the caches that stay valid while its
    weights do not change (see EditedHFLM's `unedited_answers`, EmotionJob's `residuals`)."""

    model: Any
    tokenizer: Any
    unedited_answers: dict[str, Any] = field(default_factory=dict)
    residuals: dict[Any, Any] = field(default_factory=dict)


_LOADED: dict[tuple[str, str | None], WorkerModel] = {}


def worker_model(name: str, device: str | None) -> WorkerModel:
    """This process's copy of model `name` (loaded on first use)."""
    if (name, device) not in _LOADED:
        from ce_bench.embedded import load_model

        _LOADED[name, device] = WorkerModel(*load_model(name, device))
    return _LOADED[name, device]


# ---------------------------------------------------------------------- the two jobs
@dataclass(frozen=True)
class LocateJob:
    """Locate a concept artifact into `where`, or read back the one a previous run saved.
    Returns the artifact's strength grid for the validation cells."""

    name: str
    model: str
    device: str | None
    method: str
    layer: int
    concept: str
    seed: int
    limit: int | None
    options: dict[str, Any]
    where: Path

    def __call__(self) -> Outcome:
        from ce_bench.artifacts import ArtifactError, load_artifact
        from ce_bench.locate.sae_features import FeatureNotFound
        from ce_bench.reports.concept import strength_grid

        start = time.perf_counter()
        with claimed(self.where):
            try:
                artifact, status = load_artifact(self.where), "skipped"
            except ArtifactError:
                try:
                    artifact, status = self._locate(), "ran"
                except FeatureNotFound as err:  # a finding, not a failure: no cells to run
                    return Outcome(self.name, "not located", error=str(err))
                except Exception as err:
                    return record_failure(self.where, self.name, err)
        seconds = time.perf_counter() - start
        return Outcome(self.name, status, seconds, grid=strength_grid(artifact))

    def _locate(self) -> Any:
        from ce_bench.interventions.base import save_intervention
        from ce_bench.locate.emotion import EmotionData, EmotionJob, locate_emotion

        loaded = worker_model(self.model, self.device)
        data = EmotionData.load(seed=self.seed)
        job = EmotionJob(loaded.model, loaded.tokenizer, self.model, data, self.concept, self.layer)
        job.limit, job.residuals = self.limit, loaded.residuals
        job.options = dict(self.options)
        if self.method == "sae-features":
            from ce_bench.reports.concept import own_sae

            job.sae = own_sae(self.model, self.layer)
        artifact = locate_emotion(self.method, job)
        save_intervention(artifact, self.where)
        return artifact


@dataclass(frozen=True)
class CellJob:
    """Evaluate `cell` unless it is finished: lm-eval runs of one edited model, (tasks, limit)
    each, written into the cell's directory as `lm_eval --output_path DIR --log_samples`
    writes them. The model is built once, so a lifelong editor edits once for all its runs."""

    cell: Cell
    out: Path
    model: str
    device: str | None
    batch_size: int
    model_args: dict[str, Any]
    runs: list[Call]
    metadata: dict[str, Any]
    max_gen_toks: int | None = None
    fresh_model: bool = False  # an editor changes the weights: no shared model
    method: str = "unedited"  # for the sweep's compute per method

    @property
    def directory(self) -> Path:
        return self.cell.directory(self.out)

    def __call__(self) -> Outcome:
        directory = self.directory
        with claimed(directory):
            if self.cell.finished(self.out):
                return Outcome(self.cell.name, "skipped")
            for stale in [*directory.rglob("results_*.json"), directory / ERROR]:
                stale.unlink(missing_ok=True)  # an interrupted or failed attempt's files
            start = time.perf_counter()
            try:
                self._evaluate()
            except Exception as err:  # recorded; the sweep goes on with its other cells
                return record_failure(directory, self.cell.name, err)
            seconds = time.perf_counter() - start
            marker = {
                "fingerprint": self.cell.fingerprint,
                "spec": self.cell.spec,
                "seconds": round(seconds, 1),
                "method": self.method,
                "host": socket.gethostname(),
            }
            (directory / MARKER).write_text(json.dumps(marker, indent=1, default=str) + "\n")
        return Outcome(self.cell.name, "ran", seconds)

    def _evaluate(self) -> None:
        from ce_bench.evaluation import evaluate
        from ce_bench.models.edited_hf import EditedHFLM

        given = {k: v for k, v in self.model_args.items() if v is not None}
        if self.fresh_model:
            pretrained: dict[str, Any] = {"pretrained": self.model, "device": self.device}
            shared = None
        else:
            loaded = worker_model(self.model, self.device)
            pretrained = {"pretrained": loaded.model, "tokenizer": loaded.tokenizer}
            shared = loaded.unedited_answers
        lm = EditedHFLM(**pretrained, batch_size=self.batch_size, unedited_answers=shared, **given)
        gen = {"max_gen_toks": self.max_gen_toks} if self.max_gen_toks else None
        try:
            for tasks, limit in self.runs:
                if tasks:
                    evaluate(
                        lm,
                        tasks,
                        limit=limit,
                        metadata=self.metadata,
                        gen_kwargs=gen,
                        out_dir=self.directory,
                        verbosity="ERROR",  # the sweep shows its own progress
                    )
        finally:
            lm.close()


def digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
