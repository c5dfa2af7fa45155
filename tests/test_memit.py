"""MEMIT and AlphaEdit: their layer updates against their defining equations, and both editors on
tiny Llama, Gemma-2 and GPT-2 layouts."""

from __future__ import annotations

import pytest
import torch

import ce_bench.lifelong.covariance as covariance
from ce_bench.artifacts import load_artifact
from ce_bench.interventions import InterventionSet, save_intervention
from ce_bench.lifelong import load_stream, new_editor
from ce_bench.lifelong.memit import alphaedit_update, memit_update, null_space_projection
from tests.conftest import tiny_model_with_vocab
from tests.helpers import lm_eval, results_of
from tests.test_rome import TEXTS

RECORD = load_stream("zsre", 1).records[0]


def _problem(seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    stored = torch.randn(6, 40, dtype=torch.float64)
    keys, residual = torch.randn(6, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    return keys, residual, stored @ stored.T / 40


def test_memit_update_minimises_the_new_keys_error_plus_the_weighted_stored_keys_change() -> None:
    keys, residual, moment = _problem()
    update = memit_update(keys, residual, moment, 3.0)
    gradient = (update @ keys - residual) @ keys.T + 3.0 * update @ moment  # of the objective / 2
    torch.testing.assert_close(gradient, torch.zeros_like(gradient))


def test_alphaedit_update_leaves_the_preserved_keys_alone() -> None:
    keys, residual, moment = _problem()
    values, vectors = torch.linalg.eigh(moment)
    threshold = float(values[3])  # the three smallest directions are the "null space"
    projection = null_space_projection(moment, threshold).double()
    update = alphaedit_update(keys, residual, projection, torch.zeros(6, 6).double(), 10.0)
    preserved = vectors[:, 3:]  # the large-eigenvalue directions the stored keys live in
    torch.testing.assert_close(update @ preserved, torch.zeros(4, 3).double())
    assert update.abs().max() > 1e-3
    eye = torch.eye(6, dtype=torch.float64)
    unprojected = alphaedit_update(keys, residual, eye, torch.zeros(6, 6).double(), 10.0)
    expected = residual @ keys.T @ torch.linalg.inv(keys @ keys.T + 10.0 * eye)
    torch.testing.assert_close(unprojected, expected)


@pytest.mark.parametrize("kind", ["memit", "alphaedit"])
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_an_edit_spreads_over_the_layers_switches_off_exactly_and_reloads(
    kind: str,
    arch: str,
    embedded_tokenizer,
    monkeypatch,
    tmp_path,  # noqa: F811
) -> None:
    monkeypatch.setattr(covariance, "corpus", lambda *args: TEXTS)
    monkeypatch.setenv("CE_BENCH_HOME", str(tmp_path))
    tokenizer = embedded_tokenizer
    model = tiny_model_with_vocab(arch, len(tokenizer))
    ids = tokenizer(RECORD.prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        plain = model(ids).logits
    params = {"layer": 0, "layers": 2, "v_steps": 5, "nullspace_threshold": 1e9}
    if kind == "memit":
        params = {"layer": 0, "layers": 2, "v_steps": 5, "mom2_update_weight": 1.0}
    editor = new_editor(kind, model, params)
    with InterventionSet(model) as edits:
        edits.add(editor)
        editor.start_stream(model, tokenizer, [RECORD])
        stats = editor.apply_edit(model, tokenizer, RECORD)
        delta = editor.tensors["delta"]
        assert delta.shape[0] == 2 and all(d.abs().sum() > 0 for d in delta)
        assert stats["z_error"] < 1.0
        with torch.no_grad():
            on = model(ids).logits
            with edits.off():
                assert torch.equal(model(ids).logits, plain)
        assert not torch.equal(on, plain)
        art = editor.to_artifact(model, "tiny", load_stream("zsre", 1))
        path = save_intervention(art, tmp_path / kind)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain)
        with InterventionSet.attach(model, [load_artifact(path)]):
            torch.testing.assert_close(model(ids).logits, on)


@pytest.mark.slow
def test_lm_eval_runs_an_alphaedit_stream_end_to_end(tmp_path) -> None:
    """AlphaEdit runs MEMIT's whole path too (z, keys, the spread over layers 4-8, C)."""
    proc = lm_eval(
        "--model", "edited_hf",
        "--model_args", "editor=alphaedit,edits=zsre,num_edits=2,mom2_tokens=5000",
        "--tasks", "zsre_lifelong",
        "--output_path", str(tmp_path),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = results_of(tmp_path)
    metrics = results["results"]["zsre_lifelong"]
    assert metrics["rel,none"] > metrics["rel_base,none"]  # the edits took
    lifelong = results["config"]["ce_bench"]["lifelong"]
    assert lifelong["editor"] == "alphaedit" and lifelong["after_stream"]["mom2_tokens_seen"] > 0
