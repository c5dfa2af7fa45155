"""A persistent store of judge replies that gave scores (sqlite), so none is paid for twice.

A reply is keyed by everything that determines it: the judge's reply settings (model, prompt
version, server, sampling: whatever its backend's `reply_settings()` names), the emotion and the
two sentences in the order shown (the A.5 prompt is asked in both orders, and each order is its
own reply). Only replies that parse into scores are stored, each as soon as it arrives, so a run
killed half way and started again only asks for what it has not got. Failures (failed requests,
empty or unparseable replies) are not stored, so they are asked again next run.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ce_bench.runtime import ce_bench_home

CACHE_FILE = "judge_cache.sqlite"

# Version 2 of the table: the key gained the judge's reply settings (server, temperature,
# max_tokens). Version 1's `replies` table, still in older cache files, is never read: its rows
# do not say which server answered them.
_TABLE = "replies_v2"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    settings TEXT NOT NULL,
    emotion TEXT NOT NULL,
    first TEXT NOT NULL,
    second TEXT NOT NULL,
    reply TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (settings, emotion, first, second)
)
"""

ReplySettings = Mapping[str, str | int | float]


def default_cache_path() -> Path:
    """`$CE_BENCH_HOME/judge_cache.sqlite` (default `~/.cache/ce_bench/judge_cache.sqlite`)."""
    return ce_bench_home() / CACHE_FILE


@dataclass(frozen=True)
class ReplyKey:
    """What one judge reply depends on: the judge's `settings` (see `LLMJudge.reply_settings`)
    and the request; `first` is shown as Sentence 1."""

    settings: ReplySettings
    emotion: str
    first: str
    second: str


@dataclass(frozen=True)
class Completion:
    """A judge model's raw reply and what it cost."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ReplyCache:
    """Judge replies on disk. One connection guarded by a lock: the judge's thread pool shares it,
    and the lock costs nothing next to a network round trip.

    Example:
        >>> cache = ReplyCache(tmp_path / "judge.sqlite")
        >>> key = ReplyKey({"model": "gpt-4o"}, "anger", "I went home.", "I was furious.")
        >>> cache.put(key, Completion("The overall score of Sentence 1: 3 ..."))
        >>> cache.get(key).text
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, each put is durable at once.
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, timeout=30.0, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")  # other processes may read while we write
        self._db.execute(_SCHEMA)

    def get(self, key: ReplyKey) -> Completion | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT reply, prompt_tokens, completion_tokens FROM {_TABLE} "
                "WHERE settings = ? AND emotion = ? AND first = ? AND second = ?",
                _key_values(key),
            ).fetchone()
        return Completion(*row) if row is not None else None

    def put(self, key: ReplyKey, completion: Completion) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT OR REPLACE INTO {_TABLE} (settings, emotion, first, second, reply, "
                "prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    *_key_values(key),
                    completion.text,
                    completion.prompt_tokens,
                    completion.completion_tokens,
                ),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0]


def _key_values(key: ReplyKey) -> tuple[str, str, str, str]:
    """The key as stored; settings as canonical JSON, so equal settings give equal text."""
    settings = json.dumps(dict(key.settings), sort_keys=True, separators=(",", ":"))
    return settings, key.emotion, key.first, key.second
