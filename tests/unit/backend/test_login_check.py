"""The direct path's login check: Dovecot's dict lookup answered with the hop's ownership check, over
a real UNIX socket, against a real SQLite GeoDB and LocalDB."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend_states import backend_state
from palomar.backend import login_check
from palomar.backend.moves import MoveExecutor
from palomar.backend.service import BackendState
from palomar.cluster.model import Group
from palomar.dovecot_login import failure_reply
from palomar.geodb.guarded import GeoDBUnavailable
from palomar.geodb.sqlite_engine import SQLiteGeoEngine
from palomar.protocols import hop
from palomar.protocols.tabescape import tab_escape


class FailingEngine(SQLiteGeoEngine):
    """The real SQLite engine that can be told to fail like an unreachable GeoDB."""

    down = False

    async def _run(self, fn, *args, **options):
        if self.down:
            raise GeoDBUnavailable("GeoDB not reachable (test)")
        return await super()._run(fn, *args, **options)

    async def _read(self, job):
        if self.down:
            raise GeoDBUnavailable("GeoDB not reachable (test)")
        return await super()._read(job)


@pytest.fixture
async def state(tmp_path) -> AsyncIterator[BackendState]:
    backend = await backend_state(tmp_path, FailingEngine(str(tmp_path / "geodb.sqlite")))
    assert backend.site_id is not None and backend.backend_id is not None
    await backend.geodb.group_create_if_absent(Group(backend.site_id, "mine", backend_id=backend.backend_id))
    other = await backend.geodb.backend_find_by_host("10.0.0.9")
    assert other is not None
    await backend.geodb.group_create_if_absent(Group(backend.site_id, "theirs", backend_id=other.id))
    await backend.geodb.user_put("alice@example.test", group_name="mine")
    await backend.geodb.user_put("bob@example.test", group_name="theirs")
    yield backend
    backend.localdb.close()
    await backend.geodb.close()


async def ask(path: Path, *users: str, key: str = "shared/passdb/sess-1") -> list[bytes]:
    return await ask_each(path, [(key, user) for user in users])


async def ask_each(path: Path, lookups: list[tuple[str, str]]) -> list[bytes]:
    """Send the handshake and every (key, user) lookup in one write, as Dovecot pipelines them."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b"H3\t2\t0\t\tpalomar\n" + b"".join(
        b"L" + tab_escape(key).encode() + b"\t" + tab_escape(u).encode() + b"\n" for key, u in lookups))
    replies = [await reader.readline() for _ in lookups]
    writer.close()
    return replies


async def test_answers_in_order_served_referred_and_unknown(state: BackendState, tmp_path: Path) -> None:
    path = tmp_path / "login-check"
    server = await login_check.start_login_check(state, path)
    try:
        served, referred, unknown = await ask(path, "alice@example.test", "bob@example.test", "nobody@x")
    finally:
        server.close()
    assert served == b'O{"nopassword": "y"}\n'
    fields = json.loads(referred[1:])
    assert fields["nologin"] == "y" and fields["reason"].startswith("palomar-referral 10.0.0.9 ")
    assert unknown.startswith(b"F")
    assert state.logins == 1 and state.referrals == 1
    assert (path.stat().st_mode & 0o777) in (0o600, 0o660)


async def test_pipelined_lookups_of_every_kind_are_answered_in_order(state: BackendState, tmp_path: Path) -> None:
    """Replies that need no GeoDB read (the userdb's, refusals) wait for the passdb replies before them."""
    path = tmp_path / "login-check"
    server = await login_check.start_login_check(state, path)
    try:
        replies = await ask_each(path, [("shared/userdb/", "alice@example.test"),
                                        ("shared/passdb/p1", "alice@example.test"),
                                        ("shared/userdb/", "alice@example.test"),
                                        ("shared/passdb/p2", "bob@example.test"),
                                        ("shared/other/x", "alice@example.test"),
                                        ("shared/userdb/", "bob@example.test")])
    finally:
        server.close()
    assert replies[:3] == [b"O{}\n", b'O{"nopassword": "y"}\n', b"O{}\n"]
    assert json.loads(replies[3][1:])["reason"].startswith("palomar-referral 10.0.0.9 ")
    assert replies[4] == b"Fnot a palomar login check key\n" and replies[5] == b"O{}\n"


async def test_a_failing_geodb_is_a_dict_failure_and_the_socket_keeps_serving(state: BackendState,
                                                                            tmp_path: Path) -> None:
    path = tmp_path / "login-check"
    server = await login_check.start_login_check(state, path)
    engine = state.geodb.engine
    assert isinstance(engine, FailingEngine)
    try:
        engine.down = True
        assert await ask(path, "alice@example.test") == [b"Fcluster state temporarily unavailable\n"]
        engine.down = False
        assert await ask(path, "alice@example.test") == [b'O{"nopassword": "y"}\n']
    finally:
        server.close()


async def test_a_key_that_is_not_a_login_check_key_is_refused(state: BackendState, tmp_path: Path) -> None:
    path = tmp_path / "login-check"
    server = await login_check.start_login_check(state, path)
    try:
        assert (await ask(path, "alice@example.test", key="shared/other/x"))[0].startswith(b"F")
    finally:
        server.close()


async def test_a_served_login_holds_its_user_until_its_session_starts(state: BackendState, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(login_check, "SETTLE_AFTER_START", 0.0)
    state.moves = moves = MoveExecutor(state, None)
    path = tmp_path / "login-check"
    server = await login_check.start_login_check(state, path)
    try:
        assert await ask(path, "alice@example.test", key="shared/passdb/s1") == [b'O{"nopassword": "y"}\n']
        assert moves._deliveries  # a move of alice now waits for this login
        # LMTP and doveadm look users up without a session: not a login, nothing held
        assert await ask(path, "alice@example.test", key="shared/userdb/") == [b"O{}\n"]
        assert moves._deliveries
        assert await ask(path, "alice@example.test", key="shared/userdb/s1") == [b"O{}\n"]
        await asyncio.wait_for(_released(moves), 5)
    finally:
        server.close()


async def test_a_move_during_the_login_refuses_the_session(state: BackendState, tmp_path: Path) -> None:
    state.moves = moves = MoveExecutor(state, None)
    path = tmp_path / "login-check"
    server = await login_check.start_login_check(state, path)
    try:
        assert await ask(path, "alice@example.test", key="shared/passdb/s2") == [b'O{"nopassword": "y"}\n']
        state.localdb.user_put("mine", "alice@example.test", redirect_host="10.0.0.9", now=1)  # the move's step
        assert await ask(path, "alice@example.test", key="shared/userdb/s2") == [b"N\n"]
        assert not moves._deliveries  # no session will exist: released at once
        # the next login is referred
        referred = json.loads((await ask(path, "alice@example.test", key="shared/passdb/s3"))[0][1:])
        assert referred["reason"].startswith("palomar-referral 10.0.0.9 ")
    finally:
        server.close()


async def _released(moves: MoveExecutor) -> None:
    while moves._deliveries:
        await asyncio.sleep(0.01)


def test_referral_reason_is_one_line_of_words() -> None:
    fields = json.loads(login_check.referral_fields("10.0.0.9", "user\tmoved\n away"))
    assert fields == {"nopassword": "y", "nologin": "y", "reason": "palomar-referral 10.0.0.9 user moved away"}


@pytest.mark.parametrize(("kind", "text", "reply"), [
    ("other", "palomar-referral 10.0.0.9 user moved", hop.Referral("10.0.0.9", "user moved")),
    ("auth", "palomar-referral 10.0.0.9", hop.Referral("10.0.0.9", "")),
    ("auth", "Authentication failed.", hop.Failure("auth", "Dovecot: Authentication failed.")),
    ("auth", "palomar-referral", hop.Failure("auth", "Dovecot: palomar-referral")),
    ("temp", "Temporary authentication failure.", hop.Failure("temp", "Dovecot: Temporary authentication failure.")),
])
def test_how_the_proxy_reads_dovecots_refusal(kind: str, text: str, reply: object) -> None:
    """What the login check's nologin reason becomes in Dovecot's IMAP/POP3 refusal, read back."""
    assert failure_reply(kind, text) == reply
