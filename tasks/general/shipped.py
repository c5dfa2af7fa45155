"""lm-eval's own task configs pointed at small data files that ce-bench writes and ships.

`ce_general_mini` must measure exactly what `ce_general` measures (same prompts, choices and
metrics), only on less data that needs no hub. Rather than copy lm-eval's YAML, each mini task
loads the built-in task's YAML from the installed lm-eval at build time and swaps its dataset
for a JSONL file in `data/` (same schema as the hub dataset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lm_eval.tasks
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks._yaml_loader import load_yaml

LM_EVAL_TASKS = Path(lm_eval.tasks.__file__).parent
DATA = Path(__file__).parent / "data"
_DROP_FROM_BUILTIN = (  # where the built-in's data comes from, replaced by the shipped file
    "dataset_name",
    "training_split",
    "validation_split",
    "test_split",
    "fewshot_split",
    "fewshot_config",
    "dataset_path",
    "dataset_kwargs",
)


def builtin_task_config(config: dict[str, Any]) -> dict[str, Any]:
    """A task config built on lm-eval's own: the built-in YAML (metadata `builtin`, a path under
    lm_eval/tasks) under this task's keys (without `class`). With metadata `data`, the dataset is
    swapped for `data/<data>` (the built-in's splits and few-shot source dropped); without it
    the built-in's hub dataset stays. Few-shot examples then come from the same file (lm-eval
    excludes the scored item)."""
    meta = config["metadata"]
    builtin = load_yaml(LM_EVAL_TASKS / meta["builtin"], resolve_func=True)
    ours = {key: value for key, value in config.items() if key != "class"}
    for key in ("tag", "group", "task_alias"):
        builtin.pop(key, None)
    if "data" not in meta:
        return {**builtin, **ours}
    for key in _DROP_FROM_BUILTIN:
        builtin.pop(key, None)
    data_file = DATA / meta["data"]
    if not data_file.is_file():
        raise FileNotFoundError(f"{config['task']}: shipped data file {data_file} is missing")
    return {
        **builtin,
        **ours,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "fewshot_split": "test",
    }


class BuiltinTaskOnShippedData(ConfigurableTask):
    """A built-in lm-eval task on a shipped data file (`builtin_task_config`)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config=builtin_task_config(config))
