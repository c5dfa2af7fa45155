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
_DROP_FROM_BUILTIN = (
    "tag",
    "group",
    "task_alias",
    "dataset_name",
    "training_split",
    "validation_split",
    "test_split",
    "fewshot_split",
    "fewshot_config",
    "dataset_path",
    "dataset_kwargs",
)


class BuiltinTaskOnShippedData(ConfigurableTask):
    """A built-in lm-eval task (metadata `builtin`: its YAML under lm_eval/tasks) on `data/<data>`.

    Few-shot examples, if asked for, come from the same file (lm-eval excludes the scored item).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        meta = config["metadata"]
        builtin = load_yaml(LM_EVAL_TASKS / meta["builtin"], resolve_func=True)
        for key in _DROP_FROM_BUILTIN:
            builtin.pop(key, None)
        data_file = DATA / meta["data"]
        if not data_file.is_file():
            raise FileNotFoundError(f"{config['task']}: shipped data file {data_file} is missing")
        ours = {key: value for key, value in config.items() if key != "class"}
        super().__init__(
            config={
                **builtin,
                **ours,
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(data_file)}},
                "test_split": "test",
                "fewshot_split": "test",
            }
        )
