"""What an `edited_hf` run cost, written into its results (`config.ce_bench.cost`).

A meter on the model counts the forward passes made while requests are answered (not while a
lifelong editor edits: that is `edit_seconds`), with the tokens they processed and their time,
apart for the switch ON (edited) and OFF (unedited). A paired task asks both halves of the
same documents, so the ratio of their seconds per processed token is the edit's overhead at
inference, measured in the run itself. It is absent when the run computed no OFF half (an
unpaired task, or OFF answers reused from an earlier run on the same model).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ce_bench.interventions.base import Switch
from ce_bench.runtime import peak_rss_mb, reset_peak_memory


@dataclass
class Half:
    """The forward passes made with the switch in one state."""

    passes: int = 0
    tokens: int = 0  # tokens the passes processed (batch x new positions)
    seconds: float = 0.0

    @property
    def seconds_per_token(self) -> float | None:
        return self.seconds / self.tokens if self.tokens else None


@dataclass
class CostMeter:
    """Counts one model's work per lm-eval run; `report()` closes a run and starts the next
    (a CellJob runs lm-eval twice on one model: its task, then the side-effect tasks)."""

    switch: Switch | None = None  # set by `attach`
    started: float = field(default_factory=time.perf_counter)
    halves: dict[bool, Half] = field(default_factory=lambda: {True: Half(), False: Half()})
    generated: int = 0  # new tokens out of `generate`, padding after an early stop excluded
    _answering: bool = False
    _pass: tuple[bool, int, float] | None = None
    _hooks: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        reset_peak_memory()  # the peak while this run's model exists

    def attach(self, model: nn.Module, switch: Switch) -> None:
        """Meter `model`'s forward passes, ON or OFF as `switch` is at each."""
        self.switch = switch
        self._hooks = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after),
        ]

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Count the passes made inside (requests being answered)."""
        previous, self._answering = self._answering, True
        try:
            yield
        finally:
            self._answering = previous

    def count_generated(self, new_tokens: torch.Tensor, pad_token_id: int | None) -> None:
        kept = new_tokens if pad_token_id is None else new_tokens[new_tokens != pad_token_id]
        self.generated += kept.numel()

    def _before(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not self._answering or self.switch is None:
            return
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        tokens = int(inputs.shape[0] * inputs.shape[1]) if inputs is not None else 0
        self._pass = (self.switch.enabled, tokens, time.perf_counter())

    def _after(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._pass is None:
            return
        enabled, tokens, start = self._pass
        self._pass = None
        half = self.halves[enabled]
        half.passes += 1
        half.tokens += tokens
        half.seconds += time.perf_counter() - start

    def report(self, edit_seconds: float | None, locate_seconds: float | None) -> dict[str, Any]:
        """This run's cost (see the module docstring); the meter starts the next run."""
        on, off = self.halves[True], self.halves[False]
        overhead = None
        if on.seconds_per_token and off.seconds_per_token:
            overhead = round(on.seconds_per_token / off.seconds_per_token, 4)
        cost = {
            "wall_seconds": round(time.perf_counter() - self.started, 3),
            "edit_seconds": edit_seconds,
            "locate_seconds": locate_seconds,
            "forward_passes": on.passes + off.passes,
            "tokens_generated": self.generated,
            "edited": {k: round(v, 4) for k, v in asdict(on).items()},
            "unedited": {k: round(v, 4) for k, v in asdict(off).items()},
            "overhead": overhead,
            "peak_mb": round(peak_rss_mb()),  # since the model was built
        }
        if torch.cuda.is_available():
            cost["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        self.started = time.perf_counter()
        self.halves = {True: Half(), False: Half()}
        self.generated = 0
        return cost
