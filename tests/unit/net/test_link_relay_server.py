"""The I/O layer on real loopback sockets: Link (login-phase connection), Relay, AcceptLoop."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from palomar.net.link import Link, accept_link, open_link
from palomar.net.relay import Relay, RelayStats
from palomar.net.server import AcceptLoop, listen_socket

TIMEOUT = 10


async def serve(handler) -> tuple[AcceptLoop, tuple[str, int]]:
    sock = listen_socket("127.0.0.1", 0)
    loop = AcceptLoop(sock, handler)
    loop.start()
    return loop, sock.getsockname()[:2]


async def client(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*address)


async def test_half_closed_peer_is_answered_before_the_link_closes() -> None:
    """What the peer sent before its FIN is read, and the answer still reaches it."""

    async def echo_upper(sock: socket.socket) -> None:
        link = await accept_link(sock)
        received = b""
        while data := await link.read():
            received += data
        assert link.eof
        link.write(received.upper())
        link.close()

    loop, address = await serve(echo_upper)
    reader, writer = await client(address)
    writer.write(b"one\r\ntwo\r\n")
    writer.write_eof()
    async with asyncio.timeout(TIMEOUT):
        assert await reader.read() == b"ONE\r\nTWO\r\n"
    writer.close()
    await loop.close()


async def test_accept_link_leaves_the_callers_socket_detached() -> None:
    seen: asyncio.Future[tuple[int, Link]] = asyncio.get_running_loop().create_future()

    async def handler(sock: socket.socket) -> None:
        link = await accept_link(sock)
        seen.set_result((sock.fileno(), link))

    loop, address = await serve(handler)
    _, writer = await client(address)
    async with asyncio.timeout(TIMEOUT):
        fileno, link = await seen
    assert fileno == -1  # closing it is a no-op: the transport alone owns the descriptor
    assert not link.closed
    link.close()
    writer.close()
    await loop.close()


async def test_a_handler_that_raises_after_taking_the_socket_does_not_hurt_later_connections(
        caplog: pytest.LogCaptureFixture) -> None:
    """The accept loop's last resort must not close a descriptor a transport owns: the kernel would
    give its number to the next connection while the event loop still watches it."""
    caplog.set_level(logging.ERROR, logger="palomar.net")
    calls = 0

    async def handler(sock: socket.socket) -> None:
        nonlocal calls
        calls += 1
        link = await accept_link(sock)
        if calls == 1:
            raise RuntimeError("a bug in a session")
        link.write(b"hello\r\n")
        link.close()

    loop, address = await serve(handler)
    reader, writer = await client(address)
    async with asyncio.timeout(TIMEOUT):
        await reader.read()  # the broken session: nothing to say, but no hang either once it is dropped
    writer.close()
    for _ in range(3):
        reader, writer = await client(address)
        async with asyncio.timeout(TIMEOUT):
            assert await reader.read() == b"hello\r\n"
        writer.close()
    assert [r.getMessage() for r in caplog.records] == ["session handler failed"]
    await loop.close()


async def relay_pair() -> tuple[Relay, list[RelayStats], asyncio.StreamReader, asyncio.StreamWriter,
                                asyncio.StreamReader, asyncio.StreamWriter, Link, Link, list[AcceptLoop]]:
    """A client -> [Link | relay | Link] -> server chain on loopback."""
    server_side: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.get_running_loop().create_future())

    async def on_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_side.set_result((reader, writer))

    backend = await asyncio.start_server(on_server, "127.0.0.1", 0)
    backend_address = backend.sockets[0].getsockname()[:2]
    accepted: asyncio.Future[Link] = asyncio.get_running_loop().create_future()

    async def front(sock: socket.socket) -> None:
        accepted.set_result(await accept_link(sock))

    loop, address = await serve(front)
    c_reader, c_writer = await client(address)
    async with asyncio.timeout(TIMEOUT):
        client_link = await accepted
        server_link = await open_link(*backend_address, timeout=TIMEOUT)
        s_reader, s_writer = await server_side
    done: list[RelayStats] = []
    relay = Relay(client_link.transport, server_link.transport, done.append)
    backend.close()
    return relay, done, c_reader, c_writer, s_reader, s_writer, client_link, server_link, [loop]


async def test_relay_forwards_pending_bytes_and_an_early_fin_of_the_client() -> None:
    """The client pipelined after its login and half-closed before the relay started: the server
    gets the bytes, then the FIN, and its answer still reaches the client."""
    relay, done, c_reader, c_writer, s_reader, s_writer, client_link, server_link, loops = await relay_pair()
    c_writer.write(b"b SELECT INBOX\r\n")
    c_writer.write_eof()
    pending = b""
    async with asyncio.timeout(TIMEOUT):
        while data := await client_link.read():  # b"" once the FIN arrived
            pending += data
    assert client_link.eof
    relay.start(client_pending=pending, client_eof=client_link.eof)
    async with asyncio.timeout(TIMEOUT):
        assert await s_reader.read() == b"b SELECT INBOX\r\n"  # then EOF
        s_writer.write(b"b OK done\r\n")
        s_writer.close()
        assert await c_reader.read() == b"b OK done\r\n"
    assert done and done[0].closed_by == "client" and done[0].bytes_in == 16 and done[0].bytes_out == 11
    c_writer.close()
    for loop in loops:
        await loop.close()
