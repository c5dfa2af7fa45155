"""Knowledge-neuron localisation by integrated gradients (Unified Concept Editing Eq. 1-3, A.8), on
tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from ce_bench.artifacts import load_artifact, save_artifact
from ce_bench.emotions import Prompt
from ce_bench.locate import knowledge_neurons as kn
from ce_bench.locate.knowledge_neurons import (
    KnowledgeNeuronsConfig,
    default_max_neurons,
    locate_knowledge_neurons,
    neuron_attributions,
    neuron_attributions_reference,
    select_neurons,
)
from ce_bench.sites import Site, SiteError, attach_hook
from tests.conftest import VOCAB, tiny_model
from tests.helpers import attached, recording

LAYER = 1
ARCHS = ["llama", "gpt2"]
PROMPT = "the cat sat on the mat and"
GOLDEN = " ok"  # three tokens under CharTokenizer: teacher forcing over the whole answer
PLANTED = "!"  # the answer a planted neuron drives


class CharTokenizer:
    """One token per character, inside the tiny models' vocabulary."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) % VOCAB for c in text]}


TOK = CharTokenizer()


def _ids(text: str) -> torch.Tensor:
    return torch.tensor([TOK(text)["input_ids"]])


def _probability(model: nn.Module, prompt: str, golden: str, last: torch.Tensor | None) -> float:
    """P(golden | prompt) by a plain forward, with the last prompt token's `mlp_act` at LAYER
    replaced by `last` when given (Eq. 1)."""
    ids, n = _ids(prompt + golden), len(golden)
    position = len(prompt) - 1

    def put(h: torch.Tensor) -> torch.Tensor | None:
        if last is None:
            return None
        out = h.clone()
        out[:, position] = last
        return out

    handle = attach_hook(model, Site("mlp_act", LAYER), put)
    try:
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, -n - 1 : -1], dim=-1)
    finally:
        handle.remove()
    return float(logp.gather(-1, ids[0, -n:, None]).sum().exp())


def _w_bar(model: nn.Module, prompt: str) -> torch.Tensor:
    with recording(model, Site("mlp_act", LAYER)) as seen, torch.no_grad():
        model(_ids(prompt))
    return seen[0][0, -1]


def _down_rows(model: nn.Module) -> torch.Tensor:
    """W_down of LAYER as (d_mlp, d_model): row j is what neuron j writes to the residual."""
    block = model.model.layers[LAYER] if hasattr(model, "model") else model.transformer.h[LAYER]
    if hasattr(block.mlp, "down_proj"):
        return block.mlp.down_proj.weight.data.T  # a view: writing it edits the model
    return block.mlp.c_proj.weight.data  # GPT-2's Conv1D stores (in, out)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layer", [0, LAYER])  # layer 0 has no shared prefix to run once
def test_batched_attributions_equal_the_per_step_loop(arch: str, layer: int) -> None:
    model = tiny_model(arch)
    batched = neuron_attributions(model, TOK, PROMPT, GOLDEN, layer, steps=8)
    loop = neuron_attributions_reference(model, TOK, PROMPT, GOLDEN, layer, steps=8)
    assert batched.shape == (_w_bar(model, PROMPT).numel(),) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, loop, rtol=1e-4, atol=1e-5 * float(loop.abs().max()))


def _plant(model: nn.Module) -> int:
    """Make an ordinary neuron (the 6th largest |w_bar|) write PLANTED's unembedding direction
    at the last prompt token, so that it alone drives the answer; returns its index."""
    w_bar = _w_bar(model, PROMPT)
    neuron = int(w_bar.abs().argsort(descending=True)[5])
    unembed = model.get_output_embeddings().weight.data
    direction = unembed[_ids(PLANTED)[0, 0]] - unembed.mean(0)
    _down_rows(model)[neuron] = torch.sign(w_bar[neuron]) * 30 * direction / direction.norm()
    return neuron


@pytest.mark.parametrize("arch", ARCHS)
def test_attributions_sum_to_the_probability_change_of_the_whole_position(arch: str) -> None:
    """IG completeness: the last prompt token's vector moves from 0 to w_bar as one path, so
    sum_i Attr_i = P(w_bar) - P(0) up to the Riemann error, which shrinks as O(1/m)."""
    model = tiny_model(arch)
    _plant(model)
    golden = PLANTED * 2  # two tokens: P is the teacher-forced product
    zero = torch.zeros_like(_w_bar(model, PROMPT))
    change = _probability(model, PROMPT, golden, None) - _probability(model, PROMPT, golden, zero)
    error = {
        m: abs(float(neuron_attributions(model, TOK, PROMPT, golden, LAYER, m).sum()) - change)
        for m in (20, 200)
    }
    assert error[200] < 0.05 * abs(change)
    assert error[200] < error[20] / 5


@pytest.mark.parametrize("arch", ARCHS)
def test_a_planted_neuron_gets_the_top_attribution(arch: str) -> None:
    model = tiny_model(arch)
    before = _probability(model, PROMPT, PLANTED, None)
    planted = _plant(model)
    assert _probability(model, PROMPT, PLANTED, None) > 1.5 * before
    attr = neuron_attributions(model, TOK, PROMPT, PLANTED, LAYER)
    assert int(attr.argmax()) == planted
    assert float(attr[planted]) > 5 * float(attr.abs().topk(2).values[1])


def test_select_keeps_neurons_above_a_tenth_of_each_prompts_maximum() -> None:
    table = torch.tensor(
        [
            [10.0, 1.0, 1.01, -5.0],  # neuron 1 sits exactly at 0.1 x max: not above it
            [2.0, 0.1, 0.21, 0.0],
        ]
    )
    chosen = select_neurons(table, threshold=0.1, min_share=0.0, max_neurons=10)
    assert chosen.neurons.tolist() == [0, 2]
    assert chosen.share.tolist() == [1.0, 1.0]
    torch.testing.assert_close(chosen.mean_attribution, torch.tensor([1.0, (0.101 + 0.105) / 2]))


def test_select_keeps_only_neurons_shared_by_more_than_min_share_of_prompts() -> None:
    table = torch.zeros(5, 6)
    table[:, 0] = 1.0  # every prompt
    table[:3, 1] = 1.0  # 3 of 5
    table[:2, 2] = 1.0  # 2 of 5: not more than 0.4
    table[:1, 3] = 1.0
    chosen = select_neurons(table, threshold=0.1, min_share=0.4, max_neurons=10)
    assert chosen.neurons.tolist() == [0, 1]
    assert chosen.share.tolist() == pytest.approx([1.0, 0.6])
    assert chosen.candidates == 2


def test_select_ranks_by_share_then_mean_attribution_and_caps() -> None:
    table = torch.tensor(
        [
            [1.0, 0.5, 0.9, 0.3, 0.0],
            [1.0, 0.9, 0.0, 0.0, 0.2],
            [0.2, 1.0, 0.0, 0.3, 0.2],
        ]
    )
    full = select_neurons(table, threshold=0.1, min_share=0.0, max_neurons=10)
    # shares: n0 1, n1 1, n2 1/3, n3 2/3, n4 2/3; ties broken by mean relative attribution
    assert full.neurons.tolist() == [1, 0, 3, 4, 2]
    capped = select_neurons(table, threshold=0.1, min_share=0.0, max_neurons=3)
    assert capped.neurons.tolist() == [1, 0, 3] and capped.candidates == 5


def test_a_prompt_without_positive_attribution_votes_for_no_neuron() -> None:
    table = torch.tensor([[-1.0, -0.01, -3.0], [0.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    chosen = select_neurons(table, threshold=0.1, min_share=0.0, max_neurons=10)
    assert chosen.neurons.tolist() == [1, 2]
    assert chosen.share.tolist() == pytest.approx([1 / 3, 1 / 3])


def test_select_names_the_knob_to_turn_when_nothing_survives() -> None:
    table = torch.eye(4)  # each neuron in one prompt of four: share 0.25
    with pytest.raises(ValueError, match=r"min_share=0\.5.*highest share: 0\.250.*--min-share"):
        select_neurons(table, threshold=0.1, min_share=0.5, max_neurons=10)


def test_the_default_cap_keeps_the_papers_fraction_of_the_layer() -> None:
    assert default_max_neurons(14336) == 450  # A.8: 400-500 on Llama-3-8B
    assert default_max_neurons(1536) == 48  # SmolLM2-135M
    assert default_max_neurons(4) == 1


def _prompts(n: int) -> list[Prompt]:
    return [Prompt(f"scene {i} made you feel", "anger", "angry", f"scene {i}") for i in range(n)]


def test_locate_applies_threshold_share_and_cap_to_the_attributions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_model("llama")
    rows = torch.zeros(4, 48)
    rows[:, 7] = 1.0  # all four prompts
    rows[:3, 3] = 0.5  # three
    rows[:2, 9] = 0.9  # two: share 0.5, not above min_share 0.5
    rows[0, 11] = 0.05  # below a tenth of the maximum
    seen: list[tuple[str, str, int, int]] = []

    def fake(model, tokenizer, prompt, golden, layer, steps):  # type: ignore[no-untyped-def]
        seen.append((prompt, golden, layer, steps))
        return rows[len(seen) - 1]

    monkeypatch.setattr(kn, "neuron_attributions", fake)
    config = KnowledgeNeuronsConfig(layer=LAYER, steps=5, min_share=0.5, max_neurons=1)
    art = locate_knowledge_neurons(model, TOK, _prompts(4), config, model_name="tiny")
    assert seen[0] == ("scene 0 made you feel", " angry", LAYER, 5)
    assert art.tensors["neurons"].tolist() == [7]
    assert art.tensors["neurons"].dtype == torch.int64
    report = art.provenance.report
    assert report["neurons"] == [{"neuron": 7, "share": 1.0, "mean_attribution": 1.0}]
    assert (report["candidates"], report["max_neurons"], report["prompts"]) == (2, 1, 4)
    assert (report["steps"], report["threshold"], report["min_share"]) == (5, 0.1, 0.5)


def test_locate_writes_a_neuron_scale_artifact_that_round_trips_and_attaches(
    tmp_path: Path,
) -> None:
    model = tiny_model("llama")
    config = KnowledgeNeuronsConfig(layer=LAYER, steps=4, min_share=0)
    art = locate_knowledge_neurons(model, TOK, _prompts(3), config, model_name="tiny")
    assert (art.kind, art.site) == ("neuron_scale", Site("mlp_act", LAYER))
    assert art.params == {"strength": kn.DEFAULT_STRENGTH, "positions": "all"}
    assert art.provenance.report["max_neurons"] == default_max_neurons(48)
    loaded = load_artifact(save_artifact(art, tmp_path / "kn"))
    assert torch.equal(loaded.tensors["neurons"], art.tensors["neurons"])
    assert loaded.provenance.report == art.provenance.report
    neurons = loaded.tensors["neurons"]
    ids = _ids(PROMPT)
    with (
        attached(model, loaded),
        recording(model, Site("mlp_act", LAYER)) as seen,
        torch.no_grad(),
    ):
        model(ids)
    plain = _w_bar(model, PROMPT)
    torch.testing.assert_close(seen[0][0, -1, neurons], 2.0 * plain[neurons])


def test_locate_rejects_a_layer_the_model_does_not_have() -> None:
    with pytest.raises(SiteError, match="out of range"):
        config = KnowledgeNeuronsConfig(layer=3)
        locate_knowledge_neurons(tiny_model("gpt2"), TOK, _prompts(1), config, model_name="tiny")


def test_cli_locates_knowledge_neurons_from_a_scenario_folder(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    import json

    from ce_bench.cli import app
    from ce_bench.emotions import EMOTIONS, load_scenarios, split_hash, split_scenarios

    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    for emotion in EMOTIONS:
        lines = [f"A {emotion} thing number {i} happened to you." for i in range(8)]
        (scenarios / f"{emotion}.json").write_text(json.dumps(lines))
    out = tmp_path / "anger_ne"
    result = CliRunner().invoke(
        app,
        [
            "locate", "knowledge-neurons", "--emotion", "anger", "--layer", "1",
            "--out", str(out), "--model", str(tiny_llama_dir), "--scenarios", str(scenarios),
            "--limit", "1", "--steps", "4", "--min-share", "0", "--device", "cpu",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    art = load_artifact(out)
    report = art.provenance.report
    assert report["split_hash"] == split_hash(split_scenarios(load_scenarios(scenarios)))
    assert (report["prompts"], report["locate_scenarios"], report["emotion"]) == (5, 1, "anger")
    assert art.kind == "neuron_scale" and art.site == Site("mlp_act", 1)
