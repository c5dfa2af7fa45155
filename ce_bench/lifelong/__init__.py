"""Lifelong knowledge editing (MicroEdit, Knowledge Microscope): edit records, editors, and the
session that applies an edit stream inside `edited_hf` before (or between) the answers of a run."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch

from ce_bench.artifacts import Artifact
from ce_bench.interventions import INTERVENTIONS, Intervention
from ce_bench.lifelong import ft, grace, memit, mend, microedit, rome, wise  # noqa: F401
from ce_bench.lifelong.editor import Editor, editor_class, new_editor
from ce_bench.lifelong.records import EditStream, load_stream
from ce_bench.lifelong.session import LifelongSession, StreamMismatch

__all__ = [
    "EditStream",
    "Editor",
    "LifelongSession",
    "StreamMismatch",
    "load_stream",
    "editor_parameters",
    "editors_taking",
    "new_editor",
    "start_session",
    "take_editor_params",
]


def editor_parameters(editor: str) -> list[str]:
    """The names of an editor's parameters (model_args when `editor=` names it)."""
    return [f.name for f in fields(editor_class(editor).Params)]


def editors_taking(name: str) -> list[str]:
    """The editors that have a parameter called `name`."""
    editors = sorted(k for k, c in INTERVENTIONS.items() if issubclass(c, Editor))
    return [e for e in editors if name in editor_parameters(e)]


def take_editor_params(editor: str | None, model_args: dict[str, Any]) -> dict[str, Any]:
    """Remove the editor's parameters (e.g. `layer`, `lr`) from `model_args` and return them."""
    if not editor:
        return {}
    names = set(editor_parameters(editor))
    return {k: model_args.pop(k) for k in list(model_args) if k in names}


def start_session(
    fresh: Editor | None,
    loaded: list[tuple[Artifact, Intervention]],
    edits: str | None,
    num_edits: int | None,
    eval_at: str,
    model: torch.nn.Module,
    tokenizer: Any,
    progress_dir: str | None = None,
) -> LifelongSession:
    """The session of a model built with `editor=` (`fresh`) or with a saved edited state among
    the `loaded` artifacts; its stream is `edits` cut to `num_edits`, continued from
    `progress_dir` if an earlier run saved its progress there."""
    if not edits:
        raise ValueError("a lifelong run needs edits= (zsre, selfcheckgpt, or a file)")
    stream = load_stream(edits, num_edits)
    if fresh is not None:
        return LifelongSession(fresh, stream, model, tokenizer, eval_at, progress_dir=progress_dir)
    saved = [(a, i) for a, i in loaded if isinstance(i, Editor)]
    if len(saved) != 1:
        raise ValueError(
            "edits= needs editor=NAME (edit now) or exactly one saved edited state"
            f" (intervention=DIR); got {len(saved)} saved editors"
        )
    artifact, editor = saved[0]
    recorded = artifact.provenance.report.get("stream", {})
    if recorded.get("digest") != stream.digest:
        raise StreamMismatch(
            f"{artifact.source}: the saved state edited {recorded.get('edits')!r} with"
            f" num_edits={recorded.get('num_edits')} (stream {recorded.get('digest')}), but"
            f" edits={edits!r} num_edits={num_edits} is stream {stream.digest}"
        )
    editor.edits_applied = recorded.get("num_edits", 0)
    return LifelongSession(
        editor, stream, model, tokenizer, eval_at, edited_already=True, progress_dir=progress_dir
    )
