"""MEND (Mitchell et al., 2022): a trained network turns an edit's gradient into a weight update.

For a linear layer y = W x, the gradient of a loss over one sequence is sum_t delta_t x_t^T
(delta_t = dL/dy_t): a rank-one term per token. MEND edits W_down of the last three layers:

1. factors: for the edit's prompt + target (loss: the target's NLL), W_down's input x_t and the
   gradient at its output delta_t, for every token where both are non-zero;
2. [x_t; delta_t] is standardised with running statistics (collected while training, fixed
   after), then passed through `MENDNet`: two low-rank residual layers (ReLU after the first),
   the identity at initialisation, with a scale and shift per edited layer (one network shared
   by the layers of one shape, MEND's "shared" variant); out come x~_t and delta~_t;
3. the update: W_l <- W_l - alpha_l sum_t delta~_t x~_t^T, with a learned step alpha_l per layer
   (MEND Eq. 3-4; EasyEdit adds the term instead, a sign the trained network absorbs).

The network is trained by `ce_bench.lifelong.mend_training` (`ce-bench train-mend`) and saved as
safetensors with a JSON description; the `mend` editor loads one and applies its updates in
sequence, each from the gradient of the model the earlier edits made. Defaults are EasyEdit's
LLaMA MEND config (hparams/TRAINING/MEND/llama-7b.yaml): rank 1920, one hidden layer, identity
init, edit_lr 1e-4; EasyEdit also edits gate_proj and up_proj, ce-bench W_down only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ce_bench.interventions.base import check_integer, register_intervention
from ce_bench.lifelong.editor import EditorParams, edit_batch, target_loss
from ce_bench.lifelong.records import EditRecord
from ce_bench.lifelong.weight_editor import WeightDeltaEditor, w_down
from ce_bench.runtime import ce_bench_home, model_cache_name
from ce_bench.scoring import GoldenBatch, frozen_parameters
from ce_bench.sites import model_dims, out_in

MEND_LAYERS = 3  # MEND edits the MLPs of the last three layers
WEIGHTS, DESCRIPTION = "mend.safetensors", "mend.json"


@dataclass(frozen=True)
class NetShape:
    """What a trained MEND fits: W_down's (in, out) widths and how many layers it edits."""

    x_dim: int  # W_down's input: the MLP width
    delta_dim: int  # W_down's output: the residual width
    layers: int
    rank: int = 1920
    n_hidden: int = 1
    edit_lr: float = 1e-4  # each layer's step alpha_l at initialisation


class LowRankResidual(nn.Module):
    """x + act(scale_mode * (U V^T x + b) + shift_mode); U starts at zero (the identity)."""

    def __init__(self, width: int, rank: int, relu: bool, modes: int) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.zeros(width, rank))
        self.v = nn.Parameter(torch.randn(width, rank))
        self.bias = nn.Parameter(torch.zeros(width))
        self.scale = nn.Parameter(torch.ones(modes, width))
        self.shift = nn.Parameter(torch.zeros(modes, width))
        self.relu = relu

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:
        pre = (x @ self.v) @ self.u.T + self.bias
        pre = pre * self.scale[mode] + self.shift[mode]
        return (pre.clamp(min=0) if self.relu else pre) + x


class MENDNet(nn.Module):
    """The gradient transform of one shape of edited layer (see the module docstring)."""

    def __init__(self, shape: NetShape) -> None:
        super().__init__()
        self.shape = shape
        width = shape.x_dim + shape.delta_dim
        self.blocks = nn.ModuleList(
            LowRankResidual(width, shape.rank, relu=i < shape.n_hidden, modes=shape.layers)
            for i in range(shape.n_hidden + 1)
        )
        self.edit_lrs = nn.Parameter(torch.full((shape.layers,), shape.edit_lr))
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("squares", torch.zeros(width))  # sum of squared deviations

    def observe(self, factors: torch.Tensor) -> None:
        """Add rows of [x; delta] to the running mean and variance (Chan et al.'s merge)."""
        rows = factors.detach().double()
        n, mean = rows.shape[0], rows.mean(0)
        total = self.count.double() + n
        gap = mean - self.mean.double()
        self.squares.copy_(
            self.squares.double()
            + ((rows - mean) ** 2).sum(0)
            + gap**2 * self.count.double() * n / total
        )
        self.mean.copy_(self.mean.double() + gap * n / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor, delta: torch.Tensor, mode: int) -> torch.Tensor:
        """The update of layer `mode` from factors x (tokens, x_dim) and delta (tokens,
        delta_dim): alpha_mode sum_t delta~_t x~_t^T, shaped (delta_dim, x_dim)."""
        if self.count < 2:
            raise RuntimeError("MEND's input statistics need at least two tokens (train it first)")
        std = (self.squares / (self.count - 1)).sqrt()
        z = (torch.cat([x, delta], -1).float() - self.mean) / (std + 1e-7)
        for block in self.blocks:
            z = block(z, mode)
        x_new, delta_new = z.split([self.shape.x_dim, self.shape.delta_dim], -1)
        return self.edit_lrs[mode] * delta_new.T @ x_new

    def save(self, directory: Path, description: dict[str, Any]) -> None:
        """mend.safetensors and mend.json (the shape, and what trained it) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS))
        payload = {"shape": asdict(self.shape), **description}
        (directory / DESCRIPTION).write_text(json.dumps(payload, indent=1) + "\n")

    @classmethod
    def load(cls, directory: Path) -> tuple[MENDNet, dict[str, Any]]:
        """A saved network and its description; a missing or mismatched file is an error."""
        if not (directory / WEIGHTS).is_file() or not (directory / DESCRIPTION).is_file():
            raise FileNotFoundError(
                f"{directory}: not a trained MEND (needs {WEIGHTS} and {DESCRIPTION};"
                " ce-bench train-mend writes them)"
            )
        description = json.loads((directory / DESCRIPTION).read_text())
        net = cls(NetShape(**description["shape"]))
        tensors = load_file(str(directory / WEIGHTS))
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if found != expected:
            raise ValueError(f"{directory / WEIGHTS}: tensors {found} do not fit {expected}")
        net.load_state_dict(tensors)
        return net, description


def shape_for(model: nn.Module, layers: int, **sizes: Any) -> NetShape:
    """The network shape that edits W_down of `model`'s last `layers` layers."""
    dims = model_dims(model)
    return NetShape(x_dim=dims.d_mlp, delta_dim=dims.hidden_size, layers=layers, **sizes)


def edited_layers(model: nn.Module, layers: int) -> list[int]:
    """The last `layers` layers of `model`."""
    count = model_dims(model).num_layers
    if not 1 <= layers <= count:
        raise ValueError(f"layers={layers}: the model has {count} layers")
    return list(range(count - layers, count))


def gradient_factors(
    model: nn.Module, batch: GoldenBatch, layers: Sequence[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, delta) per layer for the answer NLL of `batch`: W_down's inputs and the gradient at
    its outputs, one row per token where both are non-zero (MEND's factors)."""
    modules = [w_down(model, layer) for layer in layers]
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        inputs.append(args[0].detach())
        outputs.append(output)

    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        with frozen_parameters(model, [m.weight for m in modules]), torch.enable_grad():
            loss = target_loss(model, batch)[0]
            grads = torch.autograd.grad(loss, outputs)
    finally:
        for handle in handles:
            handle.remove()
    keep_rows = batch.attention_mask.reshape(-1).bool()
    factors = []
    for x, delta in zip(inputs, grads, strict=True):
        x, delta = x.reshape(-1, x.shape[-1])[keep_rows], delta.reshape(-1, delta.shape[-1])
        delta = delta[keep_rows]
        nonzero = (x != 0).any(-1) & (delta != 0).any(-1)
        factors.append((x[nonzero].float(), delta[nonzero].float()))
    return factors


@contextmanager
def weights_in_place(
    modules: Sequence[nn.Module], weights: Sequence[torch.Tensor]
) -> Iterator[None]:
    """Inside the block each module computes with the given (out, in) weight, which may carry
    gradients back to what made it (training MEND through the edited model)."""
    saved = [m._parameters["weight"] for m in modules]
    for module, weight in zip(modules, weights, strict=True):
        module._parameters["weight"] = out_in(module, weight)  # type: ignore[assignment]
    try:
        yield
    finally:
        for module, weight in zip(modules, saved, strict=True):
            module._parameters["weight"] = weight


def mend_updates(
    net: MENDNet, factors: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    """Each layer's update (out, in) from its factors."""
    return [net(x, delta, mode) for mode, (x, delta) in enumerate(factors)]


def cached_nets(model_name: str) -> list[Path]:
    """Trained MEND networks for `model_name` in the cache, newest first."""
    root = ce_bench_home() / "mend" / model_name
    found = [p.parent for p in root.glob(f"*/{DESCRIPTION}") if (p.parent / WEIGHTS).is_file()]
    return sorted(found, key=lambda p: (p / WEIGHTS).stat().st_mtime, reverse=True)


@dataclass(frozen=True)
class MENDParams(EditorParams):
    layers: int = MEND_LAYERS  # the last `layers` layers' W_down
    mend_path: str = ""  # a trained network (ce-bench train-mend); default: the newest cached

    def __post_init__(self) -> None:
        super().__post_init__()
        check_integer("layers", self.layers, 1)


@register_intervention
class MEND(WeightDeltaEditor):
    """State: `delta`, (layers, *W_down's shape), the stream's updates of each layer."""

    kind = "mend"
    Params = MENDParams

    @classmethod
    def default_layer(cls, model: nn.Module, params: Any) -> int:
        return edited_layers(model, params.layers)[0]

    def start_stream(self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord]) -> None:
        self.net_path = self._net_path(model)
        self.net: MENDNet | None = None  # loaded at the first edit (a saved state needs none)

    def progress(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, info = super().progress()
        return tensors, {**info, "mend_path": str(self.net_path)}

    def resume(
        self, tensors: dict[str, torch.Tensor], info: dict[str, Any], edits_applied: int
    ) -> None:
        if info["mend_path"] != str(self.net_path):  # a network trained since: not one stream
            raise ValueError(
                f"the saved edits were made with the MEND network {info['mend_path']}, this run"
                f" would continue with {self.net_path}; give mend_path= or start again"
            )
        super().resume(tensors, info, edits_applied)

    def _load_net(self, model: nn.Module) -> MENDNet:
        net, self.net_description = MENDNet.load(self.net_path)
        expected, got = shape_for(model, len(self.layers)), net.shape
        if (got.x_dim, got.delta_dim, got.layers) != (
            expected.x_dim,
            expected.delta_dim,
            expected.layers,
        ):
            raise ValueError(
                f"{self.net_path}: MEND trained for W_down {got.delta_dim}x{got.x_dim} over"
                f" {got.layers} layers; this model's is {expected.delta_dim}x{expected.x_dim},"
                f" editing {expected.layers}"
            )
        return net

    def _net_path(self, model: nn.Module) -> Path:
        if self.params.mend_path:
            return Path(self.params.mend_path)
        name = model_cache_name(model)
        found = cached_nets(name)
        if not found:
            raise FileNotFoundError(
                f"editor=mend needs a trained MEND for {name!r}: run `ce-bench train-mend`"
                " (see docs/lifelong.md for its time), or give mend_path=DIR"
            )
        return found[0]

    def resolved(self) -> dict[str, Any]:
        return {"mend_path": str(self.net_path)} if hasattr(self, "net_path") else {}

    def apply_edit(self, model: nn.Module, tokenizer: Any, record: EditRecord) -> dict[str, float]:
        device = self.swapped[0].weight.device
        batch = edit_batch(tokenizer, record, device)
        if self.net is None:
            self.net = self._load_net(model).to(device)
        with self.holding(True):  # each edit starts from the model the earlier ones edited
            factors = gradient_factors(model, batch, self.layers)
            with torch.no_grad():
                updates = mend_updates(self.net, factors)
                for i, (module, update) in enumerate(
                    zip((w_down(model, layer) for layer in self.layers), updates, strict=True)
                ):
                    weight = out_in(module, self.swapped[i].weight.detach().float())
                    self.set_layer(i, out_in(module, weight - update))
                loss = float(target_loss(model, batch)[0])
        self.edits_applied += 1
        return {"tokens": float(len(factors[0][0])), "loss_after": loss}

    def stream_report(
        self, model: nn.Module, tokenizer: Any, records: Sequence[EditRecord]
    ) -> dict[str, Any]:
        trained = getattr(self, "net_description", {}).get("training", {})
        return {"mend_path": str(self.net_path), "mend_training": trained}
