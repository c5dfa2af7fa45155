"""`positions`: which tokens an edit touches, including one-token steps under the KV cache."""

from __future__ import annotations

import torch

from ce_bench.interventions import track_cache_offset
from ce_bench.sites import Site
from tests.conftest import tiny_model
from tests.helpers import attached, make_artifact, tokens

SITE = Site("resid_post", 1)


def _generate(positions: str, use_cache: bool) -> torch.Tensor:
    model = tiny_model("llama")
    torch.manual_seed(5)
    art = make_artifact(
        model, "steer", SITE, {"strength": 4.0, "positions": positions}, vector=torch.randn(32)
    )
    ids = tokens(n=6, batch=2)
    with attached(model, art) as switch, torch.no_grad():
        handle = track_cache_offset(model, switch)
        with switch.generating(ids.shape[1]):
            out = model.generate(
                ids, max_new_tokens=8, do_sample=False, use_cache=use_cache, pad_token_id=0
            )
        handle.remove()
    return out


def test_generated_mode_is_the_same_with_and_without_kv_cache() -> None:
    assert torch.equal(_generate("generated", True), _generate("generated", False))


def test_prompt_and_last_modes_are_the_same_with_and_without_kv_cache() -> None:
    for positions in ("prompt", "last"):
        assert torch.equal(_generate(positions, True), _generate(positions, False))


def test_each_mode_edits_a_different_generation() -> None:
    outputs = {p: _generate(p, True) for p in ("all", "prompt", "generated", "last")}
    model = tiny_model("llama")
    with torch.no_grad():
        plain = model.generate(
            tokens(n=6, batch=2), max_new_tokens=8, do_sample=False, pad_token_id=0
        )
    for name, out in outputs.items():
        assert not torch.equal(out, plain), name
    assert not torch.equal(outputs["generated"], outputs["prompt"])


def test_generation_under_installed_transformers_reports_each_steps_cache_offset() -> None:
    """The offset must come from the cache generate() really passes (its name changed in
    transformers 5.24); a hook that misses it sees 0 on every one-token step."""
    from ce_bench.interventions import Switch

    model, switch, seen = tiny_model("llama"), Switch(), []
    handle = track_cache_offset(model, switch)
    model.model.register_forward_pre_hook(lambda *_: seen.append(switch.past_length))
    with torch.no_grad():
        model.generate(tokens(n=6, batch=2), max_new_tokens=4, do_sample=False, pad_token_id=0)
    handle.remove()
    assert seen == [0, 6, 7, 8]


def test_cache_offset_is_seen_when_the_cache_is_passed_positionally_or_by_either_name() -> None:
    from ce_bench.interventions import Switch
    from ce_bench.kv_cache import cache_kwargs, returned_cache

    model, switch = tiny_model("llama"), Switch()
    ids = tokens(n=6, batch=1)
    with torch.no_grad():
        cache = returned_cache(model(ids, use_cache=True, **cache_kwargs(model, None)))
        handle = track_cache_offset(model, switch)
        model(ids[:, :1], None, None, cache)  # input_ids, attention_mask, position_ids, cache
        assert switch.past_length == 6
        for name in ("cache", "past_key_values"):
            switch.past_length = -1
            model(ids[:, :1], use_cache=True, **{name: cache})
            assert switch.past_length >= 6, name
        handle.remove()


def test_masks_select_prompt_generated_and_last_positions() -> None:
    from ce_bench.interventions import Switch

    switch = Switch()
    with switch.generating(prompt_length=4):
        switch.past_length = 0
        assert (
            switch.position_mask("prompt", 4, torch.device("cpu")).squeeze(1).tolist() == [True] * 4
        )
        assert switch.position_mask("last", 4, torch.device("cpu")).squeeze(1).tolist() == [
            False,
            False,
            False,
            True,
        ]
        switch.past_length = 5  # a one-token step at absolute position 5
        assert switch.position_mask("generated", 1, torch.device("cpu")).squeeze(1).tolist() == [
            True
        ]
        assert switch.position_mask("prompt", 1, torch.device("cpu")).squeeze(1).tolist() == [False]
    assert switch.position_mask("all", 3, torch.device("cpu")) is None
    assert not switch.position_mask("generated", 3, torch.device("cpu")).any()  # scoring call
