"""Each intervention's arithmetic against an explicit computation on tiny random models."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from ce_bench.interventions import build_intervention
from ce_bench.sites import Site, module_path
from tests.conftest import tiny_model
from tests.helpers import attached, make_artifact, recording, tokens

LAYER = 1
ARCHS = ["llama", "gemma2", "gpt2"]


def _edited_and_plain(model, artifact, site, ids=None):  # type: ignore[no-untyped-def]
    """The activation at `site` with the switch on and off, from one attachment."""
    ids = tokens() if ids is None else ids
    with attached(model, artifact) as switch, recording(model, site) as seen, torch.no_grad():
        model(ids)
        with switch.set(False):
            model(ids)
    return seen[0], seen[1]


@pytest.mark.parametrize("site_name", ["resid_post", "attn_out"])
@pytest.mark.parametrize("arch", ARCHS)
def test_steer_adds_k_times_v_at_the_site(arch: str, site_name: str) -> None:
    model = tiny_model(arch)
    site = Site(site_name, LAYER)
    v = torch.randn(32)
    edited, plain = _edited_and_plain(
        model, make_artifact(model, "steer", site, {"strength": 3.0}, vector=v), site
    )
    torch.testing.assert_close(edited, plain + 3.0 * v, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_directional_ablation_removes_the_unit_direction(arch: str) -> None:
    model = tiny_model(arch)
    site = Site("resid_post", LAYER)
    r = torch.randn(32)
    art = make_artifact(model, "directional_ablation", site, {}, direction=5 * r)
    edited, plain = _edited_and_plain(model, art, site)
    unit = r / r.norm()
    torch.testing.assert_close(edited, plain - (plain @ unit)[..., None] * unit, rtol=0, atol=1e-5)
    assert (edited @ unit).abs().max() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_neuron_scale_multiplies_only_the_chosen_mlp_neurons(arch: str) -> None:
    model = tiny_model(arch)
    site = Site("mlp_act", LAYER)
    neurons = torch.tensor([0, 5, 17])
    art = make_artifact(model, "neuron_scale", site, {"strength": 0.25}, neurons=neurons)
    edited, plain = _edited_and_plain(model, art, site)
    expected = plain.clone()
    expected[..., neurons] *= 0.25
    assert edited.shape[-1] == (48 if arch != "gpt2" else 128)
    torch.testing.assert_close(edited, expected, rtol=0, atol=0)


def _random_sae(tmp_path, hook_name: str, normalize: str = "none"):  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64, normalize_activations=normalize))
    sae.cfg.metadata.hook_name = hook_name
    with torch.no_grad():
        sae.W_dec.normal_(0, 0.3)
        sae.W_enc.normal_(0, 0.3)
        sae.b_enc[7] = -1e4  # feature 7 never fires: clamping it to 0 must change nothing
    path = tmp_path / f"{hook_name.replace('.', '_')}_{normalize}"
    sae.save_model(path)
    return sae, path


@pytest.mark.parametrize(
    ("arch", "hook_name"),
    [
        ("llama", f"blocks.{LAYER}.hook_resid_post"),
        ("llama", f"model.layers.{LAYER}"),
        ("gemma2", f"blocks.{LAYER}.hook_resid_post"),
        ("gpt2", f"transformer.h.{LAYER}"),
    ],
)
def test_sae_clamp_replace_decodes_the_clamped_code(tmp_path, arch: str, hook_name: str) -> None:
    model = tiny_model(arch)
    site = Site("resid_post", LAYER)
    sae, path = _random_sae(tmp_path, hook_name)
    params = {"feature": 2, "strength": 9.0, "mode": "replace", "sae_path": str(path)}
    edited, plain = _edited_and_plain(model, make_artifact(model, "sae_clamp", site, params), site)
    with torch.no_grad():
        codes = sae.encode(plain)
        codes[..., 2] = 9.0
        expected = sae.decode(codes)
    torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-5)


def test_sae_clamp_delta_keeps_the_error_term(tmp_path) -> None:
    model = tiny_model("llama")
    site = Site("resid_post", LAYER)
    sae, path = _random_sae(tmp_path, f"blocks.{LAYER}.hook_resid_post")
    unchanged = {"feature": 7, "strength": 0.0, "mode": "delta", "sae_path": str(path)}
    edited, plain = _edited_and_plain(
        model, make_artifact(model, "sae_clamp", site, unchanged), site
    )
    assert torch.equal(edited, plain)  # C = c_k: identity, reconstruction error kept
    replaced = {**unchanged, "mode": "replace"}
    edited, plain = _edited_and_plain(
        model, make_artifact(model, "sae_clamp", site, replaced), site
    )
    assert not torch.allclose(edited, plain, atol=1e-3)  # the paper's mode drops the error
    shifted = {**unchanged, "strength": 4.0}
    edited, plain = _edited_and_plain(model, make_artifact(model, "sae_clamp", site, shifted), site)
    torch.testing.assert_close(edited, plain + 4.0 * sae.W_dec[7].detach(), rtol=1e-5, atol=1e-5)


def test_sae_clamp_delta_undoes_run_time_normalisation(tmp_path) -> None:
    """With constant_norm_rescale the SAE sees h scaled to norm sqrt(d); the delta scales back."""
    model = tiny_model("llama")
    site = Site("resid_post", LAYER)
    sae, path = _random_sae(tmp_path, f"blocks.{LAYER}.hook_resid_post", "constant_norm_rescale")
    params = {"feature": 7, "strength": 4.0, "mode": "delta", "sae_path": str(path)}
    edited, plain = _edited_and_plain(model, make_artifact(model, "sae_clamp", site, params), site)
    scale = plain.norm(dim=-1, keepdim=True) / 32**0.5
    expected = plain + 4.0 * scale * sae.W_dec[7].detach()
    torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_strength_and_removal_are_the_identity(arch: str) -> None:
    model = tiny_model(arch)
    ids = tokens()
    with torch.no_grad():
        reference = model(ids).logits
        art = make_artifact(
            model, "steer", Site("resid_post", 0), {"strength": 0.0}, vector=torch.randn(32)
        )
        with attached(model, art):
            assert torch.equal(model(ids).logits, reference)
        art = make_artifact(
            model, "steer", Site("resid_post", 0), {"strength": 2.0}, vector=torch.randn(32)
        )
        with attached(model, art):
            assert not torch.equal(model(ids).logits, reference)
        assert torch.equal(model(ids).logits, reference)  # detached: the model is unedited again


def test_switch_on_off_on_gives_on_equal_on_and_off_equal_plain() -> None:
    model = tiny_model("llama")
    ids = tokens()
    art = make_artifact(
        model, "steer", Site("resid_post", 1), {"strength": 2.0}, vector=torch.randn(32)
    )
    with torch.no_grad():
        plain = model(ids).logits
        with attached(model, art) as switch:
            first_on = model(ids).logits
            with switch.set(False):
                off = model(ids).logits
            second_on = model(ids).logits
    assert torch.equal(first_on, second_on)
    assert torch.equal(off, plain)
    assert not torch.equal(first_on, plain)


@pytest.mark.parametrize("arch", ARCHS)
def test_weight_delta_gives_the_edited_weights_on_and_the_exact_originals_off(arch: str) -> None:
    model = tiny_model(arch)
    ids = tokens()
    site = Site("mlp_act", LAYER)
    weight = model.get_submodule(module_path(model, site)).weight
    original = weight.detach().clone()
    delta = 0.1 * torch.randn_like(original)
    art = make_artifact(model, "weight_delta", site, {"strength": 2.0}, delta=delta)
    with torch.no_grad():
        plain = model(ids).logits
        weight.add_(2.0 * delta)
        expected = model(ids).logits
        weight.copy_(original)
        with attached(model, art) as switch:
            on = model(ids).logits
            with switch.set(False):
                off = model(ids).logits
                assert torch.equal(weight, original)
            again = model(ids).logits
        assert torch.equal(weight, original)  # detached: the original tensor is back
    torch.testing.assert_close(on, expected, rtol=0, atol=1e-6)
    assert torch.equal(on, again)
    assert torch.equal(off, plain)


def test_sae_clamp_leaves_attention_sink_positions_alone(tmp_path) -> None:
    """A first-token residual 100x larger than the rest is outside what an SAE reconstructs."""
    model = tiny_model("llama")
    site = Site("resid_post", LAYER)
    _, path = _random_sae(tmp_path, f"blocks.{LAYER}.hook_resid_post")
    params = {"feature": 2, "strength": 9.0, "mode": "replace", "sae_path": str(path)}
    clamp = build_intervention(make_artifact(model, "sae_clamp", site, params), model)
    clamp.prepare(torch.device("cpu"), torch.float32)
    h = torch.randn(2, 5, 32)
    h[:, 0] *= 100
    edited = clamp.edit(h)
    assert torch.equal(edited[:, 0], h[:, 0])
    assert not torch.allclose(edited[:, 1:], h[:, 1:])
