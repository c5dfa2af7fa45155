"""What one lm-eval results file says about a run: which edit of which model, and its scores.

`edited_hf` writes its intervention fingerprint into the results' `config.ce_bench` (see
`EditedHFLM.get_model_info`); plain `hf` runs have none and count as the unedited model. The
leaderboard, the regression gate and the sweep read results only through `load_runs`.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ce_bench.pairing import BASE_SUFFIX
from ce_bench.run_config import RunConfig
from ce_bench.runtime import EMBEDDED_NAME, ce_bench_home, task_dir

UNEDITED = "unedited"
RESULTS_GLOB = "results_*.json"
# Entries of a task's results that are not metrics.
_NOT_METRICS = {"alias", "name", "sample_len", "samples"}
GENERAL = "General ability"  # every task whose YAML declares no other family (lm-eval's own too)


@functools.cache
def families() -> tuple[str, ...]:
    """The leaderboard's sections in order: the families ce-bench's task YAMLs declare
    (`metadata.family`), in the order of their folders, general ability last."""
    named = dict.fromkeys(d["family"] for d in declared_tasks().values())
    return (*(f for f in named if f != GENERAL), GENERAL)


@functools.cache
def declared_tasks() -> dict[str, dict[str, str]]:
    """Task or group name -> the `family` and `headline` metric its YAML declares under
    `metadata` (ce-bench's tasks declare them once there, not by name here)."""
    found = {}
    for path in sorted(task_dir().rglob("*.yaml")):
        config = yaml.load(path.read_text(), Loader=_TagBlindLoader)  # noqa: S506 (safe loader)
        name = config.get("task") if isinstance(config.get("task"), str) else config.get("group")
        metadata = config.get("metadata") or {}
        if isinstance(name, str) and "family" in metadata:
            found[name] = {"family": metadata["family"], "headline": metadata.get("headline")}
    return found


class _TagBlindLoader(yaml.SafeLoader):
    """A safe YAML loader that reads lm-eval's `!function` tags as None (never imports code)."""


_TagBlindLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


class BoardError(ValueError):
    """A results file or directory that cannot be read as lm-eval results."""


@dataclass(frozen=True)
class Score:
    """One metric of one task. `base` is the unedited model's value measured in the same run
    (paired tasks report it as `<metric>_base`); None when the run did not measure it."""

    value: float
    stderr: float | None = None
    higher_is_better: bool | None = None
    base: float | None = None
    base_stderr: float | None = None


@dataclass
class Run:
    """One lm-eval results file, described by what was edited and how."""

    path: Path
    base_model: str
    method: str  # UNEDITED, a locate method ("steering", "ranges") or a lifelong editor ("grace")
    layer: str  # "27", "20+27", "" when the method has none
    target: str  # the concept, class or edit set the method targets
    strength: str  # the intervention strength, or T for a lifelong editor
    settings: str  # the remaining parameters, "k=v" joined by spaces
    artifact: str  # the artifact directories' names ("anger", "fact_neurons_60"), "+"-joined
    seed: str  # the seed the artifact was located with (its data split), "" when none
    fingerprint: str
    split: str  # the concept tasks' data split ("test", "validation"), "" when none
    scores: dict[str, dict[str, Score]]  # task -> metric -> score
    samples: dict[str, int] = field(default_factory=dict)  # task -> documents evaluated
    groups: dict[str, list[str]] = field(default_factory=dict)  # group task -> its subtasks
    versions: dict[str, str] = field(default_factory=dict)  # package -> version that ran it
    cost: dict[str, Any] = field(default_factory=dict)  # what the run cost (models/cost.py)

    @property
    def edited(self) -> bool:
        return self.method != UNEDITED

    @property
    def key(self) -> tuple[str, str, str, str, str, str]:
        """Grouping and sort order: base model, method, layer, target, settings, strength."""
        return (
            self.base_model,
            self.method,
            self.layer,
            self.target,
            self.settings,
            _sortable(self.strength),
        )

    @property
    def label(self) -> str:
        """A short name for tables and plot legends."""
        if not self.edited:
            return UNEDITED
        parts = [self.method, f"L{self.layer}" if self.layer else "", self.target]
        parts.append(f"x{self.strength}" if self.strength else "")
        parts.append(f"seed {self.seed}" if self.seed not in ("", "0") else "")
        parts.append(f"[{self.artifact}]" if self.artifact not in ("", self.target) else "")
        return " ".join(p for p in parts if p)


def load_runs(paths: list[Path]) -> list[Run]:
    """Every results file named or found (recursively, `results_*.json`) under the paths."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.rglob(RESULTS_GLOB))
            if not found:
                raise BoardError(f"{path}: no lm-eval results file ({RESULTS_GLOB}) in it")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise BoardError(f"{path}: no such file or directory")
    return [read_run(f) for f in dict.fromkeys(files)]


def read_run(path: Path) -> Run:
    """One results file as a Run; BoardError names the file when it is not lm-eval results."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BoardError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise BoardError(f"{path}: not an lm-eval results file (no 'results' table)")
    config = data.get("config") or {}
    edited = RunConfig.from_json(config.get("ce_bench") or {})
    described = _describe_edit(edited)
    if not config.get("ce_bench") and config.get("model") == "steered":  # lm-eval's steering
        described |= {
            "method": "steered",
            "settings": _without_pretrained(config.get("model_args")),
        }
    return Run(
        path=path,
        base_model=model_name(edited.base_model or _pretrained(config.get("model_args"))),
        fingerprint=edited.fingerprint,
        split=_split(data.get("configs") or {}),
        scores={
            task: _scores(metrics, (data.get("higher_is_better") or {}).get(task) or {})
            for task, metrics in data["results"].items()
        },
        samples={
            task: int(n.get("effective", n.get("original", 0)))
            for task, n in (data.get("n-samples") or {}).items()
        },
        groups={g: list(s) for g, s in (data.get("group_subtasks") or {}).items() if s},
        versions=_versions(data, edited),
        cost=dict((config.get("ce_bench") or {}).get("cost") or {}),
        **described,
    )


def family(task: str) -> str:
    """The leaderboard section of a task; GENERAL for the side-effect tasks the gate checks."""
    return declared_tasks().get(task, {}).get("family", GENERAL)


def checkpoint_of(metric: str) -> tuple[str, int] | None:
    """('rel', 10) for a lifelong task's `rel@10` (Rel after 10 edits, `eval_at=1+10+...`)."""
    name, at, count = metric.partition("@")
    return (name, int(count)) if at and count.isdigit() else None


def headline(task: str, metrics: list[str]) -> str:
    """The metric a task is ranked by: the one its YAML declares, else the first reported."""
    declared = declared_tasks().get(task, {}).get("headline")
    return declared if declared in metrics else metrics[0]


def model_name(pretrained: str) -> str:
    """The base model's name as runs are compared by: a model cached by ce-bench (the embedded
    one, the injected-facts one) is named by its folder, others by their id or path."""
    if not pretrained:
        return EMBEDDED_NAME
    cached = (ce_bench_home() / "models").resolve()
    try:
        path = Path(pretrained).expanduser().resolve()
    except (OSError, RuntimeError):
        return pretrained
    return path.name if path.parent == cached else pretrained


def _describe_edit(config: RunConfig) -> dict[str, str]:
    """method / layer / target / strength / settings of what an edited_hf run edited."""
    lifelong = config.lifelong
    if lifelong:
        params = lifelong.get("params") or {}
        return {
            "method": str(lifelong.get("editor", "")),
            "layer": _text(params.get("layer")),
            "target": str(lifelong.get("edits", "")),
            "strength": _text(lifelong.get("num_edits")),
            "settings": f"eval_at={lifelong.get('eval_at', 'end')}",
            "artifact": "",
            "seed": "",
        }
    edits = config.interventions
    if not edits:
        empty = ("layer", "target", "strength", "settings", "artifact", "seed")
        return dict.fromkeys(empty, "") | {"method": UNEDITED}
    params = [{"variant": e.variant, **e.params} for e in edits]
    strengths = [_text(p.pop("strength", None)) for p in params]
    return {
        "method": "+".join(e.method for e in edits),
        "layer": "+".join(_text(e.layer) for e in edits),
        "target": "+".join(_text(e.report.get("emotion") or e.report.get("target")) for e in edits),
        "strength": "+".join(strengths) if any(strengths) else "",
        "settings": " ".join(
            f"{k}={_text(v)}" for p in params for k, v in sorted(p.items()) if _text(v) != ""
        ),
        "artifact": "+".join(Path(e.artifact or "").name for e in edits),
        "seed": "+".join(
            _text(e.report.get("split_seed", e.report.get("seed"))) for e in edits
        ).strip("+"),
    }


def _versions(data: dict[str, Any], config: RunConfig) -> dict[str, str]:
    """The stack versions a run recorded: edited_hf writes them all (`config.ce_bench.versions`);
    for other models, what lm-eval itself records (transformers, lm-eval, torch in its env)."""
    if config.versions:
        return config.versions
    found = {
        name: str(data[key])
        for name, key in (("transformers", "transformers_version"), ("lm_eval", "lm_eval_version"))
        if data.get(key) not in (None, "", "N/A")
    }
    torch = re.search(r"^PyTorch version: (\S+)", str(data.get("pretty_env_info") or ""), re.M)
    if torch:
        found["torch"] = torch.group(1)
    return found


def _scores(metrics: dict[str, Any], higher: dict[str, Any]) -> dict[str, Score]:
    """A task's numeric metrics, `<m>_base` folded into m's Score and `<m>_delta` dropped."""
    values: dict[str, float] = {}
    stderrs: dict[str, float] = {}
    for key, value in metrics.items():
        name, _, filt = key.partition(",")
        if name in _NOT_METRICS or not _is_number(value):
            continue
        metric = name if filt in ("", "none") else f"{name},{filt}"
        if name.endswith("_stderr"):
            stderrs[metric.replace("_stderr", "", 1)] = float(value)
        else:
            values[metric] = float(value)
    scores = {}
    for metric, value in values.items():
        if _paired_part(metric, values):
            continue
        bare = metric.partition(",")[0]
        direction = higher.get(bare)
        scores[metric] = Score(
            value,
            stderrs.get(metric),
            None if direction is None else bool(direction),
            values.get(with_suffix(metric, BASE_SUFFIX)),
            stderrs.get(with_suffix(metric, BASE_SUFFIX)),
        )
    return scores


def _paired_part(metric: str, values: dict[str, float]) -> bool:
    """True for `m_base` / `m_delta` when `m` itself is reported: they belong to m's Score."""
    name, _, filt = metric.partition(",")
    for suffix in (BASE_SUFFIX, "_delta"):
        if name.endswith(suffix):
            own = name[: -len(suffix)] + ("," + filt if filt else "")
            if own in values:
                return True
    return False


def with_suffix(metric: str, suffix: str) -> str:
    """`acc,none` + `_base` -> `acc_base,none`: a suffix on the metric name, before any filter."""
    name, _, filt = metric.partition(",")
    return name + suffix + ("," + filt if filt else "")


def _split(configs: dict[str, Any]) -> str:
    splits = {
        str((c.get("metadata") or {}).get("split"))
        for c in configs.values()
        if isinstance(c, dict) and (c.get("metadata") or {}).get("split")
    }
    return "+".join(sorted(splits))


def _model_args(model_args: Any) -> dict[str, Any]:
    """Results' model_args as a dict: lm-eval writes the dict it was given (Python API) or the
    "k=v,k=v" string (CLI)."""
    if isinstance(model_args, dict):
        return model_args
    pairs = (part.partition("=") for part in str(model_args or "").split(",") if part)
    return {key.strip(): value.strip() for key, _, value in pairs}


def _pretrained(model_args: Any) -> str:
    return str(_model_args(model_args).get("pretrained") or "")


def _without_pretrained(model_args: Any) -> str:
    """model_args other than `pretrained`, as 'k=v' joined by spaces."""
    return " ".join(f"{k}={v}" for k, v in _model_args(model_args).items() if k != "pretrained")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _sortable(strength: str) -> str:
    """Strengths sort numerically when they are numbers ("2" before "10")."""
    try:
        return f"{float(strength.split('+')[0]):020.6f}"
    except ValueError:
        return strength
