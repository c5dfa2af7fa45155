"""Where a sweep's jobs run: one after the other in this process (`SerialExecutor`, the
default), or as Ray tasks across a cluster (`RayExecutor`, `ce-bench sweep --executor ray`).

Both take jobs with what to do once each is done: `then(outcome)` returns the jobs it made
ready (a located artifact makes its validation cells ready, the last validation cell its test
cell). Ray starts a ready job as soon as its resources are free, so no cell waits for an
unrelated one.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ce_bench.board.cells import Outcome, record_failure


class Job(Protocol):
    name: str

    @property
    def directory(self) -> Any: ...

    def __call__(self) -> Outcome: ...


Then = Callable[[Outcome], list[tuple[Job, "Then"]]]


@dataclass
class Resources:
    """What one job holds while it runs on a Ray worker (`resources:` in a sweep config)."""

    num_cpus: float = 1
    num_gpus: float = 0
    memory_gb: float | None = None  # None: not reserved

    def ray_options(self) -> dict[str, Any]:
        memory = {"memory": int(self.memory_gb * 2**30)} if self.memory_gb else {}
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, **memory}


class ExecutorError(RuntimeError):
    """An executor that cannot start (Ray missing, unreachable, or too small for a job)."""


class SerialExecutor:
    """Every job in this process, depth first: a concept's cells right after its artifact."""

    parallel = 1

    def run(self, jobs: list[tuple[Job, Then]]) -> None:
        queue = deque(jobs)
        while queue:
            job, then = queue.popleft()
            queue.extendleft(reversed(then(job())))

    def close(self) -> None:
        pass


class RayExecutor:
    """Every job as a Ray task holding `resources`, on the cluster at `address` (None: the one
    `RAY_ADDRESS` names, else a local instance started here). A task is not retried: a job
    whose worker died is recorded as failed, and a restarted sweep runs it again."""

    def __init__(self, resources: Resources, address: str | None = None) -> None:
        try:
            import ray
        except ImportError as err:
            raise ExecutorError("the Ray executor needs ray: pip install 'ce-bench[ray]'") from err
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            try:
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=False,  # workers' lm-eval output stays in Ray's log files
                    logging_level="ERROR",
                )
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ExecutorError(f"cannot reach the Ray cluster at {address}: {err}") from err
        cluster = ray.cluster_resources()
        for key, wanted in [("CPU", resources.num_cpus), ("GPU", resources.num_gpus)]:
            if wanted > cluster.get(key, 0):
                self.close()
                raise ExecutorError(
                    f"each cell asks for {wanted:g} {key}, but the cluster has"
                    f" {cluster.get(key, 0):g} in all: no cell could ever start"
                    " (set resources: in the sweep config)"
                )
        fits = [cluster["CPU"] / resources.num_cpus if resources.num_cpus else 1.0]
        if resources.num_gpus:
            fits.append(cluster["GPU"] / resources.num_gpus)
        self.parallel = max(1, int(min(fits)))
        self._task = ray.remote(_run).options(**resources.ray_options(), max_retries=0)

    def run(self, jobs: list[tuple[Job, Then]]) -> None:
        ray = self._ray
        pending: dict[Any, tuple[Job, Then]] = {}

        def submit(job: Job, then: Then) -> None:
            pending[self._task.remote(job)] = (job, then)

        for job, then in jobs:
            submit(job, then)
        try:
            while pending:
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                job, then = pending.pop(ready)
                try:
                    outcome = ray.get(ready)
                except ray.exceptions.RayError as err:
                    outcome = record_failure(job.directory, job.name, f"worker lost: {err}")
                for follow in then(outcome):
                    submit(*follow)
        finally:  # interrupted: stop the running cells (unfinished, as in a killed run)
            for ref in pending:
                ray.cancel(ref)  # KeyboardInterrupt in the task: its claim is released

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


def _run(job: Job) -> Outcome:
    # lm-eval bootstraps stderrs in a forked multiprocessing pool; a forked Ray worker (its
    # gRPC threads included) deadlocks, so it bootstraps in process (the same draws).
    os.environ["DISABLE_MULTIPROC"] = "1"
    return job()
