"""The graceful stop's parts on real loopback sockets: the relay's shutdown line, Drain.read, the
protocols' shutdown lines."""

from __future__ import annotations

import asyncio
import socket

import pytest

from palomar.net.drain import Drain, ShuttingDown
from palomar.net.link import Link
from palomar.net.relay import Relay

BYE = b"* BYE Server shutting down.\r\n"


async def connected_pair() -> tuple[asyncio.Transport, Link, socket.socket]:
    """Our transport (with a Link protocol) and the peer's plain socket."""
    ours, theirs = socket.socketpair()
    _, link = await asyncio.get_running_loop().connect_accepted_socket(Link, ours)
    theirs.setblocking(False)
    assert link.transport is not None
    return link.transport, link, theirs


async def read_to_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(10):
        while chunk := await loop.sock_recv(sock, 65536):
            data += chunk
    return data


async def relay_after(server_says: bytes) -> tuple[bytes, bytes]:
    """Relay a client and a server, let the server send `server_says`, shut the relay down; what
    the client and the server then read until the end."""
    client_transport, _, client = await connected_pair()
    server_transport, _, server = await connected_pair()
    relay = Relay(client_transport, server_transport, shutdown_line=BYE)
    relay.start()
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(server, server_says)
    received = b""
    async with asyncio.timeout(10):
        while len(received) < len(server_says):
            received += await loop.sock_recv(client, 65536)
    relay.shut_down()
    return received + await read_to_eof(client), await read_to_eof(server)


@pytest.mark.parametrize("server_says,client_gets", [
    (b"+ idling\r\n", b"+ idling\r\n" + BYE),  # between two lines: the shutdown line is sent
    (b"* 1 FETCH (BODY[] {10}\r\n01234", b"* 1 FETCH (BODY[] {10}\r\n01234"),  # inside a literal: not sent
])
async def test_relay_shut_down_sends_the_line_only_between_lines(server_says: bytes, client_gets: bytes) -> None:
    client_read, server_read = await relay_after(server_says)
    assert client_read == client_gets
    assert server_read == b""  # the server's side is closed, nothing injected there


async def test_relay_shut_down_before_the_server_said_anything_sends_the_line() -> None:
    client_transport, _, client = await connected_pair()
    server_transport, _, _server = await connected_pair()
    relay = Relay(client_transport, server_transport, shutdown_line=BYE)
    relay.start()
    relay.shut_down()
    relay.shut_down()  # twice is harmless
    assert await read_to_eof(client) == BYE


async def test_drain_read_raises_shutting_down_in_waiting_readers_only() -> None:
    drain = Drain()
    _, idle_link, _idle_peer = await connected_pair()
    _, busy_link, busy_peer = await connected_pair()
    idle = asyncio.create_task(drain.read(idle_link))
    busy = asyncio.create_task(drain.read(busy_link, stoppable=False))  # e.g. inside an LMTP transaction
    await asyncio.sleep(0)  # let both start waiting
    drain.stop_readers()
    with pytest.raises(ShuttingDown):
        await idle
    assert not busy.done()
    await asyncio.get_running_loop().sock_sendall(busy_peer, b"DATA line\r\n")
    assert await busy == b"DATA line\r\n"
    with pytest.raises(ShuttingDown):  # once stopping, the next wait for a command ends at once
        await drain.read(busy_link)


async def test_drain_read_passes_other_cancellations_on() -> None:
    drain = Drain()
    _, link, _peer = await connected_pair()
    task = asyncio.create_task(drain.read(link))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

