"""The controller's memory: a bounded load history per backend, recent moves, and timers.

The planners need more than one snapshot: balance averages the last samples and waits for a
warm-up, every feature's rate limit counts its recent moves, site-failover needs "unreachable
since". That memory lives here, bounded (`controller_history_samples` per backend, moves of the
last day), and is written through to a small SQLite file (`controller_history_path`) so a
restarted controller neither starts its warm-up again nor forgets its rate limits. No
time-series database: the whole window is a few hundred kilobytes per hundred backends.
"""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from uuid import UUID

from palomar.backend.load_sample import SAMPLED_AT
from palomar.cluster.model import Stat
from palomar.cluster.planning import LoadSample, MoveRecord

MOVE_MEMORY_SECS = 86_400.0
"""Moves older than a day are forgotten: no rate limit looks further back than an hour."""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS samples (backend_id TEXT, at REAL, data TEXT)",
    "CREATE INDEX IF NOT EXISTS samples_backend ON samples (backend_id, at)",
    "CREATE TABLE IF NOT EXISTS seen (backend_id TEXT PRIMARY KEY, count INTEGER)",
    "CREATE TABLE IF NOT EXISTS moves (feature TEXT, subject TEXT, source TEXT, dest TEXT, at REAL)",
    "CREATE TABLE IF NOT EXISTS timers (name TEXT PRIMARY KEY, value TEXT)",
)


class History:
    """Load samples, recent moves and named timers; `path=None` keeps them in memory only (tests)."""

    def __init__(self, path: str | None, samples_per_backend: int) -> None:
        self.limit = max(samples_per_backend, 1)
        self.samples: dict[UUID, deque[LoadSample]] = {}
        self.seen: dict[UUID, int] = {}
        self.moves: list[MoveRecord] = []
        self.timers: dict[str, str] = {}
        self._db: sqlite3.Connection | None = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._load()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _load(self) -> None:
        assert self._db is not None
        for backend_id, at, data in self._db.execute("SELECT backend_id, at, data FROM samples ORDER BY at"):
            self._window(UUID(backend_id)).append(LoadSample(at, json.loads(data)))
        self.seen = {UUID(b): int(c) for b, c in self._db.execute("SELECT backend_id, count FROM seen")}
        self.moves = [MoveRecord(f, s, None if src == "" else UUID(src), UUID(d), at)
                      for f, s, src, d, at in self._db.execute(
                          "SELECT feature, subject, source, dest, at FROM moves ORDER BY at")]
        self.timers = dict(self._db.execute("SELECT name, value FROM timers"))

    def _window(self, backend_id: UUID) -> deque[LoadSample]:
        window = self.samples.get(backend_id)
        if window is None:
            window = self.samples[backend_id] = deque(maxlen=self.limit)
        return window

    def observe(self, stats: Mapping[UUID, Iterable[Stat]]) -> int:
        """Add each backend's stats as a sample when it is a new one (its `load_sampled_at` changed).

        Returns how many samples were added. Rows without `load_sampled_at` (a backend that
        predates load sampling) add nothing.
        """
        added = 0
        for backend_id, rows in stats.items():
            values = {s.key: s.value for s in rows if s.type == "gauge"}
            at = values.get(SAMPLED_AT)
            window = self._window(backend_id)
            if at is None or (window and window[-1].at >= at):
                continue
            window.append(LoadSample(at, values))
            self.seen[backend_id] = self.seen.get(backend_id, 0) + 1
            added += 1
            if self._db is not None:
                self._db.execute("INSERT INTO samples VALUES (?, ?, ?)", (str(backend_id), at, json.dumps(values)))
                self._db.execute("INSERT OR REPLACE INTO seen VALUES (?, ?)",
                                 (str(backend_id), self.seen[backend_id]))
                if len(window) == self.limit:  # drop what fell out of the window
                    self._db.execute("DELETE FROM samples WHERE backend_id = ? AND at < ?",
                                     (str(backend_id), window[0].at))
        return added

    def forget_backends(self, keep: Iterable[UUID]) -> None:
        """Drop the history of backends that no longer exist."""
        gone = set(self.samples) - set(keep)
        for backend_id in gone:
            self.samples.pop(backend_id, None)
            self.seen.pop(backend_id, None)
            if self._db is not None:
                self._db.execute("DELETE FROM samples WHERE backend_id = ?", (str(backend_id),))
                self._db.execute("DELETE FROM seen WHERE backend_id = ?", (str(backend_id),))

    def record_move(self, move: MoveRecord) -> None:
        self.moves.append(move)
        cutoff = move.at - MOVE_MEMORY_SECS
        self.moves = [m for m in self.moves if m.at >= cutoff]
        if self._db is not None:
            self._db.execute("INSERT INTO moves VALUES (?, ?, ?, ?, ?)",
                             (move.feature, move.subject, "" if move.source is None else str(move.source),
                              str(move.dest), move.at))
            self._db.execute("DELETE FROM moves WHERE at < ?", (cutoff,))

    def set_timer(self, name: str, value: str | None) -> None:
        """A named value that must survive a restart (e.g. "site X unreachable since")."""
        if value is None:
            self.timers.pop(name, None)
        else:
            self.timers[name] = value
        if self._db is not None:
            if value is None:
                self._db.execute("DELETE FROM timers WHERE name = ?", (name,))
            else:
                self._db.execute("INSERT OR REPLACE INTO timers VALUES (?, ?)", (name, value))
