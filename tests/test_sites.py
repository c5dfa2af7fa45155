"""Hook sites resolve by name on every supported decoder; SAE hook names map onto them."""

from __future__ import annotations

import pytest

from ce_bench.sites import Site, SiteError, module_path, site_from_hook_name, site_width
from tests.conftest import TINY_BUILDERS, tiny_model


@pytest.mark.parametrize("arch", sorted(TINY_BUILDERS))
def test_every_site_resolves_to_a_module_of_each_architecture(arch: str) -> None:
    model = tiny_model(arch)
    for name in ("resid_post", "mlp_act", "attn_out"):
        model.get_submodule(module_path(model, Site(name, 2)))  # raises if the path is wrong


@pytest.mark.parametrize(
    ("hook_name", "expected"),
    [
        ("blocks.2.hook_resid_post", Site("resid_post", 2)),
        ("blocks.0.mlp.hook_post", Site("mlp_act", 0)),
        ("blocks.1.hook_attn_out", Site("attn_out", 1)),
        ("model.layers.2", Site("resid_post", 2)),
        ("model.layers.1.self_attn", Site("attn_out", 1)),
    ],
)
def test_sae_hook_names_in_transformerlens_and_hf_form_map_to_sites(hook_name, expected) -> None:
    assert site_from_hook_name(tiny_model("llama"), hook_name) == expected


def test_unknown_hook_name_layer_and_site_are_errors_that_name_them() -> None:
    model = tiny_model("llama")
    with pytest.raises(SiteError, match="blocks.1.hook_resid_pre"):
        site_from_hook_name(model, "blocks.1.hook_resid_pre")
    with pytest.raises(SiteError, match="layer 3 out of range: the model has 3 layers"):
        module_path(model, Site("resid_post", 3))
    with pytest.raises(SiteError, match="unknown site 'mlp_out'"):
        Site("mlp_out", 1)  # type: ignore[arg-type]


def test_site_width_is_ffn_width_for_mlp_act() -> None:
    model = tiny_model("llama")
    assert site_width(model, Site("mlp_act", 0)) == 48
    assert site_width(model, Site("resid_post", 0)) == 32
