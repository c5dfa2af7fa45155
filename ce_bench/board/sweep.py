"""`ce-bench sweep CONFIG.yaml`: a matrix of edits evaluated through lm-eval, then a leaderboard.

A config names a base model, the general-ability tasks every edit is checked on, and any of:

- `concept`: locate methods x layers x concepts (Unified Concept Editing). Each cell locates an
artifact, then
  evaluates its concept task at every strength on the validation split and the best one (Unified
  Concept Editing A.8: best success rate among strengths whose outputs are mostly not degenerate) on
  the test split, with the general tasks: held-out selection, as `ce_bench.reports.concept` does.
- `lifelong`: editors x numbers of edits (MicroEdit), on their edit stream's task.
- `artifacts`: existing artifact directories x strengths on given tasks (erasure, privacy, ...).

Every lm-eval run is a "cell" with its own directory under `out/runs/` named by a hash of what it
evaluates; a cell counts as finished when its `cell.json` exists (written after lm-eval's
results). A restarted sweep skips finished cells, so a killed sweep loses only the cell it was in.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from ce_bench.board.runs import load_runs
from ce_bench.console import step_progress
from ce_bench.runtime import EMBEDDED_NAME

MARKER = "cell.json"
CONCEPT_TASK = "concept_emotion_{concept}"
Call = tuple[list[str], int | None]  # one lm-eval call of a cell: tasks and their --limit


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


@dataclass(frozen=True)
class Cell:
    """One lm-eval evaluation: what model, which edit, which tasks on which data."""

    name: str  # readable part of the directory name
    spec: dict[str, Any]  # everything that decides its results (hashed for the directory)

    @property
    def fingerprint(self) -> str:
        return _digest(self.spec)

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


class Sweep:
    """Runs a config's cells in order, skipping finished ones, with a progress display."""

    def __init__(self, config: SweepConfig, console: Console | None = None) -> None:
        self.config = config
        self.console = console or Console()
        self.ran: list[Cell] = []  # cells evaluated by this process
        self.skipped: list[Cell] = []  # cells a previous run had finished
        self._loaded: tuple[Any, Any] | None = None
        self._unedited_answers: dict[str, Any] = {}  # see EditedHFLM(unedited_answers=)
        self._residuals: dict[Any, Any] = {}  # see EmotionJob.residuals
        self._seconds: list[float] = []  # time of each evaluated cell

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

        self.check()
        self.after_cell = after_cell or (lambda cell: None)
        with step_progress(self.console) as progress:
            self.progress = progress
            self.bar = progress.add_task("sweep", total=self.planned(), detail="")
            self._unedited()
            if self.config.concept:
                self._concept(self.config.concept)
            if self.config.lifelong:
                self._lifelong(self.config.lifelong)
            for part in self.config.artifacts:
                self._artifacts(part)
        runs = load_runs([self.config.out / "runs"])
        notes = version_notes(runs)
        for note in notes:
            self.console.print(f"warning: {note}", style="yellow", markup=False)
        return write_board(build_board(runs), self.config.out / "leaderboard", notes)

    # ------------------------------------------------------------------ the three parts
    def _unedited(self) -> None:
        c = self.config
        cell = Cell("unedited", {"model": c.model, "tasks": c.general_tasks, "limit": c.limit})
        self._cell(cell, {}, [(c.general_tasks, c.limit)])

    def _concept(self, part: ConceptPart) -> None:
        combos = product(part.methods, part.layers, part.concepts, part.seeds)
        for method, layer, concept, seed in combos:
            self._concept_combo(part, method, layer, concept, seed)

    def _concept_combo(
        self, part: ConceptPart, method: str, layer: int, concept: str, seed: int
    ) -> None:
        """Locate; every strength on the validation split; the chosen one on the test split;
        all on the data split of `seed`."""
        from ce_bench.reports.concept import MAX_DEGENERATE, choose_strength, strength_grid

        c = self.config
        locate = {"limit": part.locate_limit, "options": part.options.get(method, {})}
        # seed 0 is what every cell used before seeds existed: its cells keep their fingerprints
        seeded = {"seed": seed} if seed else {}
        base = {"model": c.model, "method": method, "layer": layer, "concept": concept,
                "locate": locate, **seeded}  # fmt: skip
        name = f"{method}-L{layer}-{concept}" + (f"-s{seed}" if seed else "")
        where = c.out / "artifacts" / f"{name}-{_digest(base)}"
        artifact = self._locate(method, layer, concept, part, where, seed)
        if artifact is None:
            return
        grid = part.strengths or strength_grid(artifact)
        if not part.strengths:
            self.progress.update(self.bar, total=self.progress.tasks[0].total + len(grid))
        task = CONCEPT_TASK.format(concept=concept)
        judged = {**base, "metadata": c.metadata, "max_gen_toks": part.max_gen_toks}
        validation = []
        for strength in grid:
            cell = Cell(
                f"{name}-x{strength:g}-validation",
                {**judged, "strength": strength, "split": "validation",
                 "limit": part.validation_limit},
            )  # fmt: skip
            self._cell(
                cell,
                {"intervention": str(where), "strength": strength},
                [([task], part.validation_limit)],
                split="validation",
                max_gen_toks=part.max_gen_toks,
                seed=seed,
            )
            metrics = _metrics(cell.directory(c.out), task)
            validation.append(
                {"strength": strength, "success_rate": math.nan, "degenerate_rate": 1.0, **metrics}
            )
        chosen = choose_strength(validation, MAX_DEGENERATE)
        cell = Cell(
            f"{name}-test",
            {**judged, "strength": chosen, "split": "test", "limit": part.test_limit,
             "general": c.general_tasks, "general_limit": c.limit},
        )  # fmt: skip
        self._cell(
            cell,
            {"intervention": str(where), "strength": chosen},
            [([task], part.test_limit), (c.general_tasks, c.limit)],
            split="test",
            max_gen_toks=part.max_gen_toks,
            seed=seed,
        )

    def _locate(
        self, method: str, layer: int, concept: str, part: ConceptPart, where: Path, seed: int
    ) -> Any:
        """The cell's artifact: read back when a previous run saved it, else located now."""
        from ce_bench.artifacts import ArtifactError, load_artifact
        from ce_bench.interventions.base import save_intervention
        from ce_bench.locate.emotion import EmotionData, EmotionJob, locate_emotion
        from ce_bench.locate.sae_features import FeatureNotFound

        try:
            return load_artifact(where)
        except ArtifactError:
            pass
        model, tokenizer = self._model()
        data = EmotionData.load(seed=seed)
        job = EmotionJob(model, tokenizer, self.config.model, data, concept, layer)
        job.limit, job.residuals = part.locate_limit, self._residuals
        job.options = dict(part.options.get(method, {}))
        if method == "sae-features":
            from ce_bench.reports.concept import own_sae

            job.sae = own_sae(self.config.model, layer)
        try:
            artifact = locate_emotion(method, job)
        except FeatureNotFound as err:
            self.console.print(f"{method} L{layer} {concept}: not located ({err})", markup=False)
            self.progress.advance(self.bar, 1 + len(part.strengths or []))
            return None
        save_intervention(artifact, where)
        return artifact

    def _lifelong(self, part: LifelongPart) -> None:
        from ce_bench.reports.lifelong import parse_editor

        c = self.config
        task = part.task_name
        for spec in part.editors:
            name, params = parse_editor(spec)
            for num_edits in part.num_edits:
                cell = Cell(
                    f"{spec.replace(':', '-').replace('=', '')}-T{num_edits}",
                    {"model": c.model, "editor": spec, "edits": part.edits, "num_edits": num_edits,
                     "general": c.general_tasks, "limit": c.limit},
                )  # fmt: skip
                # The editor changes the weights it edits: each cell loads its own model.
                self._cell(
                    cell,
                    {"editor": name, "edits": part.edits, "num_edits": num_edits, **params},
                    [([task], None), (c.general_tasks, c.limit)],
                    fresh_model=True,
                )

    def _artifacts(self, part: ArtifactPart) -> None:
        from ce_bench.artifacts import fingerprint, load_artifact

        c = self.config
        contents = fingerprint([load_artifact(part.path)], {})  # a changed artifact is rerun
        for strength in part.strengths:
            label = Path(part.path).name + ("" if strength is None else f"-x{strength:g}")
            cell = Cell(
                label,
                {"model": c.model, "artifact": contents, "strength": strength,
                 "tasks": part.tasks, "general": c.general_tasks, "limit": c.limit},
            )  # fmt: skip
            self._cell(
                cell,
                {"intervention": part.path, "strength": strength},
                [([*part.tasks, *c.general_tasks], c.limit)],
            )

    # ------------------------------------------------------------------ one cell
    def _cell(
        self, cell: Cell, model_args: dict[str, Any], runs: list[Call], **options: Any
    ) -> None:
        """Evaluate a cell unless it is finished; options go to `_evaluate`."""
        out = self.config.out
        if cell.finished(out):
            self.skipped.append(cell)
            self.progress.advance(self.bar)
            return
        directory = cell.directory(out)
        for stale in directory.rglob("results_*.json"):  # an interrupted attempt's partial files
            stale.unlink()
        directory.mkdir(parents=True, exist_ok=True)
        self.progress.update(self.bar, description=cell.name)
        start = time.perf_counter()
        self._evaluate(directory, model_args, runs, **options)
        seconds = time.perf_counter() - start
        marker = {"fingerprint": cell.fingerprint, "spec": cell.spec, "seconds": round(seconds, 1)}
        (directory / MARKER).write_text(json.dumps(marker, indent=1, default=str) + "\n")
        self.ran.append(cell)
        self._seconds.append(seconds)
        mean = sum(self._seconds) / len(self._seconds)
        self.progress.update(self.bar, advance=1, detail=f"{mean:.0f} s per cell")
        self.after_cell(cell)

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from ce_bench.embedded import load_model

            self._loaded = load_model(self.config.model, "cpu")
        return self._loaded

    def _evaluate(
        self,
        directory: Path,
        model_args: dict[str, Any],
        runs: list[Call],
        split: str | None = None,
        max_gen_toks: int | None = None,
        fresh_model: bool = False,
        seed: int = 0,
    ) -> None:
        """lm-eval runs of one edited model, (tasks, limit) each, written into `directory` as
        `lm_eval --output_path DIR --log_samples` writes them. The model is built once, so a
        lifelong editor edits once for all its runs."""
        from ce_bench.evaluation import evaluate
        from ce_bench.models.edited_hf import EditedHFLM

        # As lm-eval's CLI does, tasks see the model_args in their metadata (erasure reads the
        # artifact's class from `intervention`, lifelong tasks the edit stream).
        given = {k: v for k, v in model_args.items() if v is not None}
        meta = {**given, **self.config.metadata, **({"split": split} if split else {})}
        if seed:
            meta["seed"] = seed  # the concept task's data split
        if fresh_model:
            pretrained: dict[str, Any] = {"pretrained": self.config.model}
        else:
            model, tokenizer = self._model()
            pretrained = {"pretrained": model, "tokenizer": tokenizer}
        lm = EditedHFLM(
            **pretrained,
            batch_size=self.config.batch_size,
            unedited_answers=self._unedited_answers,
            **given,
        )
        try:
            for tasks, limit in runs:
                if tasks:
                    gen = {"max_gen_toks": max_gen_toks} if max_gen_toks else None
                    evaluate(
                        lm,
                        tasks,
                        limit=limit,
                        metadata=meta,
                        gen_kwargs=gen,
                        out_dir=directory,
                        verbosity="ERROR",  # the sweep shows its own progress
                    )
        finally:
            lm.close()


def _unknown_tasks(tasks: list[str]) -> list[str]:
    """Tasks neither ce-bench nor lm-eval knows (lm-eval's index is read only when needed)."""
    from lm_eval.tasks import TaskManager

    from ce_bench.evaluation import ce_bench_tasks

    missing = set(tasks) - ce_bench_tasks()
    if missing:
        missing -= set(TaskManager().all_tasks)
    return sorted(missing)


def _digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _metrics(directory: Path, task: str) -> dict[str, float]:
    """A finished cell's metrics of one task, read back from its results file."""
    for run in load_runs([directory]):
        if task in run.scores:
            return {m: s.value for m, s in run.scores[task].items()}
    raise FileNotFoundError(f"{directory}: no results for {task}")
