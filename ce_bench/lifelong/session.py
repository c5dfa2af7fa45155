"""One model's lifelong run: its editor, its edit stream, and when requests are answered.

`edited_hf` holds one `LifelongSession` when model_args name an editor (`editor=microedit,
edits=zsre,num_edits=100`) or load an edited state (`intervention=DIR,edits=zsre,...`). The
session applies the T edits in order when the model is built, so every task of the run sees the
edited model, and checks each request about an edit against its stream: a task evaluating other
records than the model edited is an error, not a silent difference.

When requests are answered (`eval_at`):

- `end` (MicroEdit's protocol): everything after all T edits.
- `immediate`: a request about record t right after edit t. Each call of the model
  (loglikelihood, generation) with such requests replays the stream from the unedited state,
  answering as it goes.
- checkpoints, `1+10+100` (a retention curve): the stream is applied once, and the editor's
  state is kept after edit c for every checkpoint c below T. A request tagged with checkpoint c
  (`pairing.for_edit`) is answered in that state; untagged ones after the last edit. The lifelong
  tasks ask about the records edited so far (index < c) at each checkpoint.

Requests about no record (side-effect tasks) are always answered after the last edit.

With `progress_dir` (`resume_edits=DIR`, for `end`), the editor's `progress()` is saved there
after every edit as an artifact (`after-<k>/`); a session started again with the same editor,
parameters and stream continues after edit k instead of editing from the start, so a stream
longer than a machine's time slot still finishes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ce_bench import pairing
from ce_bench.artifacts import check_model, load_artifact, save_artifact
from ce_bench.lifelong.editor import Editor
from ce_bench.lifelong.records import EditStream

SCHEDULES = ("end", "immediate")  # besides checkpoints


def checkpoints(eval_at: str | int, num_edits: int) -> tuple[int, ...]:
    """The checkpoints of an `eval_at` schedule (none for `end` and `immediate`): positive edit
    counts joined by `+`, increasing, none past the stream's `num_edits`."""
    text = str(eval_at).strip()
    if text in SCHEDULES:
        return ()
    parts = text.split("+")
    if not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(
            f"eval_at must be end, immediate or checkpoints joined by '+' (e.g. 1+10+100),"
            f" got {eval_at!r}"
        )
    found = tuple(int(p) for p in parts)
    if list(found) != sorted(set(found)):
        raise ValueError(f"eval_at checkpoints must increase, got {eval_at!r}")
    if found[-1] > num_edits:
        raise ValueError(
            f"eval_at checkpoint {found[-1]} is past the stream's {num_edits} edits"
            " (num_edits=); a checkpoint counts the edits applied before it"
        )
    return found


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
        progress_dir: str | Path | None = None,
    ) -> None:
        self.checkpoints = checkpoints(eval_at, len(stream.records))
        if edited_already and (eval_at == "immediate" or self.checkpoints[:-1]):
            raise ValueError(
                f"eval_at={eval_at} answers between edits: give editor=..., not a saved edited"
                " state (intervention=DIR)"
            )
        if progress_dir is not None and (edited_already or str(eval_at) != "end"):
            raise ValueError(
                "resume_edits= continues an interrupted stream: it goes with editor=... and"
                f" eval_at=end, not with eval_at={eval_at} or a saved edited state"
            )
        self.progress_dir = Path(progress_dir) if progress_dir is not None else None
        self.editor, self.stream, self.eval_at = editor, stream, str(eval_at)
        self.model, self.tokenizer = model, tokenizer
        self.states: dict[int, dict[str, torch.Tensor]] = {}  # checkpoint -> editor state
        self.edit_stats: list[dict[str, float]] = []
        self.edit_seconds = 0.0
        self.after_stream: dict[str, Any] = {}
        self.editor.start_stream(model, tokenizer, stream.records)
        if not edited_already:
            self.apply_stream()

    def apply_stream(self, after_each: Callable[[int], None] | None = None) -> None:
        """Reset the editor and apply every edit in order, keeping the state at each checkpoint
        before the last edit; `after_each(t)` runs after edit t."""
        self.editor.reset()
        done, stats, earlier_seconds = self._resume()
        start, self.saving_seconds = time.perf_counter(), 0.0
        count = len(self.stream.records)
        bar = tqdm(
            self.stream.records[done:],
            desc=f"{self.editor.kind} edits",
            unit="edit",
            initial=done,
            total=count,
        )
        for t, record in enumerate(bar, start=done):
            stats.append(self.editor.apply_edit(self.model, self.tokenizer, record))
            bar.set_postfix({k: f"{v:.3g}" for k, v in stats[-1].items()})
            if t + 1 in self.checkpoints and t + 1 < count:
                self.states[t + 1] = self.editor.state()
            if after_each is not None:
                after_each(t)
            self._save_progress(stats, earlier_seconds + self._editing_since(start))
        self.edit_stats = stats
        self.edit_seconds = earlier_seconds + self._editing_since(start)
        self.after_stream = self.editor.stream_report(
            self.model, self.tokenizer, self.stream.records
        )

    def _editing_since(self, start: float) -> float:
        """Seconds spent editing since `start`, without saving progress."""
        return time.perf_counter() - start - self.saving_seconds

    def _save_progress(self, stats: list[dict[str, float]], seconds: float) -> None:
        """Save where the stream is, if asked to: into a new folder that becomes `after-<k>/`
        only once complete, then drop the older one (a run cut off while saving keeps it)."""
        if self.progress_dir is None:
            return
        progress = self.editor.progress()
        if progress is None:
            return
        begun = time.perf_counter()
        tensors, info = progress
        artifact = self.editor.to_artifact(self.model, self.model.name_or_path, self.stream)
        report = {
            **artifact.provenance.report,
            "session": self._session_json(),
            "edit_stats": stats,
            "edit_seconds": seconds,
            "info": info,
        }
        artifact = replace(
            artifact, tensors=tensors, provenance=replace(artifact.provenance, report=report)
        )
        newest = self.progress_dir / f"after-{self.editor.edits_applied}"
        writing = self.progress_dir / f".writing-{newest.name}"
        shutil.rmtree(writing, ignore_errors=True)
        save_artifact(artifact, writing)
        writing.replace(newest)
        for older in self._saved_progress()[:-1]:
            shutil.rmtree(older)
        self.saving_seconds += time.perf_counter() - begun

    def _saved_progress(self) -> list[Path]:
        """The `after-<k>/` folders in `progress_dir`, oldest first."""
        found = self.progress_dir.glob("after-*") if self.progress_dir else []
        done = [p for p in found if p.name.removeprefix("after-").isdigit()]
        return sorted(done, key=lambda path: int(path.name.removeprefix("after-")))

    def _resume(self) -> tuple[int, list[dict[str, float]], float]:
        """(edits done, their stats, their seconds) from the newest saved progress, after
        putting the editor in that state; nothing done if there is none."""
        saved = self._saved_progress()
        if not saved:
            return 0, [], 0.0
        artifact = load_artifact(saved[-1])
        check_model(artifact, self.model)  # another model's progress is an error
        report = artifact.provenance.report
        if report.get("session") != self._session_json():
            raise ValueError(
                f"{saved[-1]}: the edits saved there were made by another run"
                f" ({report.get('session')}), not by {self._session_json()}; remove the"
                " directory or give another resume_edits="
            )
        done = int(report["edits_applied"])
        self.editor.resume(artifact.tensors, report["info"], done)
        return done, list(report["edit_stats"]), float(report["edit_seconds"])

    def _session_json(self) -> dict[str, Any]:
        """`key()` as it reads back from JSON (what saved progress is compared with)."""
        return json.loads(json.dumps(self.key(), default=str))

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
        waiting: dict[int, list[int]] = {}  # edits applied before answering -> requests
        for i, tag in enumerate(tags):
            moment = self.moment(tag)
            if moment < len(self.stream.records):
                waiting.setdefault(moment, []).append(i)
        if not waiting:
            return list(compute(list(requests)))
        answers: dict[int, Any] = {}

        def answer_now(indices: list[int]) -> None:
            for i, value in zip(indices, compute([requests[i] for i in indices]), strict=True):
                answers[i] = value

        if self.eval_at == "immediate":
            self.apply_stream(lambda t: answer_now(waiting[t + 1]) if t + 1 in waiting else None)
        else:
            for moment, indices in sorted(waiting.items()):
                with self.state_at(moment):
                    answer_now(indices)
        rest = [i for i in range(len(requests)) if i not in answers]
        if rest:
            answer_now(rest)
        return [answers[i] for i in range(len(requests))]

    def moment(self, tag: dict[str, Any]) -> int:
        """How many edits are applied when the request with `tag` is answered."""
        about = pairing.edit_of(tag)
        if about is None or not pairing.is_enabled(tag):
            return len(self.stream.records)
        if self.eval_at == "immediate":
            return about[0] + 1
        checkpoint = pairing.checkpoint_of(tag)
        if checkpoint is None:
            return len(self.stream.records)
        if checkpoint not in self.checkpoints:
            raise StreamMismatch(
                f"a task asks about checkpoint {checkpoint}, but the model's schedule is"
                f" eval_at={self.eval_at}; state eval_at= once, in --model_args"
            )
        return checkpoint

    @contextmanager
    def state_at(self, checkpoint: int) -> Iterator[None]:
        """Inside the block the editor holds its state after `checkpoint` edits."""
        end = self.editor.state()
        self.editor.load_state(self.states[checkpoint])
        try:
            yield
        finally:
            self.editor.load_state(end)

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
