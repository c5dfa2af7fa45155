"""Hook sites and layer naming for Hugging Face decoders: the one place that knows module paths.

A site is a named place in the forward pass of one layer:

- `resid_post`: the residual stream after block L (the decoder layer's output);
- `mlp_act`: the FFN intermediate neurons, i.e. the input of the down projection;
- `attn_out`: the attention module's output (before it is added to the residual stream).

Module paths per architecture are data (`LAYOUTS`), not branches. SAE hook names in
TransformerLens form (`blocks.12.hook_resid_post`) and in HF form (`model.layers.12`) both map
onto these sites.

Example:
    >>> site = Site("resid_post", 12)
    >>> handle = attach_hook(model, site, lambda h: h + v)
    >>> handle.remove()
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

SiteName = Literal["resid_post", "mlp_act", "attn_out"]
SITE_NAMES: tuple[str, ...] = get_args(SiteName)


class SiteError(ValueError):
    """A site that does not exist on the model at hand."""


@dataclass(frozen=True)
class Layout:
    """Where a decoder architecture keeps its blocks, attention and FFN down projection."""

    layers: str  # path of the ModuleList of decoder blocks, from the CausalLM root
    attn: str  # attention module, relative to a block
    down_proj: str  # FFN output projection, relative to a block; its input is `mlp_act`


_LLAMA_LIKE = Layout(layers="model.layers", attn="self_attn", down_proj="mlp.down_proj")

LAYOUTS: dict[str, Layout] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gpt2": Layout(layers="transformer.h", attn="attn", down_proj="mlp.c_proj"),
    "gpt_neox": Layout(layers="gpt_neox.layers", attn="attention", down_proj="mlp.dense_4h_to_h"),
}

# TransformerLens hook names of the sites (the form Gemma Scope and most sae-lens releases use).
_TL_HOOKS: dict[str, SiteName] = {
    "hook_resid_post": "resid_post",
    "mlp.hook_post": "mlp_act",
    "hook_attn_out": "attn_out",
}
_TL_PATTERN = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Site:
    """A named site at one layer (0-based, as in Hugging Face module paths)."""

    name: SiteName
    layer: int

    def __post_init__(self) -> None:
        if self.name not in SITE_NAMES:
            raise SiteError(f"unknown site {self.name!r}; known sites: {', '.join(SITE_NAMES)}")
        if not isinstance(self.layer, int) or self.layer < 0:
            raise SiteError(f"layer must be a non-negative integer, got {self.layer!r}")

    def __str__(self) -> str:
        return f"{self.name}@{self.layer}"


@dataclass(frozen=True)
class ModelDims:
    """The sizes that artifacts are checked against."""

    model_type: str
    num_layers: int
    hidden_size: int
    d_mlp: int


def model_dims(model: nn.Module) -> ModelDims:
    """Read layer count, residual width and FFN width from a model's config."""
    cfg = model.config
    hidden = cfg.hidden_size
    d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    return ModelDims(cfg.model_type, cfg.num_hidden_layers, hidden, d_mlp)


def layout(model: nn.Module) -> Layout:
    """The module layout of `model`'s architecture, or an error listing the supported ones."""
    model_type = model.config.model_type
    if model_type not in LAYOUTS:
        raise SiteError(
            f"architecture {model_type!r} has no site table; supported:"
            f" {', '.join(sorted(LAYOUTS))} (add a Layout to ce_bench/sites.py LAYOUTS)"
        )
    return LAYOUTS[model_type]


def site_width(model: nn.Module, site: Site) -> int:
    """Size of the last dimension of the activation at `site`."""
    return width_at(model_dims(model), site)


def width_at(dims: ModelDims, site: Site) -> int:
    """Size of the last dimension of the activation at `site` of a model of sizes `dims` (what
    an artifact's manifest records, so it can be checked without the model)."""
    return dims.d_mlp if site.name == "mlp_act" else dims.hidden_size


def module_path(model: nn.Module, site: Site) -> str:
    """Dotted path of the module whose output (or, for `mlp_act`, input) is the site."""
    n_layers = model_dims(model).num_layers
    if site.layer >= n_layers:
        raise SiteError(
            f"layer {site.layer} out of range: the model has {n_layers} layers (0-{n_layers - 1})"
        )
    lay = layout(model)
    block = f"{lay.layers}.{site.layer}"
    return {"resid_post": block, "attn_out": f"{block}.{lay.attn}"}.get(
        site.name, f"{block}.{lay.down_proj}"
    )


def site_from_hook_name(model: nn.Module, hook_name: str) -> Site:
    """Map an SAE's hook name, in TransformerLens or HF module form, to a site of `model`."""
    match = _TL_PATTERN.match(hook_name)
    if match and match.group(2) in _TL_HOOKS:
        return Site(_TL_HOOKS[match.group(2)], int(match.group(1)))
    for layer in range(model_dims(model).num_layers):
        for name in ("resid_post", "attn_out"):  # sites that are a module's output
            if module_path(model, Site(name, layer)) == hook_name:
                return Site(name, layer)
    raise SiteError(
        f"hook name {hook_name!r} does not map to a ce-bench site; expected"
        f" blocks.L.hook_resid_post, blocks.L.mlp.hook_post, blocks.L.hook_attn_out"
        f" or an HF layer path such as"
        f" {module_path(model, Site('resid_post', 0))!r}"
    )


def site_device(model: nn.Module, site: Site) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the weights at `site`'s layer (layers may sit on different GPUs)."""
    param = next(
        model.get_submodule(module_path(model, Site("resid_post", site.layer))).parameters()
    )
    return param.device, param.dtype


class StopForward(Exception):
    """Raised by a hook that has read what it needs: the layers after it are not run (catch it
    around the forward pass with `contextlib.suppress(StopForward)`)."""


def attach_hook(
    model: nn.Module, site: Site, edit: Callable[[torch.Tensor], torch.Tensor | None]
) -> RemovableHandle:
    """Register `edit(h) -> new h | None` at `site`; None leaves the activation untouched.

    Returns the handle; `handle.remove()` detaches it. Module paths never change (hook, don't wrap).
    """
    module = model.get_submodule(module_path(model, site))
    if site.name == "mlp_act":
        return module.register_forward_pre_hook(_input_hook(edit))
    return module.register_forward_hook(_output_hook(edit))


def _input_hook(edit: Callable[[torch.Tensor], torch.Tensor | None]):  # type: ignore[no-untyped-def]
    def hook(module: nn.Module, args: tuple):  # type: ignore[no-untyped-def]
        new = edit(args[0])
        return None if new is None else (new, *args[1:])

    return hook


def _output_hook(edit: Callable[[torch.Tensor], torch.Tensor | None]):  # type: ignore[no-untyped-def]
    def hook(module: nn.Module, args: tuple, output):  # type: ignore[no-untyped-def]
        hidden = output[0] if isinstance(output, tuple) else output
        new = edit(hidden)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def out_in(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """`weight` (or a tensor shaped like it) of a linear `module` as (out, in): nn.Linear stores
    that; GPT-2's Conv1D computes x @ W and stores the transpose. Its own inverse."""
    return weight if isinstance(module, nn.Linear) else weight.T
