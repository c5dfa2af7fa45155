"""`ce-bench sweep CONFIG.yaml`: a matrix of edits evaluated through lm-eval, then a leaderboard.

A config names a base model, the general-ability tasks every edit is checked on, and any of:

- `concept`: locate methods x layers x concepts (Unified Concept Editing). Each combination
  locates an artifact, then evaluates its concept task at every strength on the validation
  split and the best one (Unified Concept Editing A.8: best success rate among strengths whose
  outputs are mostly not degenerate) on the test split, with the general tasks: held-out
  selection, as `ce_bench.reports.concept` does.
- `lifelong`: editors x numbers of edits (MicroEdit), on their edit stream's task.
- `artifacts`: existing artifact directories x strengths on given tasks (erasure, privacy, ...).

Every lm-eval run is a "cell" with its own directory under `out/runs/` named by a hash of what it
evaluates; a cell counts as finished when its `cell.json` exists (written after lm-eval's
results). A restarted sweep skips finished cells, so a killed sweep loses only the cells it was
in. The cells run in this process, or as Ray tasks across a cluster (`ce_bench.board.executors`;
what a cell is and how it is claimed: `ce_bench.board.cells`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from ce_bench.board.cells import MARKER, Call, Cell, CellJob, LocateJob, Outcome, digest
from ce_bench.board.executors import Job, Resources, SerialExecutor, Then
from ce_bench.board.runs import load_runs
from ce_bench.console import step_progress
from ce_bench.runtime import EMBEDDED_NAME
from ce_bench.tables import Grid

CONCEPT_TASK = "concept_emotion_{concept}"


class SweepConfigError(ValueError):
    """A sweep config that cannot be run; says which key is wrong."""


@dataclass
class ConceptPart:
    methods: list[str]
    layers: list[int]
    concepts: list[str]
    strengths: list[float] | None = (
        None  # None: each method's grid (ce_bench.reports.concept.GRIDS)
    )
    locate_limit: int | None = None
    validation_limit: int | None = None
    test_limit: int | None = None
    max_gen_toks: int = 48
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> locate kwargs
    seeds: list[int] = field(default_factory=lambda: [0])  # data split (and SFT order) per run


@dataclass
class LifelongPart:
    editors: list[str]
    num_edits: list[int]
    edits: str = "zsre"
    task: str | None = None  # default: the built-in set's task (zsre_lifelong, ...)

    @property
    def task_name(self) -> str:
        from ce_bench.reports.lifelong import TABLES

        if self.task:
            return self.task
        if self.edits not in TABLES:
            raise SweepConfigError(
                f"lifelong: edits {self.edits!r} is a file; set lifelong.task"
                " (zsre_lifelong or selfcheckgpt_lifelong)"
            )
        return TABLES[self.edits][0]


@dataclass
class ArtifactPart:
    path: str
    tasks: list[str]
    strengths: list[float | None] = field(default_factory=lambda: [None])


@dataclass
class SweepConfig:
    model: str = EMBEDDED_NAME
    general_tasks: list[str] = field(default_factory=lambda: ["ce_general_mini"])
    limit: int | None = None  # documents per general-ability task (and artifact tasks)
    metadata: dict[str, Any] = field(default_factory=lambda: {"judge": "lexicon"})
    batch_size: int = 16
    device: str | None = None  # None: cuda where the worker has a GPU, else cpu
    resources: Resources = field(default_factory=Resources)  # per job, on Ray
    concept: ConceptPart | None = None
    lifelong: LifelongPart | None = None
    artifacts: list[ArtifactPart] = field(default_factory=list)
    out: Path = Path("results/sweep")

    @classmethod
    def from_yaml(cls, path: Path, out: Path | None = None) -> SweepConfig:
        """Read and check a config; unknown keys are errors, not silently ignored."""
        try:
            raw = _load_yaml_without_aliases(path) or {}
        except (OSError, yaml.YAMLError) as err:
            raise SweepConfigError(f"{path}: cannot read the sweep config ({err})") from err
        if not isinstance(raw, dict):
            raise SweepConfigError(f"{path}: expected a mapping of settings")
        parts = {
            "concept": _part(ConceptPart, raw.pop("concept", None), "concept"),
            "lifelong": _part(LifelongPart, raw.pop("lifelong", None), "lifelong"),
            "resources": _part(Resources, raw.pop("resources", None), "resources") or Resources(),
            "artifacts": [
                _part(ArtifactPart, a, f"artifacts[{i}]")
                for i, a in enumerate(raw.pop("artifacts", None) or [])
            ],
        }
        config = _part(cls, {**raw, **parts}, str(path))
        config.out = Path(out or raw.get("out") or config.out)
        if not (config.concept or config.lifelong or config.artifacts or config.general_tasks):
            raise SweepConfigError(f"{path}: nothing to run (no concept, lifelong or artifacts)")
        return config


def _load_yaml_without_aliases(path: Path) -> Any:
    """The YAML document at `path`, refusing aliases: a few nested aliases expand a tiny file
    into gigabytes (a 600-byte config once wrote a 184 MB results file), and a sweep config
    has no need for them."""
    text = path.read_text()
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise SweepConfigError(
                f"{path}, line {event.start_mark.line + 1}: YAML alias *{event.anchor} is not"
                " allowed in a sweep config (aliases can expand a small file without bound);"
                " write the values out"
            )
    return yaml.safe_load(text)


def _part(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SweepConfigError(f"{where}: expected a mapping")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SweepConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {sorted(known)}"
        )
    try:
        return cls(**raw)
    except TypeError as err:
        raise SweepConfigError(f"{where}: {err}") from err


class Sweep:
    """Runs a config's cells on an executor (this process by default, or Ray), skipping
    finished ones, with a progress display. A job that raises is recorded (`error.json`) and
    the others go on; `failed` names them at the end."""

    def __init__(
        self, config: SweepConfig, console: Console | None = None, executor: Any = None
    ) -> None:
        self.config = config
        self.console = console or Console()
        self.executor = executor or SerialExecutor()
        self.ran: list[Cell] = []  # cells evaluated by this process
        self.skipped: list[Cell] = []  # cells a previous run had finished
        self.failed: list[Outcome] = []  # jobs that raised (their error.json says why)
        self._seconds: list[float] = []  # time of each evaluated cell
        self._in_flight = 0  # jobs handed to the executor and not yet done

    # ------------------------------------------------------------------ planning
    def check(self) -> None:
        """Every name and path in the config, before anything runs (SweepConfigError lists
        each problem)."""
        from ce_bench.artifacts import ArtifactError, load_artifact
        from ce_bench.emotions import EMOTIONS
        from ce_bench.lifelong import load_stream
        from ce_bench.locate.emotion import LOCATORS
        from ce_bench.reports.lifelong import parse_editor

        c, problems = self.config, []
        tasks = list(c.general_tasks)
        if c.concept:
            problems += [f"concept: unknown method {m!r}; known: {', '.join(LOCATORS)}"
                         for m in c.concept.methods if m not in LOCATORS]  # fmt: skip
            problems += [f"concept: unknown concept {e!r}; known: {', '.join(EMOTIONS)}"
                         for e in c.concept.concepts if e not in EMOTIONS]  # fmt: skip
            seeds = c.concept.seeds
            if len(set(map(str, seeds))) != len(seeds) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds
            ):
                problems.append(f"concept: seeds must be distinct integers >= 0, got {seeds}")
        if c.lifelong:
            for spec in c.lifelong.editors:
                try:
                    parse_editor(spec)
                except ValueError as err:
                    problems.append(f"lifelong: {err}")
            try:
                load_stream(c.lifelong.edits, max(c.lifelong.num_edits))
                tasks.append(c.lifelong.task_name)
            except (ValueError, OSError) as err:
                problems.append(f"lifelong: {err}")
        for i, part in enumerate(c.artifacts):
            tasks += part.tasks
            try:
                load_artifact(part.path)
            except ArtifactError as err:
                problems.append(f"artifacts[{i}]: {err}")
        problems += [f"unknown task {t!r}" for t in _unknown_tasks(tasks)]
        if problems:
            raise SweepConfigError("; ".join(problems))

    def planned(self) -> int:
        """Cells known before locating (concept validation cells without a strength grid are
        counted once their artifact is located)."""
        c = self.config
        count = 1  # the unedited model
        if c.concept:
            part = c.concept
            combos = len(part.methods) * len(part.layers) * len(part.concepts) * len(part.seeds)
            count += combos * (1 + len(c.concept.strengths or []))
        if c.lifelong:
            count += len(c.lifelong.editors) * len(c.lifelong.num_edits)
        count += sum(len(a.strengths) for a in c.artifacts)
        return count

    def run(self, after_cell: Callable[[Cell], None] | None = None) -> dict[str, Path]:
        """Evaluate every unfinished cell, then write the leaderboard of all cells into
        `out/leaderboard/`; returns its files. `after_cell` is called after each evaluated cell
        (tests use it to stop a sweep midway)."""
        from ce_bench.board.leaderboard import build_board, version_notes, write_board

        self.after_cell = after_cell or (lambda cell: None)
        try:
            self.check()
            with step_progress(self.console) as progress:
                self.progress = progress
                self.bar = progress.add_task("sweep", total=self.planned(), detail="")
                jobs = [self._cell(self._unedited())]
                if self.config.concept:
                    jobs += self._concept(self.config.concept)
                if self.config.lifelong:
                    jobs += [self._cell(job) for job in self._lifelong(self.config.lifelong)]
                for part in self.config.artifacts:
                    jobs += [self._cell(job) for job in self._artifacts(part)]
                self.executor.run(self._queued(jobs))
        finally:
            self.executor.close()
        runs = load_runs([self.config.out / "runs"])
        notes = version_notes(runs)
        for note in notes:
            self.console.print(f"warning: {note}", style="yellow", markup=False)
        files = write_board(build_board(runs), self.config.out / "leaderboard", notes)
        files["compute"] = self.config.out / "compute.md"
        grid = compute_by_method(self.config.out)
        files["compute"].write_text(f"{COMPUTE_NOTE}\n\n{grid.markdown()}")
        return files

    # ------------------------------------------------------------------ the three parts
    def _job(self, cell: Cell, model_args: dict[str, Any], runs: list[Call], **kw: Any) -> CellJob:
        """The job of `cell`. As lm-eval's CLI does, tasks see the model_args in their metadata
        (erasure reads the artifact's class from `intervention`, lifelong tasks the stream)."""
        c = self.config
        split, seed = kw.pop("split", None), kw.pop("seed", 0)
        given = {k: v for k, v in model_args.items() if v is not None}
        meta = {**given, **c.metadata, **({"split": split} if split else {})}
        if seed:
            meta["seed"] = seed  # the concept task's data split
        return CellJob(cell, c.out, c.model, c.device, c.batch_size, model_args, runs, meta, **kw)

    def _unedited(self) -> CellJob:
        c = self.config
        cell = Cell("unedited", {"model": c.model, "tasks": c.general_tasks, "limit": c.limit})
        return self._job(cell, {}, [(c.general_tasks, c.limit)])

    def _concept(self, part: ConceptPart) -> list[tuple[Job, Then]]:
        """Per method x layer x concept x seed, a locate job whose artifact starts its chain
        (`_Combo`)."""
        c, jobs = self.config, []
        for method, layer, concept, seed in product(
            part.methods, part.layers, part.concepts, part.seeds
        ):
            options = part.options.get(method, {})
            locate = {"limit": part.locate_limit, "options": options}
            # seed 0 is what every cell used before seeds existed: its cells keep their hashes
            seeded = {"seed": seed} if seed else {}
            base = {"model": c.model, "method": method, "layer": layer, "concept": concept,
                    "locate": locate, **seeded}  # fmt: skip
            name = f"{method}-L{layer}-{concept}" + (f"-s{seed}" if seed else "")
            where = c.out / "artifacts" / f"{name}-{digest(base)}"
            job = LocateJob(f"locate {name}", c.model, c.device, method, layer, concept, seed,
                            part.locate_limit, options, where)  # fmt: skip
            jobs.append((job, _Combo(self, part, name, base, where).located))
        return jobs

    def _lifelong(self, part: LifelongPart) -> list[CellJob]:
        from ce_bench.reports.lifelong import parse_editor

        c, jobs = self.config, []
        for spec in part.editors:
            name, params = parse_editor(spec)
            for num_edits in part.num_edits:
                cell = Cell(
                    f"{spec.replace(':', '-').replace('=', '')}-T{num_edits}",
                    {"model": c.model, "editor": spec, "edits": part.edits, "num_edits": num_edits,
                     "general": c.general_tasks, "limit": c.limit},
                )  # fmt: skip
                model_args = {"editor": name, "edits": part.edits, "num_edits": num_edits, **params}
                runs = [([part.task_name], None), (c.general_tasks, c.limit)]
                # The editor changes the weights it edits: each cell loads its own model.
                jobs.append(self._job(cell, model_args, runs, fresh_model=True, method=spec))
        return jobs

    def _artifacts(self, part: ArtifactPart) -> list[CellJob]:
        from ce_bench.artifacts import fingerprint, load_artifact
        from ce_bench.run_config import method_of

        c, jobs = self.config, []
        artifact = load_artifact(part.path)
        contents = fingerprint([artifact], {})  # a changed artifact is rerun
        method = method_of(vars(artifact.provenance))[0] or artifact.kind
        for strength in part.strengths:
            label = Path(part.path).name + ("" if strength is None else f"-x{strength:g}")
            cell = Cell(
                label,
                {"model": c.model, "artifact": contents, "strength": strength,
                 "tasks": part.tasks, "general": c.general_tasks, "limit": c.limit},
            )  # fmt: skip
            model_args = {"intervention": part.path, "strength": strength}
            runs = [([*part.tasks, *c.general_tasks], c.limit)]
            jobs.append(self._job(cell, model_args, runs, method=method))
        return jobs

    # ------------------------------------------------------------------ bookkeeping
    def _cell(self, job: CellJob, then: Then | None = None) -> tuple[Job, Then]:
        """`job` with its cell's bookkeeping; `then(outcome)` gives the jobs it makes ready."""

        def done(outcome: Outcome) -> list[tuple[Job, Then]]:
            self.progress.advance(self.bar)
            if outcome.status == "skipped":
                self.skipped.append(job.cell)
            elif outcome.status == "ran":
                self.ran.append(job.cell)
                self._seconds.append(outcome.seconds)
                self.after_cell(job.cell)
            return then(outcome) if then else []

        return job, done

    def not_run(self, cells: int) -> None:
        """Count `cells` planned cells as done: an earlier job of theirs failed or found
        nothing."""
        self.progress.advance(self.bar, cells)

    def _queued(self, jobs: list[tuple[Job, Then]]) -> list[tuple[Job, Then]]:
        """The jobs to hand to the executor, counted while in flight. A finished cell never
        reaches it: its follow-ups are queued at once."""
        out: list[tuple[Job, Then]] = []
        for job, then in jobs:
            if isinstance(job, CellJob) and job.cell.finished(self.config.out):
                out += self._queued(then(Outcome(job.cell.name, "skipped")))
            else:
                out.append((job, self._counted(then)))
                self._in_flight += 1
        self._show()
        return out

    def _counted(self, then: Then) -> Then:
        def done(outcome: Outcome) -> list[tuple[Job, Then]]:
            self._in_flight -= 1
            if outcome.failed:
                self.failed.append(outcome)
                self.console.print(f"failed: {outcome.name}: {outcome.error}", markup=False)
            return self._queued(then(outcome))

        return done

    def _show(self) -> None:
        parts = [f"{min(self._in_flight, self.executor.parallel)} running"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self._seconds:
            parts.append(f"{sum(self._seconds) / len(self._seconds):.0f} s per cell")
        self.progress.update(self.bar, detail=", ".join(parts))


class _Combo:
    """One concept combination's chain: its artifact, then a validation cell per strength,
    then the test cell at the strength chosen on validation (Unified Concept Editing A.8:
    the best success rate among strengths whose outputs are mostly not degenerate)."""

    def __init__(
        self, sweep: Sweep, part: ConceptPart, name: str, base: dict[str, Any], where: Path
    ) -> None:
        self.sweep, self.part, self.name, self.where = sweep, part, name, where
        config = sweep.config
        self.judged = {**base, "metadata": config.metadata, "max_gen_toks": part.max_gen_toks}
        self.task = CONCEPT_TASK.format(concept=base["concept"])
        self.seed = base.get("seed", 0)
        self.validation: list[tuple[float, Cell]] = []
        self.waiting = 0

    def located(self, outcome: Outcome) -> list[tuple[Job, Then]]:
        sweep, part = self.sweep, self.part
        if outcome.grid is None:  # failed, or its method found nothing to edit
            if outcome.status == "not located":
                sweep.console.print(f"{self.name}: not located ({outcome.error})", markup=False)
            sweep.not_run(1 + len(part.strengths or []))
            return []
        grid = part.strengths or outcome.grid
        if not part.strengths:
            sweep.progress.update(sweep.bar, total=sweep.progress.tasks[0].total + len(grid))
        jobs = []
        for strength in grid:
            cell = Cell(
                f"{self.name}-x{strength:g}-validation",
                {**self.judged, "strength": strength, "split": "validation",
                 "limit": part.validation_limit},
            )  # fmt: skip
            self.validation.append((strength, cell))
            jobs.append(self._evaluation(cell, strength, [([self.task], part.validation_limit)]))
        self.waiting = len(jobs)
        return [self.sweep._cell(job, self.validated) for job in jobs]

    def validated(self, outcome: Outcome) -> list[tuple[Job, Then]]:
        from ce_bench.reports.concept import MAX_DEGENERATE, choose_strength

        self.waiting -= 1
        out = self.sweep.config.out
        if self.waiting:
            return []
        if not all(cell.finished(out) for _, cell in self.validation):
            self.sweep.not_run(1)  # the test cell: a validation cell failed
            return []
        results = [
            {"strength": strength, "success_rate": math.nan, "degenerate_rate": 1.0,
             **_metrics(cell.directory(out), self.task)}
            for strength, cell in self.validation
        ]  # fmt: skip
        chosen = choose_strength(results, MAX_DEGENERATE)
        c, part = self.sweep.config, self.part
        cell = Cell(
            f"{self.name}-test",
            {**self.judged, "strength": chosen, "split": "test", "limit": part.test_limit,
             "general": c.general_tasks, "general_limit": c.limit},
        )  # fmt: skip
        runs = [([self.task], part.test_limit), (c.general_tasks, c.limit)]
        return [self.sweep._cell(self._evaluation(cell, chosen, runs))]

    def _evaluation(self, cell: Cell, strength: float, runs: list[Call]) -> CellJob:
        split = cell.spec["split"]
        return self.sweep._job(
            cell,
            {"intervention": str(self.where), "strength": strength},
            runs,
            split=split,
            max_gen_toks=self.part.max_gen_toks,
            seed=self.seed,
            method=self.judged["method"],
        )


COMPUTE_NOTE = (
    "Compute per method over every finished cell of the sweep (earlier runs' included):"
    " seconds evaluating (loading, editing, answering; from each cell.json) and locating"
    " (from each artifact's provenance), on whichever worker ran them."
)


def compute_by_method(out: Path) -> Grid:
    """The sweep's seconds per method: its cells' and its artifacts' (see COMPUTE_NOTE)."""
    from ce_bench.artifacts import ArtifactError, load_artifact
    from ce_bench.run_config import method_of

    cells: dict[str, list[float]] = {}
    for marker in sorted((out / "runs").glob(f"*/{MARKER}")):
        record = json.loads(marker.read_text())
        spec = record.get("spec") or {}
        method = record.get("method") or spec.get("method") or spec.get("editor") or "unedited"
        cells.setdefault(method, []).append(float(record.get("seconds") or 0.0))
    located: dict[str, float] = {}
    for manifest in sorted((out / "artifacts").glob("*/intervention.json")):
        try:
            provenance = load_artifact(manifest.parent).provenance
        except ArtifactError:
            continue
        method = method_of(vars(provenance))[0]
        located[method] = located.get(method, 0.0) + (provenance.seconds or 0.0)
    rows = []
    for method in sorted(set(cells) | set(located)):
        evaluating, locating = sum(cells.get(method, [])), located.get(method, 0.0)
        rows.append([method, str(len(cells.get(method, []))), f"{evaluating:,.1f}",
                     f"{locating:,.1f}", f"{evaluating + locating:,.1f}"])  # fmt: skip
    headings = ["method", "cells", "evaluate s", "locate s", "total s"]
    return Grid("Compute per method", headings, rows)


def _unknown_tasks(tasks: list[str]) -> list[str]:
    """Tasks neither ce-bench nor lm-eval knows (lm-eval's index is read only when needed)."""
    from lm_eval.tasks import TaskManager

    from ce_bench.evaluation import ce_bench_tasks

    missing = set(tasks) - ce_bench_tasks()
    if missing:
        missing -= set(TaskManager().all_tasks)
    return sorted(missing)


def _metrics(directory: Path, task: str) -> dict[str, float]:
    """A finished cell's metrics of one task, read back from its results file."""
    for run in load_runs([directory]):
        if task in run.scores:
            return {m: s.value for m, s in run.scores[task].items()}
    raise FileNotFoundError(f"{directory}: no results for {task}")
