"""A group move that reaches a user while the backend logs that user in to its (real) Dovecot.

The race is forced: the backend's Dovecot connection goes through a gate (a loopback forwarder
in front of the real Dovecot) that holds the login until the test has started the move and the
executor has migrated the user. The login then completes at Dovecot, and the backend must refer
it to the destination instead of relaying (`MoveExecutor.moved_during_login`, the login hold);
otherwise the user would be served here after the group left.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from palomar.backend.moves import MoveExecutor
from palomar.backend.service import BackendState, _serve
from palomar.cluster.model import Backend, Group, Site
from palomar.devcluster.dovecot import DovecotInstance
from palomar.dovecot_login import DovecotEndpoint
from palomar.geodb.repository import GeoDB
from palomar.geodb.sqlite_engine import SQLiteGeoEngine
from palomar.localdb.store import LocalDB
from palomar.protocols import hop

USER = "moved-during-login@example.test"
DEST = "127.0.0.99"
BOUND = 10.0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


class Gate:
    """A forwarder (on 127.0.0.1) to Dovecot's IMAP port that runs `before_forwarding` on each connection first."""

    def __init__(self, dovecot: DovecotInstance, before_forwarding: Callable[[], Awaitable[None]]) -> None:
        self.dovecot = dovecot
        self.before_forwarding = before_forwarding
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.before_forwarding()
        p = self.dovecot.params
        up_reader, up_writer = await asyncio.open_connection(p.listen, p.imap_port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def backend(tmp_path: Path, dovecot_backends: dict[str, DovecotInstance]) -> AsyncIterator[BackendState]:
    engine = SQLiteGeoEngine(str(tmp_path / "geodb.sqlite"))
    await engine.open()
    geodb = GeoDB(engine)
    site = Site(id=uuid.uuid4(), name="east")
    await geodb.site_add(site)
    await geodb.backend_add(Backend(id=uuid.uuid4(), site_id=site.id, host=DEST, status="online"))
    dovecot = dovecot_backends["backend1"].params
    localdb = LocalDB(str(tmp_path / "localdb.sqlite"))
    state = BackendState(geodb=geodb, localdb=localdb, name="127.0.0.2", site_name="east", secret=b"s",
                         dovecot=DovecotEndpoint("127.0.0.1", {"imap": 0}, dovecot.master_user,
                                                 dovecot.master_password, timeout=BOUND))
    me = await state.register()
    await geodb.backend_set_status(site.id, me.id, "online", "admin")
    dest = await geodb.backend_find_by_host(DEST)
    assert dest is not None
    await geodb.group_create_if_absent(Group(site.id, "g1", backend_id=me.id, alt_backend_id=dest.id))
    await geodb.user_put(USER, group_name="g1")
    # No doveadm: a migrated user counts as moved at once (nothing of it runs at this Dovecot yet).
    state.moves = MoveExecutor(state, doveadm=None, user_move_timeout=BOUND)
    yield state
    await state.moves.stop()
    localdb.close()
    await geodb.close()


def _request() -> hop.HopRequest:
    return hop.HopRequest(user=USER, protocol="imap", session_id="s1", backend_host="127.0.0.2",
                          client=("192.0.2.1", 40000), local=("192.0.2.2", 993), client_tls=True)


@pytest.mark.parametrize("logged_in_before", [True, False], ids=["returning-user", "first-login-here"])
async def test_move_landing_during_the_dovecot_login_refers_the_login(
    backend: BackendState, dovecot_backends: dict[str, DovecotInstance], logged_in_before: bool,
) -> None:
    state, moves = backend, backend.moves
    assert moves is not None and state.site_id is not None
    if logged_in_before:
        state.localdb.user_put("g1", USER)
    dest = await state.geodb.backend_find_by_host(DEST)
    assert dest is not None

    async def start_move_and_wait_until_user_migrated() -> None:
        """What `cluster group move` and the first access do, while the login is at the gate."""
        await state.geodb.group_update(state.site_id, "g1", alt_backend_id=dest.id, moving=str(uuid.uuid4()))
        group = await state.geodb.group_get(state.site_id, "g1")
        assert group is not None and await moves.group_access(group) == "started"
        task = moves.running["g1"]

        def migrated() -> bool:
            row = state.localdb.user_get("g1", USER)
            # either the executor wrote the user's redirect and waits for this login, or it finished
            # the whole move without waiting (no hold): then the login must still be refused
            return task.done() or (row is not None and row.redirect_host == DEST)

        async with asyncio.timeout(BOUND):
            while not migrated():
                await asyncio.sleep(0.01)

    gate = Gate(dovecot_backends["backend1"], start_move_and_wait_until_user_migrated)
    state.dovecot.ports["imap"] = await gate.start()
    try:
        reply, link = await _serve(state, _request())
        task = moves.running.get("g1")
        if task is not None:
            async with asyncio.timeout(BOUND):
                await task
    finally:
        await gate.close()
    assert link is None, "the user was logged in here after its move reached it"
    assert reply == hop.Referral(DEST, "user moved")
    assert USER not in state.by_user
    group = await state.geodb.group_get(state.site_id, "g1")
    assert group is not None and group.backend_id == dest.id and not group.moving
    # after the move the user is referred by the straggler redirect, before any Dovecot login
    decision, _ = await state.ownership(USER)
    assert getattr(decision, "host", None) == DEST
