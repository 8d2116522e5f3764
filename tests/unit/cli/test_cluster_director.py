"""`palomar cluster director import` through the real CLI entry point on a SQLite GeoDB."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster_harness import Cluster, write_config
from palomar.cli.main import main
from palomar.cluster.director_transition import director_group_name
from palomar.cluster.model import Group

# `doveadm director map` rows as a real Dovecot 2.3 director prints them (user hashes are the director's).
MAP = (
    "user                       hash       mail server ip expire time\n"
    "user1@example.test         2607320544 127.0.0.11     2026-12-05 00:10:17\n"
    "user2@example.test         84562533   127.0.0.12     2026-12-05 00:10:18\n"
    "<unknown>                  117045946  127.0.0.12     2026-12-05 00:10:20\n"
)
TRANSITION = """\
mail_server 127.0.0.11 {
  backend = b1.test
}
mail_server 127.0.0.12 {
  backend = b2.test
}
"""


@pytest.fixture
def east(two_sites: Cluster, tmp_path: Path) -> Cluster:
    (tmp_path / "transition.conf").write_text(TRANSITION)
    (tmp_path / "map.txt").write_text(MAP)
    return two_sites


def _user_backend(cluster: Cluster, username: str) -> tuple[str | None, str | None]:
    async def read(db) -> tuple[str | None, str | None]:
        user = await db.user_get(username)
        if user is None:
            return None, None
        site = await db.site_get_by_name("east")
        group = await db.group_get(site.id, user.group_name)
        backends = {b.id: b.host for b in await db.backend_list(site.id)}
        return user.group_name, backends.get(group.backend_id) if group else None

    return cluster.db(read)


def test_import_puts_each_user_on_the_directors_backend(east: Cluster, tmp_path: Path) -> None:
    out = east.ok("director", "import", "--transition-config", str(tmp_path / "transition.conf"),
                  str(tmp_path / "map.txt"))
    assert out.strip() == ("site 'east': imported 2 users (2 groups created); 0 already had a group; "
                           "1 <unknown> rows skipped")
    assert _user_backend(east, "user1@example.test") == (director_group_name("b1.test", "user1@example.test", 4),
                                                         "b1.test")
    assert _user_backend(east, "user2@example.test") == (director_group_name("b2.test", "user2@example.test", 4),
                                                         "b2.test")
    # `user access` (the proxy's routing) agrees
    east.ok("backend", "update", "--status", "online", "b1.test")
    east.ok("backend", "update", "--status", "online", "b2.test")
    records = east.json("user", "access", "-u", "user2@example.test")
    assert records[0]["backend"] == "b2.test"


def test_import_again_leaves_grouped_users(east: Cluster, tmp_path: Path) -> None:
    args = ("director", "import", "--transition-config", str(tmp_path / "transition.conf"), str(tmp_path / "map.txt"))
    east.ok(*args)
    result = east.json(*args)
    assert (result["users"], result["already_grouped"]) == (0, 2)


def test_dry_run_writes_nothing(east: Cluster, tmp_path: Path) -> None:
    result = east.json("director", "import", "--dry-run", "--transition-config", str(tmp_path / "transition.conf"),
                       str(tmp_path / "map.txt"))
    assert result["users"] == 2
    assert _user_backend(east, "user1@example.test") == (None, None)


def test_import_reads_stdin_and_uses_the_configured_transition(east: Cluster, tmp_path: Path) -> None:
    write_config(east.config, east.geodb_path, east.localdb_path,
                 cluster_director_transition_config=str(tmp_path / "transition.conf"))
    result = east.runner.invoke(main, ["cluster", "-c", str(east.config), "director", "import", "-"], input=MAP)
    assert result.exit_code == 0, result.output
    assert _user_backend(east, "user1@example.test")[1] == "b1.test"


def test_without_transition_the_ips_must_be_backend_names(east: Cluster, tmp_path: Path) -> None:
    message = east.fails("director", "import", str(tmp_path / "map.txt"))
    assert message == (f"{tmp_path / 'map.txt'}: nothing imported: line 2: mail server 127.0.0.11 has no palomar "
                       "backend in the transition config; line 3: mail server 127.0.0.12 has no palomar backend in "
                       "the transition config")


def test_a_user_already_in_a_group_keeps_it(east: Cluster, tmp_path: Path) -> None:
    async def seed(db) -> None:
        site = await db.site_get_by_name("east")
        b2 = await db.backend_find_by_host("b2.test")
        await db.group_create_if_absent(Group(site.id, "default-1", backend_id=b2.id))
        await db.user_put("user1@example.test", group_name="default-1")

    east.db(seed)
    result = east.json("director", "import", "--transition-config", str(tmp_path / "transition.conf"),
                       str(tmp_path / "map.txt"))
    assert (result["users"], result["already_grouped"]) == (1, 1)
    assert _user_backend(east, "user1@example.test") == ("default-1", "b2.test")


@pytest.mark.parametrize(("content", "message"), [
    ("user1 nohash 127.0.0.11 2026-12-05 00:10:17\n", "line 1: 'nohash' is not a user hash"),
    ("", "no `doveadm director map` rows"),
    ("user1@example.test 1 127.0.0.11 2026-12-05 00:10:17\n",
     "nothing imported: line 1: user user1@example.test hashes to 2607320544, the director printed 1"),
])
def test_bad_maps_are_refused_with_one_line(east: Cluster, tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "bad.txt").write_text(content)
    got = east.fails("director", "import", "--transition-config", str(tmp_path / "transition.conf"),
                     str(tmp_path / "bad.txt"))
    assert got.startswith(f"{tmp_path / 'bad.txt'}: {message}")


def test_missing_files_are_refused_with_one_line(east: Cluster, tmp_path: Path) -> None:
    assert east.fails("director", "import", str(tmp_path / "none.txt")) == (
        f"cannot read {tmp_path / 'none.txt'}: No such file or directory")
    got = east.fails("director", "import", "--transition-config", str(tmp_path / "none.conf"),
                     str(tmp_path / "map.txt"))
    assert got == f"director transition config: {tmp_path / 'none.conf'}: No such file or directory"


STATUS = (
    "mail server ip tag vhosts state state changed       users\n"
    "127.0.0.11         100    up    -                   5\n"
    "127.0.0.12         37     down  2026-12-04 23:54:57 0\n"
)


def test_transition_config_is_written_from_director_status(east: Cluster, tmp_path: Path) -> None:
    (tmp_path / "status.txt").write_text(STATUS)
    out = east.ok("director", "transition-config", "--backend", "127.0.0.11=b1.test", "--backend",
                  "127.0.0.12=b2.test", "--username-hash", "%Ln", str(tmp_path / "status.txt"))
    assert out == ("director_username_hash = %Ln\n\n"
                   "mail_server 127.0.0.11 {\n  backend = b1.test\n  vhost_count = 100\n  state = up\n}\n"
                   "mail_server 127.0.0.12 {\n  backend = b2.test\n  vhost_count = 37\n  state = down\n}\n")


@pytest.mark.parametrize(("args", "message"), [
    (("--backend", "127.0.0.11"), "--backend '127.0.0.11': expected IP=BACKEND_NAME"),
    (("--backend", "mail1=b1.test"), "--backend 'mail1=b1.test': mail server 'mail1' is not an IP address"),
    (("--backend", "127.0.0.99=b1.test"), "--backend names 127.0.0.99, which the director status does not list"),
    (("--username-hash", "%Hu"), "director_username_hash '%Hu': only %u, %n, %d"),
])
def test_transition_config_refuses_bad_options(east: Cluster, tmp_path: Path, args: tuple[str, ...],
                                               message: str) -> None:
    (tmp_path / "status.txt").write_text(STATUS)
    got = east.fails("director", "transition-config", *args, str(tmp_path / "status.txt"))
    assert got.startswith(message)


def test_transition_config_refuses_bad_status(east: Cluster, tmp_path: Path) -> None:
    (tmp_path / "status.txt").write_text("127.0.0.11 blue 100 up - 5\n")
    got = east.fails("director", "transition-config", str(tmp_path / "status.txt"))
    assert got == (f"{tmp_path / 'status.txt'}: line 1: mail server 127.0.0.11 has tag 'blue': only the untagged "
                   "ring is supported")
