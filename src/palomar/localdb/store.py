"""The per-server LocalDB: a small SQLite file on tmpfs with the seed's three tables.

It caches GeoDB answers and remembers move state that only this server needs: during a group
move the users already moved (with where they went), and after it the "group moved to host X"
marker that answers stragglers with referrals. Losing it is harmless (it lives in /dev/shm),
so it favours speed: synchronous calls, WAL, no fsync. Several worker processes of one server
may share the file; each opens its own `LocalDB`.

Table and column names are the seed's `cluster-localdb` dict maps: `cluster_users`,
`cluster_groups`, `cluster_geodb_cache`. `last_update` and `expire_timestamp` are unix seconds.
One more table is palomar's own: `cluster_counts`, counters that triggers keep up to date on
every write, so reading "how many users does this server serve" costs one row, not a scan of a
table that holds a row per user (docs/design/periodic-tasks.md).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_PATH = "/dev/shm/palomar/localdb.sqlite"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS cluster_users (
        group_name TEXT NOT NULL,
        username TEXT NOT NULL,
        redirect_host TEXT,
        redirect_group TEXT,
        last_update INTEGER NOT NULL,
        PRIMARY KEY (group_name, username)
    )""",
    "CREATE INDEX IF NOT EXISTS cluster_users_username ON cluster_users (username)",
    """CREATE TABLE IF NOT EXISTS cluster_groups (
        name TEXT NOT NULL PRIMARY KEY,
        redirect_host TEXT,
        last_update INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS cluster_geodb_cache (
        cache_key TEXT NOT NULL PRIMARY KEY,
        value TEXT NOT NULL,
        expire_timestamp INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS cluster_geodb_cache_expire ON cluster_geodb_cache (expire_timestamp)",
    "CREATE INDEX IF NOT EXISTS cluster_users_last_update ON cluster_users (last_update)",
    """CREATE TABLE IF NOT EXISTS cluster_counts (
        name TEXT NOT NULL PRIMARY KEY,
        n INTEGER NOT NULL
    )""",
)

USERS_SERVED = "users_served"
"""`cluster_counts` row: the `cluster_users` rows without a redirect (users served here)."""

_COUNT_TRIGGERS = (
    f"""CREATE TRIGGER IF NOT EXISTS cluster_users_served_insert AFTER INSERT ON cluster_users
        WHEN NEW.redirect_host IS NULL
        BEGIN UPDATE cluster_counts SET n = n + 1 WHERE name = '{USERS_SERVED}'; END""",
    f"""CREATE TRIGGER IF NOT EXISTS cluster_users_served_delete AFTER DELETE ON cluster_users
        WHEN OLD.redirect_host IS NULL
        BEGIN UPDATE cluster_counts SET n = n - 1 WHERE name = '{USERS_SERVED}'; END""",
    f"""CREATE TRIGGER IF NOT EXISTS cluster_users_served_update AFTER UPDATE OF redirect_host ON cluster_users
        WHEN (OLD.redirect_host IS NULL) <> (NEW.redirect_host IS NULL)
        BEGIN UPDATE cluster_counts SET n = n + (CASE WHEN NEW.redirect_host IS NULL THEN 1 ELSE -1 END)
              WHERE name = '{USERS_SERVED}'; END""",
)
"""Keep USERS_SERVED exact on every write. `user_put` is an upsert, not INSERT OR REPLACE: a
REPLACE deletes without firing delete triggers (unless recursive_triggers is on), which would
count a replaced row twice."""

CACHE_PURGE_BATCH = 1000
"""Most expired cache rows one purge deletes: a purge runs inside a login's `cache_put`."""


class LocalDBError(Exception):
    """The LocalDB cannot be opened or was called with bad arguments."""


@dataclass(frozen=True)
class LocalUser:
    """A `cluster_users` row: a user of `group` this server handled, and where it was sent."""

    group: str
    username: str
    redirect_host: str | None
    redirect_group: str | None
    last_update: int


@dataclass(frozen=True)
class LocalGroup:
    """A `cluster_groups` row: a group this server knows about, and where it was moved to."""

    name: str
    redirect_host: str | None
    last_update: int


def mask_to_glob(mask: str) -> str:
    """A doveadm-style mask (`*` any run, `?` one character) as an SQLite GLOB pattern."""
    out = []
    for ch in mask:
        if ch in "*?":
            out.append(ch)
        elif ch in "[]":
            out.append(f"[{ch}]")
        else:
            out.append(ch)
    return "".join(out)


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise LocalDBError(f"{what} must be a non-empty string")
    if "\x00" in value:
        raise LocalDBError(f"{what} must not contain NUL")
    return value


def _opt(value: object, what: str) -> str | None:
    if value is None:
        return None
    return _name(value, what)


def _now(now: int | None) -> int:
    if now is None:
        return int(time.time())
    if not isinstance(now, int) or isinstance(now, bool):
        raise LocalDBError("now must be unix seconds (int)")
    return now


def _retry_locked(fn: Callable[[], object], timeout_ms: int) -> None:
    """Switching a new file to WAL needs a moment alone with it; sibling workers may be opening it too."""
    deadline = time.monotonic() + timeout_ms / 1000
    delay = 0.005
    while True:
        try:
            fn()
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


class LocalDB:
    """One server's LocalDB file. Not thread-safe: one object per thread or process."""

    def __init__(self, path: str = DEFAULT_PATH, *, busy_timeout_ms: int = 5_000, stale_keep_secs: int = 0) -> None:
        self.path = path
        self.stale_keep_secs = stale_keep_secs
        """Seconds an expired cache row is kept for `cache_get_stale` (serving through a GeoDB outage)."""
        self._purged_at: int | None = None
        """The `now` of the last expiry purge (`cache_put` purges at most once per second)."""
        try:
            if path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self._con = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise LocalDBError(f"LocalDB {path}: cannot open: {exc}") from exc
        try:
            self._con.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            _retry_locked(lambda: self._con.execute("PRAGMA journal_mode = WAL").fetchone(), busy_timeout_ms)
            self._con.execute("PRAGMA synchronous = OFF")  # tmpfs: durability is not the point
            self._con.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA:
                self._con.execute(stmt)
            self._init_counts()
            self._con.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._con.in_transaction:
                self._con.execute("ROLLBACK")
            self._con.close()
            raise LocalDBError(f"LocalDB {path}: cannot initialise: {exc}") from exc

    def _init_counts(self) -> None:
        """Create the counters and their triggers (a file from before them is counted once, here,
        before the service serves anything; from then on the triggers keep the count)."""
        if self._con.execute("SELECT 1 FROM cluster_counts WHERE name = ?", (USERS_SERVED,)).fetchone() is None:
            self._con.execute(
                "INSERT INTO cluster_counts (name, n) SELECT ?, COUNT(*) FROM cluster_users "
                "WHERE redirect_host IS NULL", (USERS_SERVED,))
        for stmt in _COUNT_TRIGGERS:
            self._con.execute(stmt)

    def __repr__(self) -> str:
        return f"LocalDB(path={self.path!r})"

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> LocalDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exec(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._con.execute(sql, params)
        except sqlite3.Error as exc:
            raise LocalDBError(f"LocalDB {self.path}: {exc}") from exc

    # ------------------------------------------------------------ cluster_users

    def user_get(self, group: str, username: str) -> LocalUser | None:
        row = self._exec(
            "SELECT group_name, username, redirect_host, redirect_group, last_update FROM cluster_users "
            "WHERE group_name = ? AND username = ?",
            (_name(group, "group"), _name(username, "username")),
        ).fetchone()
        return LocalUser(*row) if row else None

    def user_put(
        self,
        group: str,
        username: str,
        *,
        redirect_host: str | None = None,
        redirect_group: str | None = None,
        now: int | None = None,
    ) -> LocalUser:
        """Record (or replace) a user of `group`; `last_update` becomes `now`."""
        user = LocalUser(
            _name(group, "group"),
            _name(username, "username"),
            _opt(redirect_host, "redirect_host"),
            _opt(redirect_group, "redirect_group"),
            _now(now),
        )
        self._exec(
            "INSERT INTO cluster_users "
            "(group_name, username, redirect_host, redirect_group, last_update) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (group_name, username) DO UPDATE SET redirect_host = excluded.redirect_host, "
            "redirect_group = excluded.redirect_group, last_update = excluded.last_update",
            (user.group, user.username, user.redirect_host, user.redirect_group, user.last_update),
        )
        return user

    def users_served(self) -> int:
        """How many `cluster_users` rows have no redirect: the users this server serves (a user
        recorded in two groups, for the moment of a user move, counts twice). One row read."""
        row = self._exec("SELECT n FROM cluster_counts WHERE name = ?", (USERS_SERVED,)).fetchone()
        return int(row[0]) if row else 0

    def users_not_updated_since(self, cutoff: int, limit: int) -> list[LocalUser]:
        """At most `limit` rows whose `last_update` is before `cutoff`, oldest first (an index
        range: the cost follows `limit`, not the table)."""
        return [
            LocalUser(*r)
            for r in self._exec(
                "SELECT group_name, username, redirect_host, redirect_group, last_update FROM cluster_users "
                "WHERE last_update < ? ORDER BY last_update LIMIT ?",
                (_now(cutoff), int(limit)),
            )
        ]

    def users_remove(self, keys: list[tuple[str, str]]) -> None:
        """Delete the (group, username) rows in one transaction."""
        self._many("DELETE FROM cluster_users WHERE group_name = ? AND username = ?", keys)

    def users_touch(self, keys: list[tuple[str, str]], now: int) -> None:
        """Set `last_update` of the (group, username) rows to `now`, keeping their redirects."""
        self._many("UPDATE cluster_users SET last_update = ? WHERE group_name = ? AND username = ?",
                   [(_now(now), group, user) for group, user in keys])

    def _many(self, sql: str, rows: list[tuple]) -> None:
        if not rows:
            return
        try:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                self._con.executemany(sql, rows)
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LocalDBError(f"LocalDB {self.path}: {exc}") from exc

    def user_remove(self, group: str, username: str) -> bool:
        cur = self._exec(
            "DELETE FROM cluster_users WHERE group_name = ? AND username = ?",
            (_name(group, "group"), _name(username, "username")),
        )
        return cur.rowcount > 0

    def user_list(self, mask: str | None = None) -> list[LocalUser]:
        """Every cached user whose username matches `mask` (all when None), by group then name."""
        sql = "SELECT group_name, username, redirect_host, redirect_group, last_update FROM cluster_users"
        params: tuple = ()
        if mask is not None:
            sql += " WHERE username GLOB ?"
            params = (mask_to_glob(_name(mask, "mask")),)
        return [LocalUser(*r) for r in self._exec(sql + " ORDER BY group_name, username", params)]

    def users_of_group(self, group: str) -> list[LocalUser]:
        """The users recorded for `group` (during a move: the ones already moved), by name."""
        return [
            LocalUser(*r)
            for r in self._exec(
                "SELECT group_name, username, redirect_host, redirect_group, last_update FROM cluster_users "
                "WHERE group_name = ? ORDER BY username",
                (_name(group, "group"),),
            )
        ]

    def users_of_group_remove(self, group: str) -> int:
        """Forget every user of `group` (a finished or restarted move); returns how many."""
        return self._exec("DELETE FROM cluster_users WHERE group_name = ?", (_name(group, "group"),)).rowcount

    # ------------------------------------------------------------ cluster_groups

    def group_get(self, name: str) -> LocalGroup | None:
        row = self._exec(
            "SELECT name, redirect_host, last_update FROM cluster_groups WHERE name = ?",
            (_name(name, "group"),),
        ).fetchone()
        return LocalGroup(*row) if row else None

    def group_put(self, name: str, *, redirect_host: str | None = None, now: int | None = None) -> LocalGroup:
        group = LocalGroup(_name(name, "group"), _opt(redirect_host, "redirect_host"), _now(now))
        self._exec(
            "INSERT OR REPLACE INTO cluster_groups (name, redirect_host, last_update) VALUES (?, ?, ?)",
            (group.name, group.redirect_host, group.last_update),
        )
        return group

    def group_remove(self, name: str) -> bool:
        return self._exec("DELETE FROM cluster_groups WHERE name = ?", (_name(name, "group"),)).rowcount > 0

    def group_list(self, mask: str | None = None) -> list[LocalGroup]:
        sql = "SELECT name, redirect_host, last_update FROM cluster_groups"
        params: tuple = ()
        if mask is not None:
            sql += " WHERE name GLOB ?"
            params = (mask_to_glob(_name(mask, "mask")),)
        return [LocalGroup(*r) for r in self._exec(sql + " ORDER BY name", params)]

    def groups_moving_here(self) -> list[LocalGroup]:
        """The groups with a move marker (`redirect_host` NULL): moves this server runs or ran."""
        return [LocalGroup(*r) for r in self._exec(
            "SELECT name, redirect_host, last_update FROM cluster_groups WHERE redirect_host IS NULL ORDER BY name")]

    def groups_redirected_before(self, cutoff: int, limit: int) -> list[LocalGroup]:
        """At most `limit` straggler redirects written before `cutoff`, oldest first."""
        return [LocalGroup(*r) for r in self._exec(
            "SELECT name, redirect_host, last_update FROM cluster_groups WHERE redirect_host IS NOT NULL "
            "AND last_update < ? ORDER BY last_update LIMIT ?", (_now(cutoff), int(limit)))]

    # ------------------------------------------------------------ cluster_geodb_cache

    def cache_get(self, key: str, now: int | None = None) -> str | None:
        """The cached value, or None when absent or expired."""
        key, now = _name(key, "cache key"), _now(now)
        row = self._exec(
            "SELECT value, expire_timestamp FROM cluster_geodb_cache WHERE cache_key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        value, expires = row
        if expires <= now:
            if expires + self.stale_keep_secs <= now:
                self._exec(
                    "DELETE FROM cluster_geodb_cache WHERE cache_key = ? AND expire_timestamp <= ?",
                    (key, now - self.stale_keep_secs),
                )
            return None
        return value

    def cache_get_stale(self, key: str, now: int | None = None) -> tuple[str, int] | None:
        """The cached value and its expiry time even when expired (within `stale_keep_secs`):
        what the caller may still use while the GeoDB cannot answer."""
        key, now = _name(key, "cache key"), _now(now)
        row = self._exec(
            "SELECT value, expire_timestamp FROM cluster_geodb_cache WHERE cache_key = ? AND expire_timestamp > ?",
            (key, now - self.stale_keep_secs),
        ).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def cache_put(self, key: str, value: str, ttl_secs: int, now: int | None = None) -> None:
        """Cache `value` until `now + ttl_secs`; also purges whatever else has expired."""
        self.cache_put_many([(key, value)], ttl_secs, now)

    def cache_put_many(self, items: list[tuple[str, str]], ttl_secs: int, now: int | None = None) -> None:
        """`cache_put` of several (key, value) pairs in one transaction (a batch of LMTP recipients)."""
        now = _now(now)
        if not isinstance(ttl_secs, int) or isinstance(ttl_secs, bool) or ttl_secs <= 0:
            raise LocalDBError("cache ttl_secs must be a positive int")
        if not all(isinstance(value, str) for _, value in items):
            raise LocalDBError("cache value must be a string")
        rows = [(_name(key, "cache key"), value, now + ttl_secs) for key, value in items]
        sql = "INSERT OR REPLACE INTO cluster_geodb_cache (cache_key, value, expire_timestamp) VALUES (?, ?, ?)"
        if len(rows) == 1:
            self._exec(sql, rows[0])
        else:
            self._many(sql, rows)
        if now != self._purged_at:  # expiry has one-second steps: a second purge within it finds nothing
            self.cache_purge(now, limit=CACHE_PURGE_BATCH)

    def cache_delete(self, key: str) -> bool:
        cur = self._exec("DELETE FROM cluster_geodb_cache WHERE cache_key = ?", (_name(key, "cache key"),))
        return cur.rowcount > 0

    def cache_purge(self, now: int | None = None, *, limit: int | None = None) -> int:
        """Drop the cache rows expired longer than `stale_keep_secs` ago (at most `limit`, oldest
        first, when given); returns how many. A purge that reached `limit` is not counted as done
        for its second, so the next `cache_put` goes on with the rest."""
        now = _now(now)
        cutoff = now - self.stale_keep_secs
        if limit is None:
            cur = self._exec("DELETE FROM cluster_geodb_cache WHERE expire_timestamp <= ?", (cutoff,))
        else:
            cur = self._exec(
                "DELETE FROM cluster_geodb_cache WHERE rowid IN (SELECT rowid FROM cluster_geodb_cache "
                "WHERE expire_timestamp <= ? ORDER BY expire_timestamp LIMIT ?)", (cutoff, int(limit)))
        if limit is None or cur.rowcount < limit:
            self._purged_at = now
        return cur.rowcount

    def cache_clear(self) -> int:
        """Forget the whole GeoDB cache (`geodb refresh`); returns how many rows went."""
        return self._exec("DELETE FROM cluster_geodb_cache").rowcount
