"""ROME, MEMIT, AlphaEdit and MEND: their updates against their defining equations, C = E[k k^T],
MEND's factors and training, and the editors on tiny Llama, Gemma-2 and GPT-2 layouts and on
the embedded model."""

from __future__ import annotations

import json

import pytest
import torch

import ce_bench.lifelong.covariance as covariance
from ce_bench.artifacts import load_artifact
from ce_bench.embedded import load_model
from ce_bench.interventions import InterventionSet, save_intervention
from ce_bench.lifelong import LifelongSession, load_stream, new_editor
from ce_bench.lifelong.editor import edit_batch, target_loss
from ce_bench.lifelong.memit import alphaedit_update, memit_update, null_space_projection
from ce_bench.lifelong.mend import (
    MENDNet,
    NetShape,
    edited_layers,
    gradient_factors,
    mend_updates,
    shape_for,
)
from ce_bench.lifelong.mend_training import MENDTrainConfig, train_mend
from ce_bench.lifelong.records import shipped_dir
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
    monkeypatch.setattr(covariance, "texts_for", lambda *args: TEXTS[:6])
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


def test_c_samples_the_models_own_text_only_when_the_project_text_is_too_short(
    embedded_tokenizer, monkeypatch
) -> None:
    sampled = ["a text the model wrote"]
    monkeypatch.setattr(covariance, "corpus_texts", lambda *args: ["own", *sampled])
    model = tiny_model_with_vocab("llama", len(embedded_tokenizer))
    own = covariance.texts_for(model, embedded_tokenizer, "tiny", max_tokens=5_000)
    assert own == covariance.project_texts() and sampled[0] not in own
    both = covariance.texts_for(model, embedded_tokenizer, "tiny", max_tokens=10**7)
    assert both[-1] == sampled[0]


def test_the_subject_last_token_is_found_in_a_templated_prompt(embedded_tokenizer) -> None:
    tokenizer, text = embedded_tokenizer, "I walked home. What is the capital of Kenya?"
    position = subject_last(tokenizer, text, "Kenya")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids[position]).strip() == "Kenya"
    assert subject_last(tokenizer, text, "") == len(ids) - 1


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


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mend_factors_are_one_rank_one_term_per_token_summing_to_w_downs_gradient(
    arch: str, embedded_tokenizer
) -> None:
    tokenizer = embedded_tokenizer
    model = tiny_model_with_vocab(arch, len(tokenizer))
    batch = edit_batch(tokenizer, RECORD, torch.device("cpu"))
    factors = gradient_factors(model, batch, [1, 2])
    modules = [w_down(model, layer) for layer in (1, 2)]
    model.zero_grad()
    target_loss(model, batch)[0].backward()
    for module, (x, delta) in zip(modules, factors, strict=True):
        assert x.shape[0] == delta.shape[0] > 1  # one (x_t, delta_t) pair per token
        torch.testing.assert_close(delta.T @ x, out_in(module, module.weight.grad))


def test_an_untrained_mend_network_is_a_step_along_the_standardised_factors() -> None:
    net = MENDNet(NetShape(x_dim=6, delta_dim=4, layers=2, rank=5, edit_lr=0.5))
    torch.manual_seed(0)
    rows = torch.randn(30, 10) * 3 + 1
    net.observe(rows[:12])
    net.observe(rows[12:])  # two merges = one pass over all rows
    torch.testing.assert_close(net.mean, rows.mean(0))
    std = rows.std(0)
    x, delta = torch.randn(7, 6), torch.randn(7, 4)
    expected = 0.5 * ((delta - rows.mean(0)[6:]) / std[6:]).T @ ((x - rows.mean(0)[:6]) / std[:6])
    torch.testing.assert_close(net(x, delta, mode=1), expected, rtol=1e-4, atol=1e-5)


def test_a_saved_mend_network_loads_bit_for_bit_and_a_wrong_one_is_refused(tmp_path) -> None:
    net = MENDNet(NetShape(x_dim=6, delta_dim=4, layers=2, rank=5))
    net.observe(torch.randn(9, 10))
    net.save(tmp_path / "a", {"training": {"steps": 3}})
    loaded, description = MENDNet.load(tmp_path / "a")
    assert description["training"] == {"steps": 3}
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in net.state_dict().items())
    with pytest.raises(FileNotFoundError, match="not a trained MEND"):
        MENDNet.load(tmp_path / "missing")
    other = MENDNet(NetShape(x_dim=6, delta_dim=4, layers=3, rank=5))
    other.save(tmp_path / "b", {})
    (tmp_path / "b" / "mend.json").write_text((tmp_path / "a" / "mend.json").read_text())
    with pytest.raises(ValueError, match="do not fit"):
        MENDNet.load(tmp_path / "b")


def test_mend_training_lowers_its_loss_and_keeps_what_trained_it(
    embedded_tokenizer, tmp_path
) -> None:
    records = json.loads((shipped_dir() / "zsre.json").read_text())[:12]
    (tmp_path / "train.json").write_text(json.dumps(records))
    model = tiny_model_with_vocab("llama", len(embedded_tokenizer))
    config = MENDTrainConfig(
        train=str(tmp_path / "train.json"), val_records=2, layers=2, rank=8, lr=1e-2,
        accumulate=1, max_steps=60, val_every=30,
    )  # fmt: skip
    path, description = train_mend(model, embedded_tokenizer, config, tmp_path / "net")
    history = description["training"]["history"]
    assert [h["step"] for h in history] == [30, 60]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert description["layers"] == [1, 2] and description["training"]["records"] == 10
    net, again = MENDNet.load(path)
    assert again.pop("shape")["layers"] == 2 and net.count > 1
    assert again == json.loads(json.dumps(description))


# editor -> (its parameters on a 3-layer model, the layers it rewrites)
TINY = {
    "rome": ({"layer": 1, "templates": 2, "v_steps": 10}, 1),
    "memit": ({"layer": 0, "layers": 2, "v_steps": 5, "mom2_update_weight": 1.0}, 2),
    "alphaedit": ({"layer": 0, "layers": 2, "v_steps": 5, "nullspace_threshold": 1e9}, 2),
    "mend": ({"layers": 2}, 2),
}


def untrained_mend(model: torch.nn.Module, layers: int, out) -> MENDNet:  # type: ignore[no-untyped-def]
    """A MEND network at its initialisation (the identity) with input statistics, saved."""
    net = MENDNet(shape_for(model, layers, rank=8))
    torch.manual_seed(1)
    net.observe(torch.randn(50, net.shape.x_dim + net.shape.delta_dim))
    net.save(out, {"model": "tiny", "layers": edited_layers(model, layers), "training": {}})
    return net


@pytest.mark.parametrize("kind", sorted(TINY))
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_an_edit_changes_w_down_as_its_method_says_switches_off_exactly_and_reloads(
    kind: str, arch: str, embedded_tokenizer, monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(covariance, "texts_for", lambda *args: TEXTS)
    monkeypatch.setenv("CE_BENCH_HOME", str(tmp_path))
    tokenizer = embedded_tokenizer
    model = tiny_model_with_vocab(arch, len(tokenizer))
    ids = tokenizer(RECORD.prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        plain = model(ids).logits
    params, layers = TINY[kind]
    if kind == "mend":
        net = untrained_mend(model, layers, tmp_path / "net")
        params = {**params, "mend_path": str(tmp_path / "net")}
        batch = edit_batch(tokenizer, RECORD, torch.device("cpu"))
        expected = [-u for u in mend_updates(net, gradient_factors(model, batch, [1, 2]))]
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
        elif kind == "mend":  # -alpha sum_t delta~_t x~_t^T, from the unedited model's factors
            for layer, delta, change in zip((1, 2), deltas, expected, strict=True):
                torch.testing.assert_close(out_in(w_down(model, layer), delta), change)
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


RESUMED = {  # editors whose continuation needs more than their state
    "alphaedit": TINY["alphaedit"][0],  # the edited keys
    "rome": TINY["rome"][0],  # the sampled context templates
    "wise": {"layer": 1, "steps": 2, "save_freq": 2, "merge_freq": 4},  # the edit count, templates
    "grace": {"layer": 1, "steps": 2},  # a codebook that grows
    "mend": TINY["mend"][0],  # the network it edits with
}


@pytest.mark.parametrize("kind", sorted(RESUMED))
def test_a_stream_cut_off_after_an_edit_continues_there_and_ends_where_an_uncut_one_does(
    kind: str, embedded_tokenizer, monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(covariance, "texts_for", lambda *args: TEXTS)
    monkeypatch.setenv("CE_BENCH_HOME", str(tmp_path))
    model = tiny_model_with_vocab("llama", len(embedded_tokenizer))
    stream = load_stream("zsre", 3)
    params = dict(RESUMED[kind])
    if kind == "mend":
        untrained_mend(model, params["layers"], tmp_path / "net")
        params["mend_path"] = str(tmp_path / "net")

    def run(progress=None, cut_after: int | None = None):  # type: ignore[no-untyped-def]
        torch.manual_seed(5)  # the same random state for every run (the tiny model samples)
        editor = new_editor(kind, model, params)
        if cut_after is not None:
            edit, calls = editor.apply_edit, []

            def cut(*args):  # type: ignore[no-untyped-def]
                if len(calls) == cut_after:
                    raise KeyboardInterrupt  # the machine's time slot ends
                calls.append(1)
                return edit(*args)

            editor.apply_edit = cut  # type: ignore[method-assign]
        with InterventionSet(model) as edits:
            edits.add(editor)
            session = LifelongSession(
                editor, stream, model, embedded_tokenizer, "end", False, progress
            )
            return editor.progress(), session

    (uncut, uncut_info), _ = run()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "progress", cut_after=2)
    assert [p.name for p in (tmp_path / "progress").iterdir()] == ["after-2"]  # complete ones
    (resumed, resumed_info), session = run(tmp_path / "progress")
    assert session.editor.edits_applied == 3 and len(session.edit_stats) == 3
    assert resumed.keys() == uncut.keys()
    for name in uncut:  # up to rounding: W_down + delta is rebuilt from the saved delta
        torch.testing.assert_close(resumed[name], uncut[name], rtol=0, atol=1e-6)
    assert resumed_info == uncut_info
    assert [p.name for p in (tmp_path / "progress").iterdir()] == ["after-3"]


def test_saved_progress_of_another_run_is_refused(embedded_tokenizer, tmp_path) -> None:
    model = tiny_model_with_vocab("llama", len(embedded_tokenizer))
    stream = load_stream("zsre", 1)
    for steps in (2, 3):
        editor = new_editor("grace", model, {"layer": 1, "steps": steps})
        with InterventionSet(model) as edits:
            edits.add(editor)
            if steps == 2:
                LifelongSession(editor, stream, model, embedded_tokenizer, "end", False, tmp_path)
            else:
                with pytest.raises(ValueError, match="made by another run"):
                    LifelongSession(
                        editor, stream, model, embedded_tokenizer, "end", False, tmp_path
                    )
    with pytest.raises(ValueError, match="resume_edits= continues an interrupted stream"):
        LifelongSession(editor, stream, model, embedded_tokenizer, "immediate", False, tmp_path)
    other = tiny_model_with_vocab("gemma2", len(embedded_tokenizer))  # another model
    editor = new_editor("grace", other, {"layer": 1, "steps": 2})
    with InterventionSet(other) as edits, pytest.raises(ValueError, match="model"):
        edits.add(editor)
        LifelongSession(editor, stream, other, embedded_tokenizer, "end", False, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_args",
    [
        "editor=rome,edits=zsre,num_edits=3,mom2_adjustment=False,templates=2,v_steps=12",
        # AlphaEdit runs MEMIT's whole path too (z, keys, the spread over layers 4-8, C)
        # (with MEMIT's z step, under which its edits take: docs/lifelong.md)
        "editor=alphaedit,edits=zsre,num_edits=2,mom2_tokens=5000,v_lr=0.5,v_weight_decay=0.001,"
        "v_steps=12",
        "editor=mend,edits=zsre,num_edits=3",
    ],
)
def test_lm_eval_runs_a_stream_and_the_edits_take(model_args: str, tmp_path) -> None:
    if "editor=mend" in model_args:  # a network trained briefly, in the test's folder
        model, tokenizer = load_model()
        config = MENDTrainConfig(val_records=5, max_steps=10, val_every=10)
        train_mend(model, tokenizer, config, tmp_path / "net")
        model_args += f",mend_path={tmp_path / 'net'}"
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
