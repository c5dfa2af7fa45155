"""One model's lifelong run: its editor, its edit stream, and when requests are answered.

`edited_hf` holds one `LifelongSession` when model_args name an editor (`editor=microedit,
edits=zsre,num_edits=100`) or load an edited state (`intervention=DIR,edits=zsre,...`). The
session applies the T edits in order when the model is built, so every task of the run sees the
edited model, and checks each request about an edit against its stream: a task evaluating other
records than the model edited is an error, not a silent difference.

`eval_at=end` (MicroEdit's protocol) answers everything after all T edits. `eval_at=immediate`
answers a request about record t right after edit t: each call of the model (loglikelihood,
generation) with such requests replays the stream from the unedited state, answering as it goes;
requests about no record (side-effect tasks) are answered after the last edit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch
from tqdm.auto import tqdm

from ce_bench import pairing
from ce_bench.lifelong.editor import Editor
from ce_bench.lifelong.records import EditStream

EvalAt = Literal["end", "immediate"]


class StreamMismatch(ValueError):
    """A task asked about records the model did not edit."""


class LifelongSession:
    """Applies `stream` with `editor` and orders answers by `eval_at`."""

    def __init__(
        self,
        editor: Editor,
        stream: EditStream,
        model: torch.nn.Module,
        tokenizer: Any,
        eval_at: str = "end",
        edited_already: bool = False,
    ) -> None:
        if eval_at not in get_args(EvalAt):
            raise ValueError(
                f"eval_at must be one of {', '.join(get_args(EvalAt))}, got {eval_at!r}"
            )
        if eval_at == "immediate" and edited_already:
            raise ValueError(
                "eval_at=immediate replays the edits one by one: give editor=..., not a saved"
                " edited state (intervention=DIR)"
            )
        self.editor, self.stream, self.eval_at = editor, stream, eval_at
        self.model, self.tokenizer = model, tokenizer
        self.edit_stats: list[dict[str, float]] = []
        self.edit_seconds = 0.0
        self.after_stream: dict[str, Any] = {}
        self.editor.start_stream(model, tokenizer, stream.records)
        if not edited_already:
            self.apply_stream()

    def apply_stream(self, after_each: Callable[[int], None] | None = None) -> None:
        """Reset the editor and apply every edit in order; `after_each(t)` runs after edit t."""
        self.editor.reset()
        stats, start = [], time.perf_counter()
        bar = tqdm(self.stream.records, desc=f"{self.editor.kind} edits", unit="edit")
        for t, record in enumerate(bar):
            stats.append(self.editor.apply_edit(self.model, self.tokenizer, record))
            bar.set_postfix({k: f"{v:.3g}" for k, v in stats[-1].items()})
            if after_each is not None:
                after_each(t)
        self.edit_stats, self.edit_seconds = stats, time.perf_counter() - start
        self.after_stream = self.editor.stream_report(
            self.model, self.tokenizer, self.stream.records
        )

    def check(self, tags: Sequence[dict[str, Any]]) -> None:
        """Fail if any request is about a record that is not in this model's edit stream."""
        digest, count = self.stream.digest, len(self.stream.records)
        for tag in tags:
            about = pairing.edit_of(tag)
            if about is None:
                continue
            index, stream = about
            if stream != digest or not 0 <= index < count:
                raise StreamMismatch(
                    f"a task evaluates record {index} of edit stream {stream}, but the model"
                    f" edited {self.stream.source!r} with num_edits={count} (stream {digest});"
                    " state edits= and num_edits= once, in --model_args, and do not override"
                    " them in --metadata"
                )

    def answer(
        self, requests: Sequence[Any], tags: Sequence[dict[str, Any]], compute: Callable
    ) -> list[Any]:
        """`compute(requests)` for a list of requests, each answered in the editor state that
        `eval_at` asks for."""
        self.check(tags)
        waiting: dict[int, list[int]] = {}
        if self.eval_at == "immediate":
            for i, tag in enumerate(tags):
                about = pairing.edit_of(tag)
                if about is not None and pairing.is_enabled(tag):
                    waiting.setdefault(about[0], []).append(i)
        if not waiting:
            return list(compute(list(requests)))
        answers: dict[int, Any] = {}

        def answer_now(indices: list[int]) -> None:
            for i, value in zip(indices, compute([requests[i] for i in indices]), strict=True):
                answers[i] = value

        self.apply_stream(lambda t: answer_now(waiting[t]) if t in waiting else None)
        rest = [i for i in range(len(requests)) if i not in answers]
        if rest:
            answer_now(rest)
        return [answers[i] for i in range(len(requests))]

    def key(self) -> dict[str, Any]:
        """What makes this run's answers differ from another's (for the results fingerprint)."""
        return {
            "editor": self.editor.kind,
            "params": vars(self.editor.params),
            **self.stream.describe(),
            "eval_at": self.eval_at,
        }

    def describe(self) -> dict[str, Any]:
        """What results JSON records about the run: `key()` plus what the editing did."""
        losses = {k: [s[k] for s in self.edit_stats] for k in (self.edit_stats or [{}])[0]}
        return {
            **self.key(),
            "edits_applied": self.editor.edits_applied,
            "resolved": self.editor.resolved(),
            "edit_seconds": round(self.edit_seconds, 3),
            "mean_edit_stats": {k: sum(v) / len(v) for k, v in losses.items() if v},
            "after_stream": self.after_stream,
        }
