"""`edited_hf` in-process: exact parity with `hf` when off, paired requests, bad input first."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from ce_bench.artifacts import ArtifactError, load_artifact, save_artifact
from ce_bench.embedded import load_model
from ce_bench.models.edited_hf import EditedHFLM
from ce_bench.pairing import baseline_generation, baseline_loglikelihood, for_target
from ce_bench.sites import Site, attach_hook
from tests.helpers import make_artifact

PAIRS = [
    ("Question: What do plants need to grow?\nAnswer:", " sunlight and water"),
    ("Question: What do plants need to grow?\nAnswer:", " a loud noise"),
    ("The capital of France is", " Paris"),
    ("Once upon a time", " there was a small village by the sea."),
]
PROMPTS = ["The weather today is", "My favourite food is", "The old house on the hill"]
GREEDY = {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}


def _ll(pairs):  # type: ignore[no-untyped-def]
    return [Instance("loglikelihood", {}, args, i) for i, args in enumerate(pairs)]


def _gen(gen_kwargs):  # type: ignore[no-untyped-def]
    return [Instance("generate_until", {}, (p, gen_kwargs), 0) for p in PROMPTS]


@pytest.fixture(scope="module")
def steer_dir(tmp_path_factory, tiny_llama_dir):  # type: ignore[no-untyped-def]
    model, _ = load_model(str(tiny_llama_dir), "cpu")
    torch.manual_seed(0)
    art = make_artifact(
        model, "steer", Site("resid_post", 1), {"strength": 8.0}, vector=torch.randn(32)
    )
    return save_artifact(art, tmp_path_factory.mktemp("steer") / "art")


@pytest.fixture(scope="module")
def plain(tiny_llama_dir):  # type: ignore[no-untyped-def]
    return HFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def edited(tiny_llama_dir, steer_dir):  # type: ignore[no-untyped-def]
    return EditedHFLM(pretrained=str(tiny_llama_dir), intervention=str(steer_dir), batch_size=2)


def test_no_intervention_is_bit_identical_to_hf(tiny_llama_dir, plain) -> None:
    bare = EditedHFLM(pretrained=str(tiny_llama_dir), batch_size=2)
    assert bare.loglikelihood(_ll(PAIRS)) == plain.loglikelihood(_ll(PAIRS))
    assert bare.generate_until(_gen(GREEDY)) == plain.generate_until(_gen(GREEDY))


def test_paired_generation_with_nothing_attached_warns_once_and_generates_each_prompt_once(
    tiny_llama_dir, plain, caplog, monkeypatch
) -> None:
    bare = EditedHFLM(pretrained=str(tiny_llama_dir), batch_size=2)
    generated = []
    original = HFLM.generate_until

    def counting(self, requests, disable_tqdm=False):  # type: ignore[no-untyped-def]
        generated.extend(r.args[0] for r in requests)
        return original(self, requests, disable_tqdm)

    monkeypatch.setattr(HFLM, "generate_until", counting)
    paired = _gen(baseline_generation(GREEDY)) + _gen(GREEDY)
    with caplog.at_level("WARNING", logger="ce_bench.models.edited_hf"):
        texts = bare.generate_until(paired)
        bare.generate_until(paired)
    assert sorted(generated) == sorted(PROMPTS * 2)  # once per prompt per call, not twice
    expected = plain.generate_until(_gen(GREEDY))
    assert texts == expected + expected
    warnings = [r for r in caplog.records if "0 by construction" in r.getMessage()]
    assert len(warnings) == 1


def test_switched_off_is_bit_identical_to_hf_and_on_differs(edited, plain) -> None:
    with edited.switch.set(False):
        assert edited.loglikelihood(_ll(PAIRS)) == plain.loglikelihood(_ll(PAIRS))
        assert edited.generate_until(_gen(GREEDY)) == plain.generate_until(_gen(GREEDY))
    assert edited.loglikelihood(_ll(PAIRS)) != plain.loglikelihood(_ll(PAIRS))


def test_paired_requests_reach_off_and_on_in_one_call(edited, plain) -> None:
    mixed = _ll([baseline_loglikelihood(p) for p in PAIRS] + PAIRS)
    scores = edited.loglikelihood(mixed)
    assert scores[: len(PAIRS)] == plain.loglikelihood(_ll(PAIRS))
    assert scores[len(PAIRS) :] == edited.loglikelihood(_ll(PAIRS))
    texts = edited.generate_until(_gen(baseline_generation(GREEDY)) + _gen(GREEDY))
    assert texts[: len(PROMPTS)] == plain.generate_until(_gen(GREEDY))
    assert texts[len(PROMPTS) :] == edited.generate_until(_gen(GREEDY))


def test_strength_override_and_fingerprint(tiny_llama_dir, steer_dir, edited) -> None:
    weaker = EditedHFLM(pretrained=str(tiny_llama_dir), intervention=str(steer_dir), strength=0.0)
    assert weaker.fingerprint != edited.fingerprint
    info = weaker.get_model_info()["ce_bench"]
    assert info["interventions"][0]["params"]["strength"] == 0.0
    with weaker.switch.set(False):
        off = weaker.loglikelihood(_ll(PAIRS))
    assert weaker.loglikelihood(_ll(PAIRS)) == off  # k = 0 is the identity


def test_bad_model_args_fail_before_the_model_is_used(tiny_llama_dir, steer_dir, tmp_path) -> None:
    with pytest.raises(ArtifactError, match="artifact directory not found"):
        EditedHFLM(pretrained=str(tiny_llama_dir), intervention=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="strength=.* gives 2 values for 1 interventions"):
        EditedHFLM(pretrained=str(tiny_llama_dir), intervention=str(steer_dir), strength="1+2")
    with pytest.raises(ArtifactError, match="positions must be one of"):
        EditedHFLM(pretrained=str(tiny_llama_dir), intervention=str(steer_dir), positions="middle")


def test_unknown_model_args_are_refused_before_loading_with_the_closest_name(tmp_path) -> None:
    missing = str(tmp_path / "no-model")  # loading it would fail: the check must come first
    with pytest.raises(ValueError, match=r"unknown model_args 'lr2' \(did you mean 'lr'\?\)") as e:
        EditedHFLM(pretrained=missing, editor="ft", edits="zsre", lr2=1)
    assert "The ft editor's parameters: layer" in str(e.value)
    with pytest.raises(ValueError, match=r"'lr' \(a parameter of editor=.*ft.*: name the editor\)"):
        EditedHFLM(pretrained=missing, lr=1e-4)
    with pytest.raises(ValueError, match=r"'strenght' \(did you mean 'strength'\?\)"):
        EditedHFLM(pretrained=missing, strenght=2)


def test_model_args_for_hflm_and_from_pretrained_still_pass_through(tiny_llama_dir) -> None:
    lm = EditedHFLM(
        pretrained=str(tiny_llama_dir), attn_implementation="eager", max_length=64, batch_size=1
    )
    assert lm.model.config._attn_implementation == "eager" and lm.max_length == 64


def test_two_interventions_joined_by_plus_both_apply(
    tiny_llama_dir, steer_dir, edited, plain
) -> None:
    both = EditedHFLM(
        pretrained=str(tiny_llama_dir), intervention=f"{steer_dir}+{steer_dir}", strength="4+4"
    )
    assert len(both.edits.interventions) == 2
    two_halves = [ll for ll, _ in both.loglikelihood(_ll(PAIRS))]
    one_whole = [ll for ll, _ in edited.loglikelihood(_ll(PAIRS))]  # 4 + 4 = 8, the artifact's k
    assert two_halves == pytest.approx(one_whole, abs=1e-3)


def test_shared_unedited_answers_are_generated_once(tiny_llama_dir, steer_dir, plain) -> None:
    memo: dict[str, str] = {}
    paired = _gen(baseline_generation(GREEDY)) + _gen(GREEDY)
    first = EditedHFLM(
        pretrained=str(tiny_llama_dir), intervention=str(steer_dir), unedited_answers=memo
    )
    assert first.generate_until(paired)[: len(PROMPTS)] == plain.generate_until(_gen(GREEDY))
    assert len(memo) == len(PROMPTS)
    second = EditedHFLM(
        pretrained=first.model,
        tokenizer=first.tokenizer,
        intervention=str(steer_dir),
        strength=2.0,
        unedited_answers=memo,
    )
    generated: list[int] = []
    original = second._model_generate

    def counting(context, *args, **kwargs):  # type: ignore[no-untyped-def]
        generated.append(context.shape[0])
        return original(context, *args, **kwargs)

    second._model_generate = counting  # type: ignore[method-assign]
    texts = second.generate_until(paired)
    assert sum(generated) == len(PROMPTS)  # only the ON half ran
    assert texts[: len(PROMPTS)] == plain.generate_until(_gen(GREEDY))
    assert texts[len(PROMPTS) :] != texts[: len(PROMPTS)]


def test_positions_last_edits_only_the_token_that_predicts_a_continuation(
    tiny_llama_dir, steer_dir
) -> None:
    last = EditedHFLM(
        pretrained=str(tiny_llama_dir), intervention=str(steer_dir), positions="last", batch_size=3
    )
    scores = [ll for ll, _ in last.loglikelihood(_ll(PAIRS))]
    vector = 8.0 * load_artifact(steer_dir).tensors["vector"]
    expected = []
    for context, continuation in PAIRS:
        context_enc, continuation_enc = last._encode_pair(context, continuation)
        row = torch.tensor([(context_enc + continuation_enc)[:-1]])
        at = len(context_enc) - 1

        def add_at_last_context_token(h: torch.Tensor, at: int = at) -> torch.Tensor:
            out = h.clone()
            out[:, at] += vector
            return out

        handle = attach_hook(last.model, Site("resid_post", 1), add_at_last_context_token)
        try:
            with last.switch.set(False), torch.no_grad():
                logp = torch.log_softmax(last.model(row).logits[0, at:], dim=-1)
        finally:
            handle.remove()
        expected.append(float(logp.gather(-1, torch.tensor(continuation_enc)[:, None]).sum()))
    assert scores == pytest.approx(expected, abs=1e-4)
    last.close()
    everywhere = [
        ll
        for ll, _ in EditedHFLM(
            pretrained=last.model, tokenizer=last.tokenizer, intervention=str(steer_dir)
        ).loglikelihood(_ll(PAIRS))
    ]
    assert scores != pytest.approx(everywhere, abs=1e-4)


def test_positions_last_edits_every_token_of_a_rolling_text(tiny_llama_dir, steer_dir) -> None:
    texts = [Instance("loglikelihood_rolling", {}, ("The old house on the hill was quiet.",), 0)]
    last = EditedHFLM(pretrained=str(tiny_llama_dir), intervention=str(steer_dir), positions="last")
    scores = last.loglikelihood_rolling(texts)
    last.close()
    everywhere = EditedHFLM(
        pretrained=last.model, tokenizer=last.tokenizer, intervention=str(steer_dir)
    )
    assert scores == everywhere.loglikelihood_rolling(texts)


def test_a_request_for_a_target_turns_on_only_that_targets_artifact(
    tiny_llama_dir, tmp_path
) -> None:
    model, _ = load_model(str(tiny_llama_dir), "cpu")
    torch.manual_seed(3)
    paths = {}
    for target in ("A", "B"):
        art = make_artifact(
            model, "steer", Site("resid_post", 1), {"strength": 8.0}, vector=torch.randn(32)
        )
        art.provenance = dataclasses.replace(art.provenance, report={"target": target})
        paths[target] = save_artifact(art, tmp_path / target)
    both = EditedHFLM(pretrained=model, intervention=f"{paths['A']}+{paths['B']}")
    for_a = both.loglikelihood(_ll([for_target(p, "A") for p in PAIRS]))
    together = both.loglikelihood(_ll(PAIRS))
    both.close()
    only_a = EditedHFLM(pretrained=model, intervention=str(paths["A"]))
    assert for_a == only_a.loglikelihood(_ll(PAIRS))
    assert for_a != together  # untagged requests get both edits
    with pytest.raises(ValueError, match="no intervention was located for target 'C'"):
        only_a.loglikelihood(_ll([for_target(PAIRS[0], "C")]))
    only_a.close()


def test_a_run_records_its_cost_split_into_its_edited_and_unedited_halves(
    tiny_llama_dir, steer_dir
) -> None:
    lm = EditedHFLM(pretrained=str(tiny_llama_dir), intervention=str(steer_dir), batch_size=3)
    paired = _gen(baseline_generation(GREEDY)) + _gen(GREEDY)
    texts = lm.generate_until(paired)
    lm.loglikelihood(_ll([baseline_loglikelihood(p) for p in PAIRS] + PAIRS))
    cost = lm.get_model_info()["ce_bench"]["cost"]
    on, off = cost["edited"], cost["unedited"]
    assert on["passes"] == off["passes"] > 0  # the same requests, in batches of the same sizes
    assert cost["forward_passes"] == on["passes"] + off["passes"]
    assert on["tokens"] == off["tokens"]  # greedy, max_gen_toks with no stop hit: same lengths
    assert cost["tokens_generated"] == 2 * len(PROMPTS) * GREEDY["max_gen_toks"]
    assert cost["overhead"] == pytest.approx(
        (on["seconds"] / on["tokens"]) / (off["seconds"] / off["tokens"]), rel=1e-2
    )
    assert cost["peak_mb"] > 0 and cost["wall_seconds"] > 0 and cost["edit_seconds"] is None
    assert cost["locate_seconds"] is None  # the test's artifact was built, not located
    assert len(texts) == 2 * len(PROMPTS)
    # the next run starts from zero; the switched-off half alone has no overhead to report
    with lm.switch.set(False):
        lm.loglikelihood(_ll(PAIRS))
    again = lm.get_model_info()["ce_bench"]["cost"]
    assert again["edited"]["passes"] == 0 and again["overhead"] is None
    lm.close()
    assert not lm.model._forward_hooks and not lm.model._forward_pre_hooks


def test_a_located_artifact_records_how_long_locating_took(tiny_llama_dir, tmp_path) -> None:
    from ce_bench.locate.diffmean import DiffmeanConfig, locate_diffmean

    model, tokenizer = load_model(str(tiny_llama_dir), "cpu")
    config = DiffmeanConfig(layer=1)
    artifact = locate_diffmean(model, tokenizer, ["good day"], ["bad day"], config, model_name="t")
    save_artifact(artifact, tmp_path / "art")
    assert load_artifact(tmp_path / "art").provenance.seconds > 0
    lm = EditedHFLM(pretrained=str(tiny_llama_dir), intervention=str(tmp_path / "art"))
    cost = lm.get_model_info()["ce_bench"]["cost"]
    assert cost["locate_seconds"] == load_artifact(tmp_path / "art").provenance.seconds
