"""Unified Concept Editing's locate methods for one emotion: SAE attribution + Reinforcer, SFT,
steering."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from ce_bench.artifacts import load_artifact, save_artifact
from ce_bench.emotions import EMOTIONS, Prompt
from ce_bench.interventions import build_intervention
from ce_bench.locate.emotion import EmotionData, EmotionJob, locate_emotion
from ce_bench.locate.golden import golden_pairs
from ce_bench.locate.sae_features import (
    FeatureNotFound,
    SAEFeatureConfig,
    SAESource,
    feature_attributions,
    locate_sae_feature,
    names_emotion,
)
from ce_bench.locate.sft import SFTConfig, locate_sft
from ce_bench.scoring import answer_nll, golden_batch
from tests.helpers import attached

LAST = 2  # the tiny model's last layer
PLANTED = 5


@pytest.fixture()
def tiny(tiny_llama_dir):  # type: ignore[no-untyped-def]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama_dir)


def _prompts(emotion: str, golden: str) -> list[Prompt]:
    texts = ["You open the door and see", "The letter on the table says", "At the station you"]
    return [Prompt(t, emotion, golden, t) for t in texts]


def _planted_sae(model, tokenizer, tmp_path):  # type: ignore[no-untyped-def]
    """An SAE at the last layer whose feature PLANTED writes the direction of " anger"."""
    anger = tokenizer(" anger", add_special_tokens=False)["input_ids"]
    assert len(anger) == 1
    with torch.no_grad():
        model.lm_head.weight[anger[0]] *= 8  # the direction reads as " anger" unambiguously
        direction = model.lm_head.weight[anger[0]] / model.lm_head.weight[anger[0]].norm()
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16))
    sae.cfg.metadata.hook_name = f"model.layers.{LAST}"
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.05)
        sae.W_dec.normal_(0, 0.05)
        sae.W_dec[PLANTED] = direction
        sae.b_enc[PLANTED] = 1.0  # always active, so its attribution is not zero
    path = tmp_path / "sae"
    sae.save_model(path)
    return sae, path


def test_attribution_ranks_the_feature_that_writes_the_golden_answer_first(tiny, tmp_path):  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    sae, _ = _planted_sae(model, tokenizer, tmp_path)
    attributions = feature_attributions(model, tokenizer, sae, _prompts("anger", "anger"))
    assert attributions.shape == (3, 16)
    assert (attributions.argmax(dim=1) == PLANTED).all()
    assert (attributions[:, PLANTED] > 0).all()  # raising it lowers the loss: positive (Eq. 9)


def test_attribution_does_not_change_what_the_model_computes(tiny, tmp_path):  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    sae, _ = _planted_sae(model, tokenizer, tmp_path)
    batch = golden_batch(tokenizer, golden_pairs(_prompts("anger", "anger")), torch.device("cpu"))
    with torch.no_grad():
        before = answer_nll(model, batch)
    feature_attributions(model, tokenizer, sae, _prompts("anger", "anger"))
    with torch.no_grad():
        torch.testing.assert_close(answer_nll(model, batch), before)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_reinforcer_picks_the_planted_feature_and_reports_the_candidates(tiny, tmp_path):  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    _, path = _planted_sae(model, tokenizer, tmp_path)
    probes = ["You fold the laundry. You feel", "You water the plants. You feel"]
    config = SAEFeatureConfig(source=SAESource(str(path)))
    art = locate_sae_feature(
        model, tokenizer, _prompts("anger", "anger"), probes, config, model_name="tiny"
    )
    assert art.kind == "sae_clamp" and art.params["feature"] == PLANTED
    report = art.provenance.report
    chosen = report["candidates"][report["chosen_rank"] - 1]
    assert chosen["feature"] == PLANTED and "anger" in chosen["interpretation"]
    assert report["top10_hit_rate"] == 1.0
    assert len(report["candidates"]) == 10
    assert "sae_seed" not in report  # not an SAE ce-bench trained: no training report
    build_intervention(load_artifact(save_artifact(art, tmp_path / "art")), model)
    (path / "training_report.json").write_text(json.dumps({"settings": {"seed": 7}}))
    again = locate_sae_feature(
        model, tokenizer, _prompts("anger", "anger"), probes, config, model_name="tiny"
    )
    assert again.provenance.report["sae_seed"] == 7  # every seed the artifact depends on


def test_no_matching_interpretation_means_the_sae_fails_to_locate(tiny, tmp_path):  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    _, path = _planted_sae(model, tokenizer, tmp_path)
    probes = ["You fold the laundry. You feel"]
    with pytest.raises(FeatureNotFound, match="no SAE feature among the top 10 reads as 'fear'"):
        config = SAEFeatureConfig(source=SAESource(str(path)))
        locate_sae_feature(
            model, tokenizer, _prompts("fear", "anger"), probes, config, model_name="tiny"
        )


def test_interpretations_match_word_forms_and_synonyms_only() -> None:
    assert names_emotion(("angry",), "anger")
    assert names_emotion(("rage", "the"), "anger")
    assert not names_emotion(("made", "the"), "anger")
    assert not names_emotion(("happy",), "anger")


def test_sft_trains_only_w_down_and_leaves_the_model_unchanged(tiny, tmp_path):  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    prompts = _prompts("anger", "anger")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = SFTConfig(layer=1, lr=1e-2, epochs=5)
    art = locate_sft(model, tokenizer, prompts, config, model_name="tiny")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert art.kind == "weight_delta" and art.tensors["delta"].abs().sum() > 0
    batch = golden_batch(tokenizer, golden_pairs(prompts), torch.device("cpu"))
    with torch.no_grad():
        plain = answer_nll(model, batch).mean()
        with attached(model, art):
            tuned = answer_nll(model, batch).mean()
    assert tuned < plain
    assert art.provenance.report["last_loss"] < art.provenance.report["first_loss"]


def test_emotion_locate_stamps_emotion_and_split_and_uses_the_other_emotions(tiny):  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    data = EmotionData.load()
    job = EmotionJob(model, tokenizer, "tiny", data, "anger", layer=1, limit=2)
    art = locate_emotion("steering", job)
    report = art.provenance.report
    assert (report["emotion"], report["split_hash"], report["locate_scenarios"]) == (
        "anger",
        data.hash,
        2,
    )
    assert art.kind == "steer" and art.tensors["vector"].shape == (32,)
    with pytest.raises(ValueError, match="unknown locate method 'telepathy'"):
        locate_emotion("telepathy", job)


def test_split_is_one_one_two_deterministic_and_disjoint() -> None:
    a, b = EmotionData.load(), EmotionData.load()
    assert a.hash == b.hash
    for emotion in EMOTIONS:
        split = a.splits[emotion]
        parts = [set(split.locate), set(split.validation), set(split.test)]
        assert len(split.locate) == len(split.validation)
        assert len(split.test) >= 2 * len(split.locate)
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert EmotionData.load(seed=1).hash != a.hash


def test_scenarios_load_from_a_repe_format_url(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import functools
    import http.server
    import json
    import threading

    for emotion in EMOTIONS:
        (tmp_path / f"{emotion}.json").write_text(
            json.dumps([f"A {emotion} scenario {i}." for i in range(8)])
        )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        data = EmotionData.load(url)
    finally:
        server.shutdown()
    assert set(data.splits) == set(EMOTIONS)  # no neutral.json there: the six emotions only
    assert len(data.splits["anger"].locate) == 2 and data.source == url
