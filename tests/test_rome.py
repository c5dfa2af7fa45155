"""ROME: the closed form, C = E[k k^T], and the editor on tiny Llama, Gemma-2 and GPT-2 layouts."""

from __future__ import annotations

import pytest
import torch

import ce_bench.lifelong.covariance as covariance
from ce_bench.artifacts import load_artifact
from ce_bench.interventions import InterventionSet, save_intervention
from ce_bench.lifelong import load_stream, new_editor
from ce_bench.lifelong.rome import rank_one_update, subject_last, w_down
from ce_bench.sites import Site, out_in
from tests.conftest import tiny_model_with_vocab
from tests.helpers import lm_eval, recording, results_of

TEXTS = [f"Sentence number {i} talks about the weather in town {i}." for i in range(40)]
RECORD = load_stream("zsre", 1).records[0]


def test_rank_one_update_is_the_least_change_on_the_stored_keys_that_maps_k_to_v() -> None:
    """ROME Eq. 2 against a direct solve: min ||D K0||^2 subject to (W + D) k = v, row by row
    through its KKT system [[2C, k], [k^T, 0]]."""
    torch.manual_seed(0)
    weight, stored = torch.randn(4, 6, dtype=torch.float64), torch.randn(6, 50, dtype=torch.float64)
    key, value = torch.randn(6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    moment = stored @ stored.T / 50
    update = rank_one_update(weight, key, value, torch.linalg.solve(moment, key))
    residual = value - weight @ key
    kkt = torch.zeros(7, 7, dtype=torch.float64)
    kkt[:6, :6], kkt[:6, 6], kkt[6, :6] = 2 * moment, key, key
    direct = torch.stack(
        [
            torch.linalg.solve(kkt, torch.cat([torch.zeros(6), r[None]]).double())[:6]
            for r in residual
        ]
    )
    torch.testing.assert_close(update, direct)
    torch.testing.assert_close((weight + update) @ key, value)


def test_c_is_the_mean_outer_product_of_w_downs_inputs_and_is_cached(
    embedded_tokenizer, monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(covariance, "corpus", lambda *args: TEXTS[:6])
    monkeypatch.setenv("CE_BENCH_HOME", str(tmp_path))
    tokenizer = embedded_tokenizer
    model = tiny_model_with_vocab("llama", len(tokenizer))
    moment, tokens = covariance.second_moment(model, tokenizer, 1, max_tokens=10_000)
    with recording(model, Site("mlp_act", 1)) as seen, torch.no_grad():
        for text in TEXTS[:6]:
            model(**tokenizer(text, return_tensors="pt"))
    keys = torch.cat([h[0] for h in seen]).double()
    assert tokens == keys.shape[0]
    torch.testing.assert_close(moment, (keys.T @ keys / tokens).float(), rtol=1e-5, atol=1e-6)
    assert len(list(tmp_path.rglob("mom2-layer1-*.safetensors"))) == 1
    again, _ = covariance.second_moment(model, tokenizer, 1, max_tokens=10_000)
    assert torch.equal(again, moment)


def test_the_subject_last_token_is_found_in_a_templated_prompt(embedded_tokenizer) -> None:
    tokenizer, text = embedded_tokenizer, "I walked home. What is the capital of Kenya?"
    position = subject_last(tokenizer, text, "Kenya")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids[position]).strip() == "Kenya"
    assert subject_last(tokenizer, text, "") == len(ids) - 1


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_a_rome_edit_is_rank_one_maps_the_key_to_v_and_switches_off_exactly(
    arch: str, embedded_tokenizer, monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(covariance, "corpus", lambda *args: TEXTS)
    monkeypatch.setenv("CE_BENCH_HOME", str(tmp_path))
    tokenizer = embedded_tokenizer
    model = tiny_model_with_vocab(arch, len(tokenizer))
    ids = tokenizer(RECORD.prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        plain = model(ids).logits
    editor = new_editor("rome", model, {"layer": 1, "templates": 2, "v_steps": 10})
    with InterventionSet(model) as edits:
        edits.add(editor)
        editor.start_stream(model, tokenizer, [RECORD])
        stats = editor.apply_edit(model, tokenizer, RECORD)
        assert stats["residual"] < 1e-5  # W_down' k* = v*
        delta = out_in(w_down(model, 1), editor.tensors["delta"])
        assert torch.linalg.matrix_rank(delta.double(), rtol=1e-6) == 1
        with torch.no_grad():
            on = model(ids).logits
            with edits.off():
                assert torch.equal(model(ids).logits, plain)
        assert not torch.equal(on, plain)
        art = editor.to_artifact(model, "tiny", load_stream("zsre", 1))
        path = save_intervention(art, tmp_path / "rome")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain)
        with InterventionSet.attach(model, [load_artifact(path)]):
            torch.testing.assert_close(model(ids).logits, on)


@pytest.mark.slow
def test_lm_eval_runs_a_rome_stream_end_to_end(tmp_path) -> None:
    proc = lm_eval(
        "--model", "edited_hf",
        "--model_args", "editor=rome,edits=zsre,num_edits=3,mom2_adjustment=False,templates=2",
        "--tasks", "zsre_lifelong",
        "--output_path", str(tmp_path),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = results_of(tmp_path)
    metrics = results["results"]["zsre_lifelong"]
    assert metrics["rel,none"] > metrics["rel_base,none"]  # the edits took
    assert results["config"]["ce_bench"]["lifelong"]["editor"] == "rome"
