"""The public Python API, `ce_bench.InterventionSet`, as README shows it: edits on, `off()`
exactly the unedited model, and after the block no hook and every weight bit for bit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from ce_bench import InterventionSet
from ce_bench.artifacts import ArtifactError, save_artifact
from ce_bench.sites import Site, model_dims, module_path
from tests.conftest import tiny_model
from tests.helpers import make_artifact, tokens


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save_edits(model: nn.Module, root: Path) -> list[Path]:
    """A steering vector at layer 1 and a W_down weight delta at layer 2 of `model`."""
    dims = model_dims(model)
    torch.manual_seed(3)
    steer = make_artifact(
        model,
        "steer",
        Site("resid_post", 1),
        {"strength": 1.0},
        vector=torch.randn(dims.hidden_size),
    )
    weight = model.get_submodule(module_path(model, Site("mlp_act", 2))).weight
    delta = make_artifact(
        model, "weight_delta", Site("mlp_act", 2), {}, delta=0.1 * torch.randn_like(weight)
    )
    return [save_artifact(steer, root / "sv"), save_artifact(delta, root / "delta")]


def _check_readme_snippet(model: nn.Module, batch: dict[str, torch.Tensor], paths: list) -> None:
    generate = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    hooks, weights = _hook_count(model), _weights(model)
    with torch.no_grad():
        plain = model.generate(**batch, **generate)
        with InterventionSet.attach(model, paths, strength=4) as edits:
            on = model.generate(**batch, **generate)  # edited
            with edits.off():
                off = model.generate(**batch, **generate)  # exactly the unedited model
        after = model.generate(**batch, **generate)
    assert not torch.equal(on, plain)
    assert torch.equal(off, plain)
    assert torch.equal(after, plain)
    assert _hook_count(model) == hooks
    now = model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in weights.items())


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "gpt_neox"])
def test_readme_snippet_on_tiny_random_models(tmp_path: Path, arch: str) -> None:
    model = tiny_model(arch)
    ids = tokens(n=5, batch=2)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    _check_readme_snippet(model, batch, _save_edits(model, tmp_path))


def test_readme_snippet_on_the_embedded_model(tmp_path: Path, embedded_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(embedded_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    batch = tokenizer(
        ["The weather today is", "My favourite food"], return_tensors="pt", padding=True
    )
    _check_readme_snippet(model, dict(batch), _save_edits(model, tmp_path))


def test_a_failing_artifact_leaves_nothing_attached(tmp_path: Path) -> None:
    model = tiny_model("llama")
    good = _save_edits(model, tmp_path)
    other = tiny_model("gpt2")  # a model of another shape: its artifact must be refused
    bad = _save_edits(other, tmp_path / "other")[0]
    hooks, weights = _hook_count(model), _weights(model)
    with pytest.raises(ArtifactError, match="model"):
        InterventionSet.attach(model, [*good, bad])
    assert _hook_count(model) == hooks
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_strength_is_one_value_or_one_per_artifact(tmp_path: Path) -> None:
    model = tiny_model("llama")
    paths = _save_edits(model, tmp_path)
    with InterventionSet.attach(model, paths, strength=[2.0, 0.5]) as edits:
        assert [i.params.strength for i in edits.interventions] == [2.0, 0.5]
    with pytest.raises(ValueError, match="3 values for 2 interventions"):
        InterventionSet.attach(model, paths, strength="1+2+3")
    assert _hook_count(model) == 0


def test_the_python_api_page_runs_as_written(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """docs/python-api.md's code blocks, in order, in a fresh folder: locate, attach, evaluate."""
    page = Path(__file__).parents[1] / "docs" / "python-api.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 (our own documentation)
    assert not torch.equal(namespace["on"], namespace["off"])
    assert "ce_paired_general_mini" in namespace["results"]["results"]
