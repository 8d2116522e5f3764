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
    """A forwarder (on 127.0.0.1) to Dovecot's IMAP port. Dovecot's greeting passes at once; what the
    backend sends (its login) waits until `before_forwarding` has run. `accepted` is set when a
    connection arrives; `unused` counts connections the backend closed without sending a byte."""

    def __init__(self, dovecot: DovecotInstance, before_forwarding: Callable[[], Awaitable[None]]) -> None:
        self.dovecot = dovecot
        self.before_forwarding = before_forwarding
        self.server: asyncio.Server | None = None
        self.accepted = asyncio.Event()
        self.unused = 0
        self.closed = asyncio.Event()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.set()
        p = self.dovecot.params
        up_reader, up_writer = await asyncio.open_connection(p.listen, p.imap_port)
        greeting = asyncio.ensure_future(_pipe(up_reader, writer))
        try:
            first = await reader.read(65536)
        except ConnectionError:
            first = b""
        if not first:
            self.unused += 1
            up_writer.close()
            writer.close()
            await greeting
            self.closed.set()
            return
        await self.before_forwarding()
        up_writer.write(first)
        await asyncio.gather(_pipe(reader, up_writer), greeting)

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


async def _nothing() -> None:
    return None


async def test_dovecot_connection_opens_while_the_ownership_check_runs(
    backend: BackendState, dovecot_backends: dict[str, DovecotInstance], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ownership check's GeoDB read waits here until the backend has connected to Dovecot: it
    finishes only if the connection is opened alongside the check, not after it."""
    state = backend
    gate = Gate(dovecot_backends["backend1"], _nothing)
    state.dovecot.ports["imap"] = await gate.start()
    read = state.geodb.ownership_rows

    async def read_once_dovecot_is_connected(*args):
        async with asyncio.timeout(BOUND / 2):
            await gate.accepted.wait()
        return await read(*args)

    monkeypatch.setattr(state.geodb, "ownership_rows", read_once_dovecot_is_connected)
    try:
        reply, link = await _serve(state, _request())
    finally:
        await gate.close()
    assert isinstance(reply, hop.LoggedIn) and link is not None
    link.close()
    assert gate.unused == 0


async def test_a_login_not_served_here_closes_its_dovecot_connection_unused(
    backend: BackendState, dovecot_backends: dict[str, DovecotInstance],
) -> None:
    state = backend
    assert state.site_id is not None
    dest = await state.geodb.backend_find_by_host(DEST)
    assert dest is not None
    await state.geodb.group_update(state.site_id, "g1", backend_id=dest.id)
    gate = Gate(dovecot_backends["backend1"], _nothing)
    state.dovecot.ports["imap"] = await gate.start()
    try:
        reply, link = await _serve(state, _request())
        if gate.accepted.is_set():  # the connect may have been stopped before it was made
            async with asyncio.timeout(BOUND):
                await gate.closed.wait()
    finally:
        await gate.close()
    assert link is None and isinstance(reply, hop.Referral) and reply.host == DEST
    assert gate.unused == (1 if gate.accepted.is_set() else 0)
