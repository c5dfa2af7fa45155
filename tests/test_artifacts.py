"""Artifacts round-trip through disk, and bad ones fail with the file, field and values."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from ce_bench.artifacts import ArtifactError, check_model, load_artifact, save_artifact
from ce_bench.interventions import build_intervention
from ce_bench.sites import Site
from tests.conftest import tiny_model
from tests.helpers import make_artifact


def _steer_dir(tmp_path, model=None, vector=None, layer=1):  # type: ignore[no-untyped-def]
    model = model or tiny_model("llama")
    vector = torch.randn(32) if vector is None else vector
    art = make_artifact(model, "steer", Site("resid_post", layer), {"strength": 2.0}, vector=vector)
    return save_artifact(art, tmp_path / "art")


def _check(path, model=None) -> None:  # type: ignore[no-untyped-def]
    """What edited_hf does before evaluating: load, compare with the model, build."""
    model = model or tiny_model("llama")
    artifact = load_artifact(path)
    check_model(artifact, model)
    build_intervention(artifact, model)


def _edit_manifest(path, **changes) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((path / "intervention.json").read_text())
    manifest.update(changes)
    (path / "intervention.json").write_text(json.dumps(manifest))


def test_artifact_round_trips_with_manifest_fields(tmp_path) -> None:
    vector = torch.randn(32)
    path = _steer_dir(tmp_path, vector=vector)
    art = load_artifact(path)
    assert (art.kind, art.site, art.params["strength"]) == ("steer", Site("resid_post", 1), 2.0)
    assert torch.equal(art.tensors["vector"], vector)
    assert art.provenance.ce_bench_version and art.provenance.date
    manifest = json.loads((path / "intervention.json").read_text())
    assert {"kind", "site", "layer", "params", "model", "provenance"} <= set(manifest)


def test_wrong_vector_length_names_the_tensor_and_shapes(tmp_path) -> None:
    path = _steer_dir(tmp_path, vector=torch.randn(31))
    with pytest.raises(ArtifactError, match=r"'vector'.*expected shape \(32,\).*got \(31,\)"):
        _check(path)


def test_weight_delta_of_the_wrong_shape_names_w_down(tmp_path) -> None:
    model = tiny_model("llama")
    art = make_artifact(model, "weight_delta", Site("mlp_act", 1), {}, delta=torch.zeros(48, 32))
    path = save_artifact(art, tmp_path / "art")
    with pytest.raises(
        ArtifactError, match=r"'delta'.*expected shape \(32, 48\).*W_down of layer 1"
    ):
        _check(path, model)


def test_layer_out_of_range_is_an_error(tmp_path) -> None:
    path = _steer_dir(tmp_path)
    _edit_manifest(path, layer=7)
    with pytest.raises(ArtifactError, match="layer 7 out of range: the model has 3 layers"):
        _check(path)


def test_unknown_kind_lists_the_known_ones(tmp_path) -> None:
    path = _steer_dir(tmp_path)
    _edit_manifest(path, kind="telepathy")
    with pytest.raises(ArtifactError, match="unknown kind 'telepathy'; known kinds: .*steer"):
        _check(path)


def test_missing_tensor_file_is_an_error(tmp_path) -> None:
    path = _steer_dir(tmp_path)
    (path / "tensors.safetensors").unlink()
    with pytest.raises(ArtifactError, match="tensors.safetensors.*file not found"):
        _check(path)


def test_missing_tensor_inside_the_file_is_an_error(tmp_path) -> None:
    path = _steer_dir(tmp_path)
    save_file({"other": torch.zeros(32)}, str(path / "tensors.safetensors"))
    with pytest.raises(ArtifactError, match="'vector': tensor missing"):
        _check(path)


def test_nan_in_a_vector_is_an_error(tmp_path) -> None:
    vector = torch.randn(32)
    vector[3] = float("nan")
    path = _steer_dir(tmp_path, vector=vector)
    with pytest.raises(ArtifactError, match="'vector': contains NaN"):
        _check(path)


def test_artifact_located_on_another_model_is_an_error(tmp_path) -> None:
    path = _steer_dir(tmp_path, model=tiny_model("llama", seed=0))
    with pytest.raises(ArtifactError, match="located on another model"):
        _check(path, tiny_model("llama", seed=1))
    with pytest.raises(ArtifactError, match="model_type"):
        _check(path, tiny_model("gpt2"))


def test_unknown_parameter_and_manifest_field_are_errors(tmp_path) -> None:
    path = _steer_dir(tmp_path)
    _edit_manifest(path, params={"strenght": 2.0})
    with pytest.raises(ArtifactError, match="'params.strenght': unknown parameter"):
        _check(path)
    path = _steer_dir(tmp_path)
    _edit_manifest(path, colour="blue")
    with pytest.raises(ArtifactError, match="'colour': unknown field"):
        _check(path)


def test_bad_positions_value_is_an_error(tmp_path) -> None:
    path = _steer_dir(tmp_path)
    _edit_manifest(path, params={"strength": 1.0, "positions": "middle"})
    with pytest.raises(
        ArtifactError, match="positions must be one of all, prompt, generated, last"
    ):
        _check(path)


@pytest.mark.parametrize("name", ["tensors.safetensors", "intervention.json"])
def test_a_file_symlinked_outside_the_artifact_is_an_error(tmp_path, name: str) -> None:
    path = _steer_dir(tmp_path)
    outside = tmp_path / f"elsewhere-{name}"
    (path / name).rename(outside)
    (path / name).symlink_to(outside)
    with pytest.raises(ArtifactError, match=f"{name}.*outside the artifact directory"):
        load_artifact(path)


def test_symlinks_inside_the_artifact_and_a_symlinked_directory_load(tmp_path) -> None:
    path = _steer_dir(tmp_path)
    (path / "tensors.safetensors").rename(path / "vector.safetensors")
    (path / "tensors.safetensors").symlink_to("vector.safetensors")
    (tmp_path / "link").symlink_to(path)
    _check(tmp_path / "link")


def test_extra_tensor_inside_the_file_is_an_error_listing_the_expected_ones(tmp_path) -> None:
    path = _steer_dir(tmp_path)
    tensors = {"vector": torch.randn(32), "stowaway": torch.zeros(3)}
    save_file(tensors, str(path / "tensors.safetensors"))
    with pytest.raises(
        ArtifactError, match=r"'stowaway': unexpected tensor.*steer stores exactly: vector"
    ):
        _check(path)
