"""The paired general-ability tasks: each is lm-eval's own task (its prompt, metrics and scorer)
with a `_base` twin per metric, on shipped data (mini) or the built-in's hub dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ce_bench.tasks.general.shipped import builtin_task_config
from ce_bench.tasks.paired.tasks import paired_metric_list
from lm_eval.tasks._yaml_loader import load_yaml

PAIRED = Path(__file__).parents[1] / "tasks" / "paired"
GROUPS = {"ce_paired_general_mini": "ce_general_mini", "ce_paired_general": "ce_general"}


@pytest.mark.parametrize(("paired", "plain"), GROUPS.items())
def test_each_paired_group_covers_every_task_of_its_plain_group(paired: str, plain: str) -> None:
    general = Path(__file__).parents[1] / "tasks" / "general"
    ours = yaml.safe_load((PAIRED / f"{paired}.yaml").read_text())["task"]
    theirs = yaml.safe_load((general / f"{plain}.yaml").read_text())["task"]
    strip = (lambda t: t.removeprefix("ce_mini_")) if plain.endswith("mini") else (lambda t: t)
    assert [t.removeprefix("ce_paired_mini_").removeprefix("ce_paired_") for t in ours] == [
        strip(t) for t in theirs
    ]


@pytest.mark.parametrize("name", ["arc_easy", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande"])
def test_a_hub_paired_task_keeps_the_builtins_dataset_and_a_mini_one_swaps_it(name: str) -> None:
    hub = builtin_task_config(load_yaml(PAIRED / f"ce_paired_{name}.yaml", resolve_func=False))
    mini = builtin_task_config(
        load_yaml(PAIRED / f"ce_paired_mini_{name}.yaml", resolve_func=False)
    )
    assert hub["dataset_path"] not in ("json", None) and mini["dataset_path"] == "json"
    assert hub["doc_to_text"] == mini["doc_to_text"]  # the same prompt
    names = [m["metric"] for m in paired_metric_list(hub["metric_list"], True)]
    assert "acc" in names and "acc_base" in names and names[-1] == "agree"
    if name == "truthfulqa_mc2":
        assert callable(hub["process_results"])  # lm-eval's mc2 scorer, not plain accuracy
    if name == "mmlu":
        assert hub["dataset_name"] == "all"
