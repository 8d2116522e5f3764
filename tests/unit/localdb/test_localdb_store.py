"""The LocalDB: the seed's tables, masks, cache expiry, file modes, sharing between processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from palomar.localdb import LocalDB, LocalDBError, LocalGroup, LocalUser, mask_to_glob
from sqlite_workers import put_users


@pytest.fixture
def db(tmp_path: Path) -> Iterator[LocalDB]:
    with LocalDB(str(tmp_path / "shm" / "localdb.sqlite")) as local:
        yield local


def test_file_has_the_seed_tables_and_private_modes(tmp_path: Path) -> None:
    path = tmp_path / "shm" / "palomar" / "localdb.sqlite"
    with LocalDB(str(path)):
        pass
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as raw:
        cols = {
            t: [r[1] for r in raw.execute(f"PRAGMA table_info({t})")]
            for t in ("cluster_users", "cluster_groups", "cluster_geodb_cache")
        }
    assert cols == {
        "cluster_users": ["group_name", "username", "redirect_host", "redirect_group", "last_update"],
        "cluster_groups": ["name", "redirect_host", "last_update"],
        "cluster_geodb_cache": ["cache_key", "value", "expire_timestamp"],
    }


def test_user_round_trip_and_replace(db: LocalDB) -> None:
    assert db.user_get("default-1", "alice") is None
    put = db.user_put("default-1", "alice", redirect_host="be2.example", now=1_700_000_000)
    assert put == LocalUser("default-1", "alice", "be2.example", None, 1_700_000_000)
    assert db.user_get("default-1", "alice") == put
    db.user_put("default-1", "alice", redirect_group="default-9", now=1_700_000_100)
    expected = LocalUser("default-1", "alice", None, "default-9", 1_700_000_100)
    assert db.user_get("default-1", "alice") == expected
    assert db.user_get("default-2", "alice") is None  # keyed by (group, user)


def test_last_update_defaults_to_now(db: LocalDB) -> None:
    before = int(time.time())
    user = db.user_put("g", "u")
    assert before <= user.last_update <= int(time.time())


def test_user_list_mask_and_group_members(db: LocalDB) -> None:
    for group, user in [("g2", "bob"), ("g1", "alice"), ("g1", "al[x]"), ("g1", "carol"), ("g2", "alan")]:
        db.user_put(group, user, now=1)
    assert [(u.group, u.username) for u in db.user_list()] == [
        ("g1", "al[x]"), ("g1", "alice"), ("g1", "carol"), ("g2", "alan"), ("g2", "bob"),
    ]
    assert [u.username for u in db.user_list("al*")] == ["al[x]", "alice", "alan"]
    assert [u.username for u in db.user_list("al[x]")] == ["al[x]"]  # brackets are literal
    assert [u.username for u in db.user_list("?ob")] == ["bob"]
    assert db.user_list("zed*") == []
    assert [u.username for u in db.users_of_group("g1")] == ["al[x]", "alice", "carol"]
    assert db.user_remove("g1", "alice")
    assert not db.user_remove("g1", "alice")
    assert db.users_of_group_remove("g1") == 2
    assert db.users_of_group("g1") == []
    assert [u.username for u in db.user_list()] == ["alan", "bob"]


def test_groups(db: LocalDB) -> None:
    assert db.group_get("default-3") is None
    db.group_put("default-3", redirect_host="be1", now=10)
    db.group_put("default-10", now=11)
    db.group_put("other", now=12)
    assert db.group_get("default-3") == LocalGroup("default-3", "be1", 10)
    assert [g.name for g in db.group_list()] == ["default-10", "default-3", "other"]
    assert [g.name for g in db.group_list("default-*")] == ["default-10", "default-3"]
    assert db.group_remove("default-3") and not db.group_remove("default-3")
    assert db.group_get("default-3") is None


def test_cache_put_many_stores_every_pair_in_one_go(db: LocalDB) -> None:
    db.cache_put("user/old", "gone", ttl_secs=1, now=1000)
    db.cache_put_many([("user/alice", "a"), ("user/bob", "b"), ("user/alice", "a2")], ttl_secs=60, now=2000)
    with sqlite3.connect(db.path) as raw:  # the expired row was purged by the put, as cache_put does
        assert {r[0] for r in raw.execute("SELECT cache_key FROM cluster_geodb_cache")} == {"user/alice", "user/bob"}
    assert [db.cache_get(key, now=2059) for key in ("user/alice", "user/bob")] == ["a2", "b"]
    assert db.cache_get("user/bob", now=2060) is None
    with pytest.raises(LocalDBError):
        db.cache_put_many([("user/carol", "c"), ("user/dave", 4)], ttl_secs=60, now=2000)  # type: ignore[list-item]
    assert db.cache_get("user/carol", now=2001) is None  # nothing of a refused batch is stored


def test_cache_expires_and_purges(db: LocalDB, tmp_path: Path) -> None:
    db.cache_put("user/alice", "site-a", ttl_secs=60, now=1000)
    db.cache_put("user/bob", "site-b", ttl_secs=5, now=1000)
    assert db.cache_get("user/alice", now=1059) == "site-a"
    assert db.cache_get("user/alice", now=1060) is None  # expire_timestamp is exclusive
    assert db.cache_get("user/bob", now=1004) == "site-b"

    def stored_keys() -> set[str]:
        with sqlite3.connect(db.path) as raw:
            return {r[0] for r in raw.execute("SELECT cache_key FROM cluster_geodb_cache")}

    assert stored_keys() == {"user/bob"}  # the expired row was purged when read
    db.cache_put("user/carol", "c", ttl_secs=1, now=2000)  # purges bob, expired meanwhile
    assert stored_keys() == {"user/carol"}
    assert db.cache_purge(now=2001) == 1
    db.cache_put("k", "v", ttl_secs=10, now=3000)
    assert db.cache_delete("k") and not db.cache_delete("k")
    assert db.cache_get("k", now=3001) is None
    db.cache_put("k", "v", ttl_secs=10, now=3000)
    assert db.cache_clear() == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: d.user_get("", "u"), "group must be a non-empty string"),
        (lambda d: d.user_put("g", None), "username must be a non-empty string"),
        (lambda d: d.user_put("g", "u", redirect_host=""), "redirect_host must be"),
        (lambda d: d.group_put("g", now="soon"), "unix seconds"),
        (lambda d: d.cache_put("k", "v", ttl_secs=0), "positive int"),
        (lambda d: d.cache_put("k", b"v", ttl_secs=1), "must be a string"),
        (lambda d: d.user_list(""), "mask must be a non-empty string"),
    ],
)
def test_bad_arguments_are_clear_errors(db: LocalDB, call, message: str) -> None:
    with pytest.raises(LocalDBError, match=message):
        call(db)


def test_unopenable_path(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(LocalDBError, match="cannot open"):
        LocalDB(str(tmp_path / "f" / "localdb.sqlite"))


def test_mask_to_glob() -> None:
    assert mask_to_glob("a*b?[c]") == "a*b?[[]c[]]"


def test_worker_processes_share_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "new" / "localdb.sqlite")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=put_users, args=(path, w, 50, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with LocalDB(path) as local:
        users = local.users_of_group("moving-group")
        assert len(users) == 200
        assert {u.redirect_host for u in users} == {"be0", "be1", "be2", "be3"}
        assert local.cache_get("w3-49", now=1) == "v"


def test_expired_cache_rows_are_kept_for_stale_use_within_the_bound(tmp_path) -> None:
    db = LocalDB(str(tmp_path / "l.sqlite"), stale_keep_secs=100)
    db.cache_put("k", "v", 10, now=1000)
    assert db.cache_get("k", now=1005) == "v"
    assert db.cache_get("k", now=1011) is None              # expired for normal use ...
    assert db.cache_get_stale("k", now=1011) == ("v", 1010)  # ... but kept for an outage
    db.cache_purge(now=1109)
    assert db.cache_get_stale("k", now=1109) == ("v", 1010)
    db.cache_purge(now=1111)
    assert db.cache_get_stale("k", now=1111) is None         # past the bound: gone
    db.close()


def test_without_stale_keep_expired_rows_go_at_once(tmp_path) -> None:
    db = LocalDB(str(tmp_path / "l.sqlite"))
    db.cache_put("k", "v", 10, now=1000)
    assert db.cache_get("k", now=1010) is None and db.cache_get_stale("k", now=1010) is None
    db.close()


def test_users_served_is_counted_on_every_write(db: LocalDB) -> None:
    assert db.users_served() == 0
    db.user_put("g1", "alice")
    db.user_put("g1", "alice")  # an update, not a second row
    db.user_put("g1", "bob")
    assert db.users_served() == 2
    db.user_put("g1", "bob", redirect_host="be2")  # moved away: no longer served here
    assert db.users_served() == 1
    db.user_put("g1", "bob")  # the move was abandoned
    assert db.users_served() == 2
    db.users_remove([("g1", "alice")])
    db.user_put("g2", "carol", redirect_host="be2")
    assert db.users_served() == 1
    assert db.users_of_group_remove("g1") == 1
    assert db.users_served() == 0
    with sqlite3.connect(db.path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM cluster_users WHERE redirect_host IS NULL").fetchone() == (0,)


def test_a_file_from_before_the_counter_is_counted_once_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with LocalDB(str(path)) as local:
        local.user_put("g", "a")
        local.user_put("g", "b", redirect_host="be2")
    with sqlite3.connect(path) as raw:  # as an older palomar left it: no counter, no triggers
        raw.execute("DROP TABLE cluster_counts")
        for trigger in ("insert", "delete", "update"):
            raw.execute(f"DROP TRIGGER cluster_users_served_{trigger}")
        raw.execute("INSERT INTO cluster_users VALUES ('g', 'c', NULL, NULL, 1)")
    with LocalDB(str(path)) as local:
        assert local.users_served() == 2
        local.user_put("g", "d")
        assert local.users_served() == 3


def test_old_rows_are_read_oldest_first_in_bounded_batches(db: LocalDB) -> None:
    for i in range(5):
        db.user_put("g", f"u{i}", now=100 + i)
    assert [u.username for u in db.users_not_updated_since(103, 2)] == ["u0", "u1"]
    assert [u.username for u in db.users_not_updated_since(103, 10)] == ["u0", "u1", "u2"]
    db.users_touch([("g", "u0")], now=500)
    db.users_remove([("g", "u1")])
    assert [u.username for u in db.users_not_updated_since(103, 10)] == ["u2"]
    assert db.user_get("g", "u0") == LocalUser("g", "u0", None, None, 500)


def test_a_cache_purge_with_a_limit_deletes_at_most_that_many(db: LocalDB) -> None:
    for i in range(5):
        db.cache_put(f"k{i}", "v", ttl_secs=100, now=1000 + i)
    assert db.cache_purge(now=2000, limit=2) == 2
    assert db.cache_purge(now=2000, limit=10) == 3
    assert db.cache_purge(now=2000, limit=10) == 0
