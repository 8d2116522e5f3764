"""The controller's memory: a bounded load history per backend, recent moves and decisions, timers.

The planners need more than one snapshot: balance averages the last samples and waits for a
warm-up, every feature's rate limit counts its recent moves, site-failover needs "unreachable
since". That memory lives here, bounded (`controller_history_samples` per backend, moves of the
last day, the last `RECENT_DECISIONS` decisions), and is written through to a small SQLite file
(`controller_history_path`) so a restarted controller neither starts its warm-up again nor
forgets its rate limits. The web UI and the REST API show this same window (the load chart, the
decision list): one history, so what the operator sees is what the planners decided from. No
time-series database: the whole window is a few hundred kilobytes per hundred backends.
"""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass
from pathlib import Path
from uuid import UUID

from palomar.backend.load_sample import SAMPLED_AT
from palomar.cluster.model import Backend, Stat
from palomar.cluster.planning import LoadSample, MoveRecord

MOVE_MEMORY_SECS = 86_400.0
"""Moves older than a day are forgotten: no rate limit looks further back than an hour."""
RECENT_DECISIONS = 200
"""Decisions kept for the web UI and the API."""
USERS_APPROX = "users_approx"
"""A sample's extra value: the backend's `user_count_approx` when the sample was taken (for the chart)."""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS samples (backend_id TEXT, at REAL, data TEXT)",
    "CREATE INDEX IF NOT EXISTS samples_backend ON samples (backend_id, at)",
    "CREATE TABLE IF NOT EXISTS seen (backend_id TEXT PRIMARY KEY, count INTEGER)",
    "CREATE TABLE IF NOT EXISTS moves (feature TEXT, subject TEXT, source TEXT, dest TEXT, at REAL)",
    "CREATE TABLE IF NOT EXISTS timers (name TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS hosts (backend_id TEXT PRIMARY KEY, host TEXT)",
    "CREATE TABLE IF NOT EXISTS decisions (at REAL, feature TEXT, state TEXT, backend TEXT, action TEXT,"
    " reason TEXT, executed INTEGER)",
)


@dataclass(frozen=True)
class DecisionRecord:
    """One feature decision as the web UI and the API list it."""

    at: float
    feature: str
    state: str
    backend: str
    action: str
    reason: str
    executed: bool


class History:
    """Load samples, recent moves and named timers; `path=None` keeps them in memory only (tests)."""

    def __init__(self, path: str | None, samples_per_backend: int) -> None:
        self.limit = max(samples_per_backend, 1)
        self.samples: dict[UUID, deque[LoadSample]] = {}
        self.seen: dict[UUID, int] = {}
        self.moves: list[MoveRecord] = []
        self.timers: dict[str, str] = {}
        self.hosts: dict[UUID, str] = {}
        self.decisions: deque[DecisionRecord] = deque(maxlen=RECENT_DECISIONS)
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
        self.hosts = {UUID(b): h for b, h in self._db.execute("SELECT backend_id, host FROM hosts")}
        self.decisions.extend(DecisionRecord(at, f, st, b, a, r, bool(x)) for at, f, st, b, a, r, x in self._db.execute(
            "SELECT at, feature, state, backend, action, reason, executed FROM decisions ORDER BY at"))

    def _window(self, backend_id: UUID) -> deque[LoadSample]:
        window = self.samples.get(backend_id)
        if window is None:
            window = self.samples[backend_id] = deque(maxlen=self.limit)
        return window

    def observe(self, stats: Mapping[UUID, Iterable[Stat]], users_approx: Mapping[UUID, int | None] | None = None
                ) -> int:
        """Add each backend's stats as a sample when it is a new one (its `load_sampled_at` changed),
        with the backend's `users_approx` when known.

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
            users = (users_approx or {}).get(backend_id)
            if users is not None:
                values[USERS_APPROX] = float(users)
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

    def keep_backends(self, backends: Iterable[Backend]) -> None:
        """Remember the backends' host names (the chart's labels) and drop the history of
        backends that no longer exist."""
        current = {b.id: b.host for b in backends}
        for backend_id in (set(self.samples) | set(self.hosts)) - set(current):
            self.samples.pop(backend_id, None)
            self.seen.pop(backend_id, None)
            self.hosts.pop(backend_id, None)
            if self._db is not None:
                for table in ("samples", "seen", "hosts"):
                    self._db.execute(f"DELETE FROM {table} WHERE backend_id = ?", (str(backend_id),))
        for backend_id, host in current.items():
            if self.hosts.get(backend_id) != host:
                self.hosts[backend_id] = host
                if self._db is not None:
                    self._db.execute("INSERT OR REPLACE INTO hosts VALUES (?, ?)", (str(backend_id), host))

    def metrics(self) -> list[str]:
        """Every sampled name, sorted (the chart's choices)."""
        return sorted({k for window in self.samples.values() for sample in window for k in sample.values
                       if k != SAMPLED_AT})

    def series(self, metric: str) -> dict[str, list[tuple[float, float]]]:
        """host -> [(sample time, value)] of one metric, oldest first (the chart's lines)."""
        out: dict[str, list[tuple[float, float]]] = {}
        for backend_id, window in self.samples.items():
            points = [(sample.at, sample.values[metric]) for sample in window if metric in sample.values]
            if points:
                out[self.hosts.get(backend_id, str(backend_id))] = points
        return out

    def decided(self, record: DecisionRecord) -> None:
        """Add a decision to the list the web UI and the API show, bounded to the newest ones."""
        self.decisions.append(record)
        if self._db is not None:
            self._db.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?)", astuple(record))
            if len(self.decisions) == RECENT_DECISIONS:
                self._db.execute("DELETE FROM decisions WHERE at < ?", (self.decisions[0].at,))

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
