"""A persistent store of paid-for judge replies (sqlite), so no request is ever paid for twice.

A reply is keyed by everything that determines it: judge model, prompt version, emotion and the
two sentences in the order shown (the A.5 prompt is asked in both orders, and each order is its
own reply). Every reply is committed as soon as it arrives, so a run killed half way and started
again only asks for what it has not got. Replies that fail to parse are stored too (they were
paid for); failed requests are not, so they are tried again next run.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from ce_bench.models.embedded import ce_bench_home

CACHE_FILE = "judge_cache.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    emotion TEXT NOT NULL,
    first TEXT NOT NULL,
    second TEXT NOT NULL,
    reply TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (model, prompt_version, emotion, first, second)
)
"""


def default_cache_path() -> Path:
    """`$CE_BENCH_HOME/judge_cache.sqlite` (default `~/.cache/ce_bench/judge_cache.sqlite`)."""
    return ce_bench_home() / CACHE_FILE


@dataclass(frozen=True)
class ReplyKey:
    """What one judge reply depends on; `first` is shown as Sentence 1."""

    model: str
    prompt_version: str
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
                "SELECT reply, prompt_tokens, completion_tokens FROM replies WHERE model = ? "
                "AND prompt_version = ? AND emotion = ? AND first = ? AND second = ?",
                _key_values(key),
            ).fetchone()
        return Completion(*row) if row is not None else None

    def put(self, key: ReplyKey, completion: Completion) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO replies (model, prompt_version, emotion, first, second, "
                "reply, prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *_key_values(key),
                    completion.text,
                    completion.prompt_tokens,
                    completion.completion_tokens,
                ),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]


def _key_values(key: ReplyKey) -> tuple[str, str, str, str, str]:
    return key.model, key.prompt_version, key.emotion, key.first, key.second
