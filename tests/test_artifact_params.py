"""Float parameters must be finite, whether they come from a manifest or from model_args."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing

import pytest
import torch

import ce_bench.lifelong  # noqa: F401  (registers the editors)
from ce_bench.artifacts import ArtifactError, load_artifact, save_artifact
from ce_bench.embedded import load_model
from ce_bench.interventions import INTERVENTIONS, build_intervention
from ce_bench.interventions.base import parse_params
from ce_bench.models.edited_hf import EditedHFLM
from ce_bench.sites import Site
from tests.conftest import tiny_model
from tests.helpers import make_artifact

# Parameters some kinds need before their float fields are even looked at.
REQUIRED: dict[str, dict[str, typing.Any]] = {"sae_clamp": {"feature": 0, "sae_path": "sae"}}
NON_FINITE = [math.nan, math.inf, -math.inf]


def _float_fields(params_cls: type) -> list[str]:
    hints = typing.get_type_hints(params_cls)
    return [
        f.name
        for f in dataclasses.fields(params_cls)
        if hints[f.name] is float
        or (isinstance(hints[f.name], types.UnionType) and float in typing.get_args(hints[f.name]))
    ]


@pytest.mark.parametrize(
    "kind", [k for k in sorted(INTERVENTIONS) if _float_fields(INTERVENTIONS[k].Params)]
)
def test_every_float_parameter_refuses_nan_and_infinity(kind: str) -> None:
    params_cls = INTERVENTIONS[kind].Params
    names = _float_fields(params_cls)
    parse_params(params_cls, REQUIRED.get(kind, {}), kind)  # the defaults are fine
    for name in names:
        for value in NON_FINITE:
            raw = {**REQUIRED.get(kind, {}), name: value}
            with pytest.raises(ArtifactError, match=f"{name} must be a finite number, got"):
                parse_params(params_cls, raw, kind)


def _steer_dir(tmp_path, model=None):  # type: ignore[no-untyped-def]
    model = model or tiny_model("llama")
    art = make_artifact(
        model, "steer", Site("resid_post", 1), {"strength": 2.0}, vector=torch.randn(32)
    )
    return save_artifact(art, tmp_path / "art")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_strength_written_in_a_manifest_is_refused(tmp_path, literal: str) -> None:
    path = _steer_dir(tmp_path)
    manifest = path / "intervention.json"
    text = manifest.read_text().replace('"strength": 2.0', f'"strength": {literal}')
    manifest.write_text(text)
    assert not math.isfinite(json.loads(text)["params"]["strength"])  # Python's json reads it
    model = tiny_model("llama")
    with pytest.raises(ArtifactError, match=r"intervention.json.*strength must be a finite"):
        build_intervention(load_artifact(path), model)


def test_non_finite_strength_override_is_refused(tmp_path) -> None:
    model = tiny_model("llama")
    artifact = load_artifact(_steer_dir(tmp_path, model))
    for value in NON_FINITE:
        with pytest.raises(ArtifactError, match="strength must be a finite number"):
            build_intervention(artifact, model, {"strength": value})


def test_strength_nan_model_arg_is_refused_before_evaluation(tmp_path, tiny_llama_dir) -> None:
    model, _ = load_model(str(tiny_llama_dir), "cpu")
    path = _steer_dir(tmp_path, model)
    with pytest.raises(ArtifactError, match="strength must be a finite number, got nan"):
        EditedHFLM(pretrained=str(tiny_llama_dir), intervention=str(path), strength="nan")


@pytest.mark.parametrize(
    ("params", "tensor", "message"),
    [
        ({"strength": math.nan}, torch.ones(32), "finite"),
        ({"strenght": 2.0}, torch.ones(32), "unknown parameter"),
        ({"strength": 2.0}, torch.ones(31), "expected shape"),
    ],
)
def test_an_invalid_artifact_is_refused_when_written_and_nothing_is_written(
    tmp_path, params: dict, tensor: torch.Tensor, message: str
) -> None:
    from ce_bench.interventions import save_intervention

    model = tiny_model("llama")
    art = make_artifact(model, "steer", Site("resid_post", 1), params, vector=tensor)
    with pytest.raises(ArtifactError, match=message):
        save_intervention(art, tmp_path / "sv")
    assert not (tmp_path / "sv").exists()
