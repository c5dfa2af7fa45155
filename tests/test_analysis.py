"""The Unified Concept Editing analyses: output generalisation (Table 4) and neuron-level overlap
(Table 5)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

from ce_bench.analysis import (
    generalization_grid,
    neuron_overlap,
    output_generalization,
    overlap_grid,
)
from ce_bench.analysis.generalization import ORIGINAL, PAPER_PROMPT
from ce_bench.analysis.overlap import PAIRS, down_columns, residual_rates
from ce_bench.artifacts import Artifact, ArtifactError
from ce_bench.emotions import WORD_KINDS, emotion_words
from ce_bench.interventions import build_intervention
from ce_bench.sites import Site, attach_hook, module_path
from tests.conftest import tiny_model
from tests.helpers import make_artifact

LAYER = 1
S = [3, 10, 17, 25]  # the neuron set the constructed edits point at
OTHER_PROMPT = "The train was late again this morning. You feel"


# ----------------------------------------------------------------------------- generalisation
@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_dir):  # type: ignore[no-untyped-def]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama_dir)


def _concept_steer(model: nn.Module, tokenizer) -> Artifact:  # type: ignore[no-untyped-def]
    """A steer vector after the last layer along the unembedding rows of the concept words."""
    ids = [tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in ("anger", "angry")]
    vector = model.get_output_embeddings().weight[ids].sum(0).detach()
    last = Site("resid_post", model.config.num_hidden_layers - 1)
    return make_artifact(model, "steer", last, {"strength": 100.0}, vector=vector)


def test_steering_towards_the_concept_unembedding_raises_the_concept_and_gets_a_tick(
    tiny_lm,
) -> None:
    model, tokenizer = tiny_lm
    report = output_generalization(
        model, tokenizer, "anger", {"SV": _concept_steer(model, tokenizer)}
    )
    assert report.probabilities["SV"]["concept"] > report.probabilities[ORIGINAL]["concept"]
    assert report.marks["SV"]["concept"] is True
    listed = emotion_words("anger")
    for kind, words in report.words.items():  # one-token words scored, the others listed apart
        assert sorted(words + report.dropped[kind]) == sorted(listed[kind])
        assert all(len(tokenizer(" " + w).input_ids) == 1 for w in words)
    assert "contentment" in report.dropped["antonyms"]
    assert "unrelated" not in report.marks["SV"]
    markdown = generalization_grid(report).markdown()
    assert markdown.splitlines()[0] == f"| Type | {ORIGINAL} | SV |"
    assert " ✓ |" in markdown.splitlines()[2]  # the concept row
    assert len(generalization_grid(report).rows) == len(WORD_KINDS)


def test_probabilities_are_proper_and_the_original_row_ignores_the_artifacts(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    alone = output_generalization(model, tokenizer, "anger", {}, steps=5)
    neurons = make_artifact(
        model, "neuron_scale", Site("mlp_act", LAYER), {"strength": 5.0}, neurons=torch.tensor(S)
    )
    both = output_generalization(
        model,
        tokenizer,
        "anger",
        {"SV": _concept_steer(model, tokenizer), "NE": neurons},
        steps=5,
    )
    assert both.probabilities[ORIGINAL] == alone.probabilities[ORIGINAL]
    assert list(both.probabilities) == [ORIGINAL, "SV", "NE"]
    for row in both.probabilities.values():
        assert set(row) == set(WORD_KINDS)
        assert all(0.0 < p < 1.0 for p in row.values())


def test_several_prompts_are_averaged(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    prompts = (PAPER_PROMPT, OTHER_PROMPT)
    pair = output_generalization(model, tokenizer, "fear", {}, prompts, steps=4)
    singles = [output_generalization(model, tokenizer, "fear", {}, (p,), steps=4) for p in prompts]
    for kind in WORD_KINDS:
        mean = sum(r.probabilities[ORIGINAL][kind] for r in singles) / 2
        assert pair.probabilities[ORIGINAL][kind] == pytest.approx(mean, rel=1e-6)


def test_an_artifact_located_for_another_emotion_is_rejected(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    artifact = _concept_steer(model, tokenizer)
    artifact.provenance.report["emotion"] = "joy-not-anger"
    with pytest.raises(ArtifactError, match="located for 'joy-not-anger'"):
        output_generalization(model, tokenizer, "anger", {"SV": artifact}, steps=1)


# ----------------------------------------------------------------------------- neuron overlap
def _ids_tokenizer(text: str, return_tensors: str = "pt") -> BatchEncoding:
    """Enough of a tokenizer for the vocab-128 tiny models: a few ids derived from the text."""
    return BatchEncoding({"input_ids": torch.tensor([[len(text) % 128, 5, 9, 2]])})


def _w_down(model: nn.Module) -> torch.Tensor:
    """W_down of LAYER as an editable (d_model, d_mlp) view, whatever the module stores."""
    module = model.get_submodule(module_path(model, Site("mlp_act", LAYER)))
    return down_columns(module, module.weight.data)


def _exactly_invertible_on_s(model: nn.Module) -> torch.Tensor:
    """Zero all but d_model columns of W_down (S among the kept ones): the rest is invertible,
    so W^+ W e_S = e_S exactly and Eq. 17 can be checked without pinv's projection blurring it."""
    w = _w_down(model)
    d_model, d_mlp = w.shape
    dead = [j for j in range(d_mlp) if j not in S][: d_mlp - d_model]
    w[:, dead] = 0.0
    return w


@contextmanager
def _known_activations(model: nn.Module, n: torch.Tensor) -> Iterator[None]:
    """Pin the FFN neurons of LAYER to `n` (hooks before the analysis's own recorder see it)."""
    handle = attach_hook(model, Site("mlp_act", LAYER), lambda h: n.expand_as(h).clone())
    try:
        yield
    finally:
        handle.remove()


def _indicator(width: int) -> torch.Tensor:
    e = torch.zeros(width)
    e[S] = 1.0
    return e


def _ne(model: nn.Module, neurons: list[int], layer: int = LAYER) -> Artifact:
    site = Site("mlp_act", layer)
    return make_artifact(
        model, "neuron_scale", site, {"strength": 3.0}, neurons=torch.tensor(neurons)
    )


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_steer_vector_written_by_neurons_s_locates_s(arch: str) -> None:
    model = tiny_model(arch)
    w = _exactly_invertible_on_s(model)
    vector = w @ _indicator(w.shape[1])  # v = W_down e_S
    sv = make_artifact(model, "steer", Site("resid_post", LAYER), {"strength": 2.0}, vector=vector)
    n = torch.linspace(0.5, 2.0, w.shape[1])  # known, positive: dn_S = k / n_S, 0 elsewhere
    with _known_activations(model, n):
        report = neuron_overlap(model, _ids_tokenizer, ["a", "bb"], ne=_ne(model, S), sv=sv)
    assert report.neurons["SV"] == S
    assert report.top_j == len(S)
    assert report.overlaps["NE-SV"] == 100.0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sft_locates_the_columns_it_changed(arch: str) -> None:
    model = tiny_model(arch)
    module = model.get_submodule(module_path(model, Site("mlp_act", LAYER)))
    delta = torch.zeros_like(module.weight)
    columns = down_columns(module, delta)  # a view: writing it writes delta
    columns[:, S] = torch.randn(columns.shape[0], len(S))
    sft = make_artifact(model, "weight_delta", Site("mlp_act", LAYER), {}, delta=delta)
    report = neuron_overlap(model, None, [], ne=_ne(model, S), sft=sft)  # type: ignore[arg-type]
    assert report.neurons["SFT"] == S
    assert report.overlaps["NE-SFT"] == 100.0
    assert report.prompts == 0


def test_sae_and_sv_agree_when_the_feature_decodes_to_the_steer_direction(tmp_path) -> None:
    from sae_lens import StandardSAE, StandardSAEConfig

    model = tiny_model("llama")
    w = _exactly_invertible_on_s(model)
    direction = w @ _indicator(w.shape[1])
    sae = StandardSAE(StandardSAEConfig(d_in=w.shape[0], d_sae=16, normalize_activations="none"))
    sae.cfg.metadata.hook_name = f"blocks.{LAYER}.hook_resid_post"
    with torch.no_grad():
        sae.W_dec[7] = direction
        sae.b_enc[7] = -1e4  # feature 7 never fires, so the delta clamp adds exactly C W_dec[7]
    sae.save_model(tmp_path / "sae")
    params = {"feature": 7, "strength": 3.0, "mode": "delta", "sae_path": str(tmp_path / "sae")}
    sae_art = make_artifact(model, "sae_clamp", Site("resid_post", LAYER), params)
    sv = make_artifact(
        model, "steer", Site("resid_post", LAYER), {"strength": 1.0}, vector=direction
    )
    with _known_activations(model, torch.full((w.shape[1],), 0.7)):
        report = neuron_overlap(model, _ids_tokenizer, ["x"], sae=sae_art, sv=sv, top_j=len(S))
    assert report.neurons["SAE"] == report.neurons["SV"] == S
    assert report.overlaps["SAE-SV"] == 100.0


def test_silent_neurons_give_finite_rates() -> None:
    model = tiny_model("llama")
    sv = make_artifact(
        model, "steer", Site("resid_post", LAYER), {"strength": 1.0}, vector=torch.ones(32)
    )
    steer = build_intervention(sv, model)
    with _known_activations(model, torch.zeros(48)):
        rates = residual_rates(model, _ids_tokenizer, ["x"], LAYER, {"SV": steer}, eps=1e-3)
    assert rates["SV"].shape == (48,)
    assert torch.isfinite(rates["SV"]).all()
    assert rates["SV"].abs().max() > 1.0  # divided by eps, not by the silent 0


def test_missing_methods_show_a_dash() -> None:
    model = tiny_model("llama")
    report = neuron_overlap(model, None, [], ne=_ne(model, S))  # type: ignore[arg-type]
    assert report.neurons == {"NE": S, "SAE": None, "SV": None, "SFT": None}
    assert all(report.overlaps[pair] is None for pair in PAIRS)
    (row,) = overlap_grid(report).rows
    assert row == ["layer 1", *["-"] * len(PAIRS)]


def test_artifacts_at_different_layers_are_an_error() -> None:
    model = tiny_model("llama")
    delta = torch.zeros_like(_w_down(model))
    sft = make_artifact(model, "weight_delta", Site("mlp_act", 2), {}, delta=delta)
    with pytest.raises(ArtifactError, match=r"weight_delta artifact.*SFT sits at layer 2"):
        neuron_overlap(model, None, [], ne=_ne(model, S), sft=sft)  # type: ignore[arg-type]


def test_without_ne_j_must_be_given() -> None:
    model = tiny_model("llama")
    delta = torch.ones_like(_w_down(model))
    sft = make_artifact(model, "weight_delta", Site("mlp_act", LAYER), {}, delta=delta)
    with pytest.raises(ValueError, match="give top_j"):
        neuron_overlap(model, None, [], sft=sft)  # type: ignore[arg-type]
