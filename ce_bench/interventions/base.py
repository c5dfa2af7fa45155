"""The intervention core: a shared on/off `Switch`, a registry of kinds, and activation hooks.

Hooks are attached once when a model is built; each request only flips `Switch.enabled`.
With the switch off every hook returns None, so the forward pass is the unedited one bit for bit.

Each kind is a subclass of `ActivationIntervention` with a frozen `Params` dataclass (typed,
checked in `__post_init__`) and an `edit(h)` method; registering it is one decorator.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ce_bench.artifacts import Artifact, ArtifactError, save_artifact
from ce_bench.kv_cache import cache_length, cache_reader
from ce_bench.sites import ModelDims, Site, attach_hook, model_dims, site_device, width_at

Positions = Literal["all", "prompt", "generated", "last"]
POSITIONS: tuple[str, ...] = get_args(Positions)


class Switch:
    """On/off state shared by every hook of one model, plus where the current tokens sit.

    `prompt_length` is set while generating (the left-padded prompt width); `past_length` is the
    number of tokens already in the KV cache for the forward pass under way, so one-token
    generation steps know their absolute position. `last_prompt` is set while scoring
    (context, continuation) rows: per row, the index of the last context token, which predicts
    the continuation, and `row_lengths` the number of real (unpadded) tokens. `rolling` is set
    while scoring whole texts (perplexity), which have no prompt: there `last` means every
    position. `attention_mask` is the mask of the forward pass under way, when it has one.
    """

    def __init__(self) -> None:
        self.enabled = True
        self.prompt_length: int | None = None
        self.past_length = 0
        self.last_prompt: torch.Tensor | None = None
        self.row_lengths: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None
        self.rolling = False
        self.target: str | None = None  # only interventions for this target (or none) are on

    def on_for(self, intervention: Intervention) -> bool:
        """Whether `intervention` edits the forward pass under way."""
        mine = intervention.target
        return self.enabled and (self.target is None or mine is None or mine == self.target)

    @contextmanager
    def select(self, target: str | None) -> Iterator[None]:
        previous, self.target = self.target, target
        try:
            yield
        finally:
            self.target = previous

    @contextmanager
    def set(self, enabled: bool) -> Iterator[None]:
        previous, self.enabled = self.enabled, enabled
        try:
            yield
        finally:
            self.enabled = previous

    @contextmanager
    def generating(self, prompt_length: int) -> Iterator[None]:
        self.prompt_length = prompt_length
        try:
            yield
        finally:
            self.prompt_length = None

    @contextmanager
    def scoring(
        self, last_prompt: torch.Tensor, row_lengths: torch.Tensor | None = None
    ) -> Iterator[None]:
        """Rows of (context, continuation) whose last context tokens sit at `last_prompt`, each
        `row_lengths` tokens long before right padding."""
        self.last_prompt, self.row_lengths = last_prompt, row_lengths
        try:
            yield
        finally:
            self.last_prompt = self.row_lengths = None

    def token_mask(self, batch: int, seq_len: int, device: torch.device) -> torch.Tensor | None:
        """(batch, seq_len) True at real tokens of the forward pass under way, None if every
        token is real (or the padding is unknown)."""
        if self.attention_mask is not None and self.attention_mask.shape[0] == batch:
            return self.attention_mask[:, -seq_len:].to(device=device, dtype=torch.bool)
        if self.row_lengths is not None and self.row_lengths.shape[0] == batch:
            lengths = self.row_lengths.to(device)
            return torch.arange(seq_len, device=device)[None, :] < lengths[:, None]
        return None

    @contextmanager
    def scoring_rolling(self) -> Iterator[None]:
        self.rolling = True
        try:
            yield
        finally:
            self.rolling = False

    def position_mask(self, positions: Positions, seq_len: int, device: torch.device):  # type: ignore[no-untyped-def]
        """Boolean mask of the positions to edit, (seq_len, 1) or per row (batch, seq_len, 1);
        None means all of them."""
        if positions == "all":
            return None
        if self.prompt_length is not None:
            absolute = torch.arange(seq_len, device=device) + self.past_length
            boundary = torch.tensor(self.prompt_length - 1, device=device)
        elif self.last_prompt is not None:
            absolute = torch.arange(seq_len, device=device)[None, :]
            boundary = self.last_prompt.to(device)[:, None]
        elif positions == "prompt" or (positions == "last" and self.rolling):
            return None  # a whole text without a continuation: every token is prompt
        elif positions == "last":
            raise ValueError(
                "positions=last needs to know where the prompt ends: edited_hf knows it for"
                " generation and loglikelihood requests, not for a bare forward pass"
            )
        else:
            return torch.zeros(seq_len, 1, dtype=torch.bool, device=device)
        if positions == "prompt":
            mask = absolute <= boundary
        elif positions == "generated":
            mask = absolute > boundary
        else:
            mask = absolute == boundary
        return mask[..., None]


def track_cache_offset(model: nn.Module, switch: Switch) -> RemovableHandle:
    """Keep `switch.past_length` equal to the KV-cache length at the start of each forward, and
    `switch.attention_mask` equal to its attention mask (see ce_bench.kv_cache for the names)."""
    read_cache = cache_reader(model)

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        switch.past_length = cache_length(read_cache(args, kwargs))
        switch.attention_mask = kwargs.get("attention_mask")

    return model.register_forward_pre_hook(hook, with_kwargs=True)


INTERVENTIONS: dict[str, type[Intervention]] = {}


def register_intervention(cls: type[Intervention]) -> type[Intervention]:
    """Class decorator: make a kind available by its `kind` name (duplicates are an error)."""
    if cls.kind in INTERVENTIONS:
        raise ValueError(f"intervention kind {cls.kind!r} is already registered")
    INTERVENTIONS[cls.kind] = cls
    return cls


def build_intervention(
    artifact: Artifact, model: nn.Module, overrides: dict[str, Any] | None = None
) -> Intervention:
    """Check `artifact` against `model` and build its intervention, with `overrides` applied."""
    intervention = checked_intervention(artifact, model_dims(model), overrides)
    intervention.check(model, artifact.source)
    return intervention


def checked_intervention(
    artifact: Artifact, dims: ModelDims, overrides: dict[str, Any] | None = None
) -> Intervention:
    """Build `artifact`'s intervention after every check that needs only the model's sizes.

    Evaluation runs this with the loaded model's sizes (then the checks that need its weights);
    `ce-bench show` runs it alone with the sizes the manifest records, so both print one message.
    """
    source = artifact.source
    if artifact.kind not in INTERVENTIONS:
        known = ", ".join(sorted(INTERVENTIONS))
        raise ArtifactError(source, "kind", f"unknown kind {artifact.kind!r}; known kinds: {known}")
    if artifact.site.layer >= dims.num_layers:
        raise ArtifactError(
            source,
            "layer",
            f"layer {artifact.site.layer} out of range: the model has {dims.num_layers} layers",
        )
    cls = INTERVENTIONS[artifact.kind]
    params = parse_params(cls.Params, {**artifact.params, **(overrides or {})}, source)
    missing = sorted(set(cls.tensor_names) - set(artifact.tensors))
    if missing:
        raise ArtifactError(source, missing[0], "tensor missing from tensors.safetensors")
    extra = sorted(set(artifact.tensors) - set(cls.tensor_names))
    if extra:
        expected = ", ".join(cls.tensor_names) or "no tensors"
        raise ArtifactError(
            source,
            extra[0],
            f"unexpected tensor in tensors.safetensors; {artifact.kind} stores exactly: {expected}",
        )
    intervention = cls(artifact.site, params, artifact.tensors)
    intervention.check_dims(dims, source)
    return intervention


def save_intervention(artifact: Artifact, directory: str | Path) -> Path:
    """Check `artifact` as loading it will (its kind's typed Params, its tensors against the
    model sizes it records), then write it: what every locate method, report and editor saves
    through, so that no invalid artifact reaches a disk."""
    checked_intervention(artifact, artifact.model.dims())
    return save_artifact(artifact, directory)


def parse_params(params_cls: type, raw: dict[str, Any], source: str) -> Any:
    """Build a kind's frozen Params from JSON values; unknown or ill-typed fields are errors."""
    known = {f.name: f for f in dataclasses.fields(params_cls)}
    for key in raw:
        if key not in known:
            raise ArtifactError(
                source, f"params.{key}", f"unknown parameter; known: {', '.join(known)}"
            )
    try:
        return params_cls(**raw)
    except (TypeError, ValueError) as err:
        raise ArtifactError(source, "params", str(err)) from err


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ValueError unless `value` is one of `choices` (used by Params.__post_init__)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_number(name: str, value: Any) -> None:
    """Raise ValueError unless `value` is a finite int or float (not a bool).

    NaN and infinity arrive easily (JSON's `NaN` literal, `float("nan")` of a model_arg) and would
    reach every metric as NaN, so they are refused like non-finite tensors are.
    """
    finite = not isinstance(value, float) or math.isfinite(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not finite:
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_integer(name: str, value: Any, minimum: int) -> None:
    """Raise ValueError unless `value` is an integer (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_indices(source: str, name: str, indices: torch.Tensor, width: int) -> None:
    """Raise ArtifactError unless tensor `name` is a 1-D integer tensor of indices in [0, width)."""
    if indices.dtype not in (torch.int32, torch.int64) or indices.dim() != 1:
        raise ArtifactError(source, name, "expected a 1-D integer tensor of unit indices")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= width):
        raise ArtifactError(
            source,
            name,
            f"indices must lie in [0, {width}), got min {int(indices.min())}"
            f" and max {int(indices.max())}",
        )


class Intervention(ABC):
    """Something that changes a model's forward pass while its switch is on."""

    kind: ClassVar[str]
    Params: ClassVar[type]
    tensor_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, site: Site, params: Any, tensors: dict[str, torch.Tensor]) -> None:
        self.site, self.params = site, params
        self.tensors = {name: tensors[name] for name in self.tensor_names}
        self.target: str | None = None  # the class it erases, when several are loaded at once

    def check_dims(self, dims: ModelDims, source: str) -> None:  # noqa: B027 (optional override)
        """Raise ArtifactError if this intervention does not fit a model of sizes `dims` (tensor
        shapes, indices, sites). It needs no model, so `ce-bench show` runs it too."""

    def check(self, model: nn.Module, source: str) -> None:  # noqa: B027 (optional override)
        """Raise ArtifactError if this intervention does not fit `model` in a way its sizes do not
        tell (an SAE to load, a weight's layout); runs after `check_dims`."""

    @abstractmethod
    def attach(self, model: nn.Module, switch: Switch) -> list[RemovableHandle]:
        """Attach to `model`, gated by `switch`; returns handles whose removal undoes it all."""


@dataclass(frozen=True)
class ActivationParams:
    """Fields every activation intervention has."""

    positions: Positions = "all"

    def __post_init__(self) -> None:
        check_choice("positions", self.positions, POSITIONS)


class ActivationIntervention(Intervention):
    """An intervention that rewrites the activation at its site: h <- edit(h)."""

    @abstractmethod
    def edit(self, h: torch.Tensor) -> torch.Tensor:
        """The edited activation, same shape and dtype as `h` (batch, seq, width); with
        `positions=last`, `h` holds only the edited tokens, one per row: (rows, 1, width)."""

    def prepare(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move tensors next to the site's weights once, before any forward pass."""
        self.tensors = {k: v.to(device=device, dtype=dtype) for k, v in self.tensors.items()}

    def check_vector(self, dims: ModelDims, source: str, name: str) -> None:
        """Fail unless tensor `name` is a vector as wide as the site."""
        width, tensor = width_at(dims, self.site), self.tensors[name]
        if tensor.shape != (width,):
            raise ArtifactError(
                source,
                name,
                f"expected shape ({width},) for {self.site}, got {tuple(tensor.shape)}",
            )

    def attach(self, model: nn.Module, switch: Switch) -> list[RemovableHandle]:
        self.prepare(*site_device(model, self.site))
        return [attach_hook(model, self.site, _gated(self, switch))]


def _gated(intervention: ActivationIntervention, switch: Switch):  # type: ignore[no-untyped-def]
    positions = intervention.params.positions

    def edit(h: torch.Tensor) -> torch.Tensor | None:
        if not switch.on_for(intervention):
            return None
        mask = switch.position_mask(positions, h.shape[1], h.device)
        if mask is None:
            return intervention.edit(h)
        if not bool(mask.any()):
            return None
        if positions == "last":  # one token per row: edit just those, not the whole sequence
            rows, cols = mask[..., 0].expand(h.shape[0], -1).nonzero(as_tuple=True)
            out = h.clone()
            out[rows, cols] = intervention.edit(h[rows, cols][:, None])[:, 0]
            return out
        return torch.where(mask, intervention.edit(h), h)

    return edit
