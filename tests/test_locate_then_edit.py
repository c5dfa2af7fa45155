"""ROME, MEMIT and AlphaEdit: their updates against their defining equations, C = E[k k^T], and
the editors on tiny Llama, Gemma-2 and GPT-2 layouts and on the embedded model."""

from __future__ import annotations

import pytest
import torch

import ce_bench.lifelong.covariance as covariance
from ce_bench.artifacts import load_artifact
from ce_bench.interventions import InterventionSet, save_intervention
from ce_bench.lifelong import load_stream, new_editor
from ce_bench.lifelong.memit import alphaedit_update, memit_update, null_space_projection
from ce_bench.lifelong.rome import rank_one_update, subject_last
from ce_bench.lifelong.weight_editor import w_down
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
    monkeypatch.setattr(covariance, "corpus_texts", lambda *args: TEXTS[:6])
    monkeypatch.setenv("CE_BENCH_HOME", str(tmp_path))
    tokenizer = embedded_tokenizer
    model = tiny_model_with_vocab("llama", len(tokenizer))
    ((moment, tokens),) = covariance.second_moments(model, tokenizer, [1], max_tokens=10_000)
    with recording(model, Site("mlp_act", 1)) as seen, torch.no_grad():
        for text in TEXTS[:6]:
            model(**tokenizer(text, return_tensors="pt"))
    keys = torch.cat([h[0] for h in seen]).double()
    assert tokens == keys.shape[0]
    torch.testing.assert_close(moment, (keys.T @ keys / tokens).float(), rtol=1e-5, atol=1e-6)
    assert len(list(tmp_path.rglob("mom2-layer1-*.safetensors"))) == 1
    ((again, _),) = covariance.second_moments(model, tokenizer, [1], max_tokens=10_000)
    assert torch.equal(again, moment)


def test_the_subject_last_token_is_found_in_a_templated_prompt(embedded_tokenizer) -> None:
    tokenizer, text = embedded_tokenizer, "I walked home. What is the capital of Kenya?"
    position = subject_last(tokenizer, text, "Kenya")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids[position]).strip() == "Kenya"
    assert subject_last(tokenizer, text, "") == len(ids) - 1


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
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


# editor -> (its parameters on a 3-layer model, the layers it rewrites)
TINY = {
    "rome": ({"layer": 1, "templates": 2, "v_steps": 10}, 1),
    "memit": ({"layer": 0, "layers": 2, "v_steps": 5, "mom2_update_weight": 1.0}, 2),
    "alphaedit": ({"layer": 0, "layers": 2, "v_steps": 5, "nullspace_threshold": 1e9}, 2),
}


@pytest.mark.parametrize("kind", sorted(TINY))
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_an_edit_changes_w_down_as_its_method_says_switches_off_exactly_and_reloads(
    kind: str, arch: str, embedded_tokenizer, monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(covariance, "corpus_texts", lambda *args: TEXTS)
    monkeypatch.setenv("CE_BENCH_HOME", str(tmp_path))
    tokenizer = embedded_tokenizer
    model = tiny_model_with_vocab(arch, len(tokenizer))
    ids = tokenizer(RECORD.prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        plain = model(ids).logits
    params, layers = TINY[kind]
    editor = new_editor(kind, model, params)
    with InterventionSet(model) as edits:
        edits.add(editor)
        editor.start_stream(model, tokenizer, [RECORD])
        stats = editor.apply_edit(model, tokenizer, RECORD)
        deltas = editor.deltas()
        assert len(deltas) == layers and all(d.abs().sum() > 0 for d in deltas)
        if kind == "rome":
            assert stats["residual"] < 1e-5  # W_down' k* = v*
            delta = out_in(w_down(model, 1), deltas[0]).double()
            assert torch.linalg.matrix_rank(delta, rtol=1e-6) == 1
        else:
            assert stats["z_error"] < 1.0  # the layers moved the residual towards z
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
@pytest.mark.parametrize(
    "model_args",
    [
        "editor=rome,edits=zsre,num_edits=3,mom2_adjustment=False,templates=2",
        # AlphaEdit runs MEMIT's whole path too (z, keys, the spread over layers 4-8, C)
        "editor=alphaedit,edits=zsre,num_edits=2,mom2_tokens=5000",
    ],
)
def test_lm_eval_runs_a_stream_and_the_edits_take(model_args: str, tmp_path) -> None:
    proc = lm_eval(
        "--model", "edited_hf",
        "--model_args", model_args,
        "--tasks", "zsre_lifelong",
        "--output_path", str(tmp_path),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = results_of(tmp_path)
    metrics = results["results"]["zsre_lifelong"]
    assert metrics["rel,none"] > metrics["rel_base,none"]
    lifelong = results["config"]["ce_bench"]["lifelong"]
    assert model_args.startswith(f"editor={lifelong['editor']},")
