"""`ce-bench show` checks an artifact as evaluation would, without loading a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ce_bench.artifacts import save_artifact
from ce_bench.cli import app
from ce_bench.sites import Site
from tests.conftest import tiny_model
from tests.helpers import make_artifact


@pytest.fixture
def steer_dir(tmp_path: Path) -> Path:
    model = tiny_model("llama")
    art = make_artifact(
        model, "steer", Site("resid_post", 1), {"strength": 2.0}, vector=torch.randn(32)
    )
    return save_artifact(art, tmp_path / "art")


def _edit_manifest(path: Path, **changes: object) -> None:
    manifest = json.loads((path / "intervention.json").read_text())
    manifest.update(changes)
    (path / "intervention.json").write_text(json.dumps(manifest))


def _show(path: Path):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["show", str(path)])


def test_show_prints_a_good_artifact_and_exits_0(steer_dir: Path) -> None:
    result = _show(steer_dir)
    assert result.exit_code == 0, result.output
    assert "steer" in result.stdout and "resid_post@1" in result.stdout
    assert "tensor vector" in result.stdout and not result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "telepathy"}, "field 'kind': unknown kind 'telepathy'; known kinds: "),
        ({"layer": 99}, "field 'layer': layer 99 out of range: the model has 3 layers"),
        ({"params": {"strength": float("nan")}}, "strength must be a finite number, got nan"),
        ({"params": {"strenght": 1.0}}, "field 'params.strenght': unknown parameter"),
    ],
)
def test_show_refuses_a_bad_manifest_with_the_evaluation_message(
    steer_dir: Path, change: dict, message: str
) -> None:
    _edit_manifest(steer_dir, **change)
    result = _show(steer_dir)
    assert result.exit_code == 1
    assert message in result.stderr and "intervention.json" in result.stderr
    assert "Traceback" not in result.output


def test_show_refuses_a_vector_of_the_wrong_length(tmp_path: Path) -> None:
    model = tiny_model("llama")
    art = make_artifact(
        model, "steer", Site("resid_post", 1), {"strength": 2.0}, vector=torch.randn(31)
    )
    result = _show(save_artifact(art, tmp_path / "art"))
    assert result.exit_code == 1
    assert "'vector': expected shape (32,) for resid_post@1, got (31,)" in result.stderr


def test_show_checks_sizes_against_the_recorded_model(tmp_path: Path) -> None:
    model = tiny_model("llama")  # hidden 32, d_mlp 48
    neurons = make_artifact(
        model, "neuron_scale", Site("mlp_act", 1), {}, neurons=torch.tensor([0, 48])
    )
    result = _show(save_artifact(neurons, tmp_path / "neurons"))
    assert result.exit_code == 1 and "indices must lie in [0, 48)" in result.stderr
    edit = make_artifact(
        model, "featureedit", Site("mlp_act", 1), {}, directions=torch.randn(2, 48)
    )
    result = _show(save_artifact(edit, tmp_path / "edit"))
    assert result.exit_code == 1 and "expected (facts, 32) decoder directions" in result.stderr


def test_show_refuses_an_unreadable_artifact(tmp_path: Path, steer_dir: Path) -> None:
    (steer_dir / "tensors.safetensors").unlink()
    result = _show(steer_dir)
    assert result.exit_code == 1 and "file not found" in result.stderr
