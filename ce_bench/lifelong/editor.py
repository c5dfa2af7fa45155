"""The lifelong editor contract: an intervention that changes its own state one edit at a time.

An editor is an ordinary intervention kind (registered, built from an artifact, attached once,
switched ON/OFF per request) with three more things:

- `initial_tensors(model, params)`: its state before any edit (a copy of a decoder, an empty
  codebook, a zero weight difference), so `new_editor` can build it without an artifact;
- `apply_edit(model, tokenizer, record)`: train on one record with every model weight frozen
  and return a few numbers about it (losses, steps);
- `reset()`: back to the state it was built with (`eval_at=immediate` replays the stream);
- `state()` / `load_state(tensors)`: what its answers depend on, kept at a checkpoint of a
  retention curve and put back to answer there;
- `progress()` / `resume(...)`: the state plus whatever later edits read (AlphaEdit's edited
  keys, ROME's context templates), so that a stream cut off after k edits continues from edit
  k + 1 (`resume_edits=DIR`) and ends where an uncut one would.

With the switch OFF an editor changes nothing, so the unedited model's answers (Locality's
pre-edit predictions) come from the same loaded model in the same run. Its state is
`self.tensors`, so `to_artifact` saves an edited model's state after a stream like any other
artifact, and loading that artifact gives the edited model back without editing again.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ce_bench.artifacts import Artifact, ArtifactError, ModelIdentity, Provenance
from ce_bench.interventions.base import INTERVENTIONS, Intervention, check_integer, parse_params
from ce_bench.lifelong.records import EditRecord, EditStream
from ce_bench.scoring import GoldenBatch, answer_logits, frozen_parameters, golden_batch
from ce_bench.sites import Site, layout, model_dims


@dataclass(frozen=True)
class EditorParams:
    """Fields every editor has."""

    layer: int = -1  # the layer it edits (0-based); -1: the editor's default for the model
    seed: int = 0

    def __post_init__(self) -> None:
        check_integer("layer", self.layer, -1)


class Editor(Intervention):
    """A lifelong editor (see the module docstring)."""

    site_name: str  # the site its state reads or rewrites
    depth: float | None = None  # default layer: the paper's, as a share of the model's layers

    def __init__(self, site: Site, params: Any, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__(site, params, tensors)
        self.initial = {k: v.detach().clone() for k, v in self.tensors.items()}
        self.reset()

    @classmethod
    def default_layer(cls, model: nn.Module, params: Any) -> int:
        """The layer to edit when `params.layer` is -1: the one at the paper's `depth`."""
        if cls.depth is None:
            raise ValueError(f"{cls.kind} needs layer= (the layer to edit)")
        return layer_at_depth(model, cls.depth)

    @classmethod
    @abstractmethod
    def initial_tensors(cls, model: nn.Module, site: Site, params: Any) -> dict[str, torch.Tensor]:
        """The editor's state before any edit."""

    def start_stream(  # noqa: B027 (optional override)
        self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord]
    ) -> None:
        """Called once before a stream (some defaults depend on T or on the data)."""

    def check_shapes(self, source: str, expected: dict[str, tuple[int, ...]]) -> None:
        """Raise ArtifactError naming the first state tensor whose shape is not `expected`."""
        for name, shape in expected.items():
            if tuple(self.tensors[name].shape) != tuple(shape):
                got = tuple(self.tensors[name].shape)
                raise ArtifactError(source, name, f"expected {tuple(shape)}, got {got}")

    def resolved(self) -> dict[str, Any]:
        """Parameters whose value the stream decided (written into results and artifacts)."""
        return {}

    @abstractmethod
    def apply_edit(self, model: nn.Module, tokenizer: Any, record: EditRecord) -> dict[str, float]:
        """Install `record` (model weights frozen); returns numbers about the edit."""

    def stream_report(  # noqa: B027 (optional override)
        self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord]
    ) -> dict[str, Any]:
        """Numbers about the whole stream once it is applied (written into results)."""
        return {}

    def reset(self) -> None:
        """Back to the state the editor was built with (no edit of the current stream)."""
        self.load_state(self.initial)
        self.edits_applied = 0

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of the tensors the editor's answers depend on."""
        return {k: v.detach().clone() for k, v in self.tensors.items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Answer from `tensors` (a `state()`) from now on. What only later edits read (FT-EWC's
        Fisher, AlphaEdit's edited keys) is not part of it: `reset()` clears that."""
        device = next((v.device for v in self.tensors.values()), None)  # attached: the model's
        self.tensors = {k: v.to(device, copy=True) for k, v in tensors.items()}

    def progress(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """What continuing the stream from here needs: tensors (the state and more) and JSON-able
        values; None for an editor that cannot continue a stream (it edits from the start)."""
        return self.state(), {}

    def resume(
        self, tensors: dict[str, torch.Tensor], info: dict[str, Any], edits_applied: int
    ) -> None:
        """Continue from a `progress()` saved after `edits_applied` edits."""
        self.load_state({k: tensors[k] for k in self.tensors})
        self.edits_applied = edits_applied

    def to_artifact(self, model: nn.Module, model_name: str, stream: EditStream) -> Artifact:
        """The edited state after `stream`, as an artifact that loads without editing again."""
        return Artifact(
            kind=self.kind,
            site=self.site,
            params={**asdict(self.params), **self.resolved()},
            tensors={k: v.detach().cpu() for k, v in self.tensors.items()},
            model=ModelIdentity.of(model, model_name),
            provenance=Provenance(
                method=self.kind,
                data_hash=stream.digest,
                report={"stream": stream.describe(), "edits_applied": self.edits_applied},
            ),
        )


def editor_class(kind: str) -> type[Editor]:
    """The registered editor called `kind`, or an error listing the known editors."""
    cls = INTERVENTIONS.get(kind)
    if cls is None or not issubclass(cls, Editor):
        known = sorted(k for k, c in INTERVENTIONS.items() if issubclass(c, Editor))
        raise ValueError(f"unknown editor {kind!r}; known editors: {', '.join(known)}")
    return cls


def new_editor(kind: str, model: nn.Module, params: dict[str, Any]) -> Editor:
    """A fresh editor of `kind` for `model`, with `params` over the paper's defaults."""
    cls = editor_class(kind)
    parsed = parse_params(cls.Params, params, f"editor={kind}")
    layer = parsed.layer if parsed.layer >= 0 else cls.default_layer(model, parsed)
    site = Site(cls.site_name, layer)
    parsed = type(parsed)(**{**asdict(parsed), "layer": layer})
    editor = cls(site, parsed, cls.initial_tensors(model, site, parsed))
    editor.check(model, f"editor={kind}")
    return editor


def layer_at_depth(model: nn.Module, fraction: float) -> int:
    """The layer at the same relative depth as a paper's choice (e.g. 27/32 on LLaMA)."""
    return min(model_dims(model).num_layers - 1, round(fraction * model_dims(model).num_layers))


def edit_batch(tokenizer: Any, record: EditRecord, device: torch.device) -> GoldenBatch:
    """The edit's prompt + " target" as one teacher-forced row (loss on the target only)."""
    return golden_batch(tokenizer, [(record.prompt, record.target)], device)


def target_loss(model: nn.Module, batch: GoldenBatch) -> tuple[torch.Tensor, bool]:
    """-log P(target | prompt) averaged over the target's tokens (MicroEdit Eq. 10), and whether
    every target token is already the model's argmax."""
    logits, labels, _ = answer_logits(model, batch)  # (a training step's largest cost)
    loss = nn.functional.cross_entropy(logits, labels)
    return loss, bool((logits.argmax(-1) == labels).all())


@contextmanager
def edit_training(
    model: nn.Module, layer: int, batch: GoldenBatch, trainable: Sequence[torch.Tensor] = ()
) -> Iterator[None]:
    """Train on `batch` at `layer`: model weights frozen (but `trainable`), gradients on, and
    the layers below `layer` replayed. Entering runs the model once on `batch` (no gradient),
    so an editor's hooks see the batch before the first training step."""
    with (
        frozen_parameters(model, trainable),
        torch.enable_grad(),
        replayed_prefix(model, layer, batch),
    ):
        yield


@contextmanager
def replayed_prefix(model: nn.Module, layer: int, batch: GoldenBatch) -> Iterator[None]:
    """Inside the block, the decoder layers below `layer` return what they returned for `batch`
    instead of computing it again.

    An editor trains something at `layer` with every model weight frozen, on the same batch at
    every step, so the layers below it compute the same thing each time; replaying them makes a
    training step cost only the layers from `layer` up (about a sixth of the model for an
    editor at 5/6 depth). A forward pass on other inputs inside the block is an error."""
    layers = model.get_submodule(layout(model).layers)
    outputs: dict[int, Any] = {}
    handles = [
        layers[i].register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out))
        for i in range(layer)
    ]
    try:
        with torch.no_grad():
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    originals = [layers[i] for i in range(layer)]
    for i in range(layer):
        layers[i] = _Replay(originals[i], outputs[i], batch.input_ids.shape)
    try:
        yield
    finally:
        for i, original in enumerate(originals):
            layers[i] = original


class _Replay(nn.Module):
    """A decoder layer's recorded output, standing in for the layer (see `replayed_prefix`)."""

    def __init__(self, layer: nn.Module, output: Any, shape: torch.Size) -> None:
        super().__init__()
        object.__setattr__(self, "layer", layer)  # not a submodule: no parameters twice
        self.output, self.shape = output, shape

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if tuple(hidden_states.shape[:2]) != tuple(self.shape):
            raise RuntimeError(
                f"replayed_prefix: a forward pass on inputs of shape {tuple(hidden_states.shape)}"
                f" while replaying the outputs for {tuple(self.shape)}"
            )
        return self.output

    def __getattr__(self, name: str) -> Any:  # attributes the model reads (attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "layer"), name)
