"""Small builders shared by tests: in-memory artifacts and activation recorders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ce_bench.artifacts import Artifact, ModelIdentity, Provenance
from ce_bench.interventions import InterventionSet, Switch
from ce_bench.sites import Site, attach_hook

SWEEP_CONFIG = """
model: smollm2-135m
general_tasks: [ce_mini_arc_easy]
limit: 3
concept:
  methods: [steering]
  layers: [27]
  concepts: [anger]
  strengths: [0.5, 8.0]
  locate_limit: 1
  validation_limit: 2
  test_limit: 2
  max_gen_toks: 6
lifelong:
  editors: [grace]
  num_edits: [1]
"""


class Interrupted(Exception):
    """Stands for a killed sweep."""


def make_artifact(
    model: nn.Module, kind: str, site: Site, params: dict[str, Any], **tensors: torch.Tensor
) -> Artifact:
    return Artifact(
        kind, site, params, tensors, ModelIdentity.of(model, "tiny"), Provenance("test")
    )


@contextmanager
def attached(model: nn.Module, artifact: Artifact) -> Iterator[Switch]:
    """Attach the artifact's intervention to `model` (its switch); detached on exit."""
    with InterventionSet.attach(model, [artifact]) as edits:
        yield edits.switch


@contextmanager
def recording(model: nn.Module, site: Site) -> Iterator[list[torch.Tensor]]:
    """Record the activation at `site` as the next module sees it (after earlier hooks)."""
    seen: list[torch.Tensor] = []

    def record(h: torch.Tensor) -> None:
        seen.append(h.detach().clone())

    handle = attach_hook(model, site, record)
    try:
        yield seen
    finally:
        handle.remove()


def tokens(n: int = 7, batch: int = 2, vocab: int = 128, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


LM_EVAL = str(Path(sys.executable).parent / "lm_eval")


def lm_eval(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [LM_EVAL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def results_of(out_dir: Path) -> dict:
    (path,) = out_dir.rglob("results_*.json")
    return json.loads(path.read_text())


def samples_of(out_dir: Path, task: str) -> list[dict]:
    """The logged samples (`--log_samples`) of one task of a run written to `out_dir`."""
    (path,) = out_dir.rglob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]
