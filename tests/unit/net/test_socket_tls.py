"""TLS links (`net.socket_tls` through `net.link`): small per-connection memory, and bytes intact when
many connections share one read buffer, for accepted, connected and STARTTLS-upgraded links."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import os
import socket
import ssl
import struct
import termios
import tracemalloc
from pathlib import Path

import pytest

from palomar.devcluster.certs import HopCertificates, hop_certificates
from palomar.devcluster.malloc_stats import malloc_in_use
from palomar.net.link import Link, accept_link, open_link

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> HopCertificates:
    return hop_certificates(tmp_path_factory.mktemp("socket-tls"), [HOST])


def contexts(certs: HopCertificates) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pair = certs.backends[HOST]
    server.load_cert_chain(str(pair.cert), str(pair.key))
    client = ssl.create_default_context(cafile=str(certs.ca))
    return server, client


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def tls_pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, lsock: socket.socket) -> tuple[Link, Link]:
    """(server side, client side), both TLS from their first byte."""
    loop = asyncio.get_running_loop()
    port = lsock.getsockname()[1]
    connecting = asyncio.ensure_future(open_link(HOST, port, timeout=10, tls=client_ctx))
    accepted, _ = await loop.sock_accept(lsock)
    server = await accept_link(accepted, tls=server_ctx, handshake_timeout=10)
    return server, await connecting


async def starttls_pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                        lsock: socket.socket) -> tuple[Link, Link]:
    """(server side, client side): plaintext first, then upgraded in place on both ends."""
    loop = asyncio.get_running_loop()
    port = lsock.getsockname()[1]
    connecting = asyncio.ensure_future(open_link(HOST, port, timeout=10))
    accepted, _ = await loop.sock_accept(lsock)
    server = await accept_link(accepted)
    client = await connecting
    client.write(b"STARTTLS\r\n")
    assert await server.read() == b"STARTTLS\r\n"
    await asyncio.gather(server.start_tls(server_ctx, server_side=True),
                         client.start_tls(client_ctx, server_side=False, server_hostname=HOST))
    return server, client


async def read_exactly(link: Link, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = await link.read()
        assert chunk, f"closed after {len(got)} of {size} bytes"
        got += chunk
    return bytes(got)


async def send(link: Link, data: bytes) -> None:
    for start in range(0, len(data), 100_000):
        link.write(data[start:start + 100_000])
        await link.drain()


async def exchange(server: Link, client: Link, size: int) -> None:
    """`size` random bytes each way at once; both ends must get exactly what the other sent."""
    up, down = os.urandom(size), os.urandom(size)
    got_up, got_down, _, _ = await asyncio.gather(read_exactly(server, size), read_exactly(client, size),
                                                  send(client, up), send(server, down))
    assert got_up == up
    assert got_down == down


@pytest.mark.parametrize("make_pair", [tls_pair, starttls_pair], ids=["tls", "starttls"])
async def test_concurrent_large_transfers_are_byte_exact(certs: HopCertificates, make_pair) -> None:
    server_ctx, client_ctx = contexts(certs)
    lsock = listener()
    try:
        pairs = [await make_pair(server_ctx, client_ctx, lsock) for _ in range(4)]
        await asyncio.gather(*(exchange(server, client, 3 * 1024 * 1024) for server, client in pairs))
        for server, client in pairs:
            client.close()
            assert await server.read() == b""
            server.close()
    finally:
        lsock.close()


async def test_idle_tls_links_keep_no_large_buffer(certs: HopCertificates) -> None:
    """asyncio's own TLS transport keeps a 256 KiB read buffer per connection; ours keeps none.
    (Python-level allocations only: OpenSSL's own memory is in the next test.)"""
    server_ctx, client_ctx = contexts(certs)
    lsock = listener()
    count = 30
    pairs: list[tuple[Link, Link]] = []
    try:
        warm = await tls_pair(server_ctx, client_ctx, lsock)  # the shared buffer, the contexts' caches
        await exchange(*warm, 1000)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(count):
                server, client = await tls_pair(server_ctx, client_ctx, lsock)
                await exchange(server, client, 1000)
                pairs.append((server, client))
            per_pair = (tracemalloc.get_traced_memory()[0] - before) / count
        finally:
            tracemalloc.stop()
        assert per_pair < 2 * 16 * 1024, f"{per_pair / 1024:.1f} KiB per connection pair"
    finally:
        for server, client in [*pairs, *([warm] if "warm" in locals() else [])]:
            client.abort()
            server.abort()
        lsock.close()


def test_certificate_is_checked(certs: HopCertificates, tmp_path: Path) -> None:
    """The connecting side still verifies the server against the host it meant to reach."""
    server_ctx, _ = contexts(certs)
    other = hop_certificates(tmp_path / "other", [HOST])
    wrong_client = ssl.create_default_context(cafile=str(other.ca))

    async def attempt() -> None:
        lsock = listener()
        try:
            loop = asyncio.get_running_loop()
            connecting = asyncio.ensure_future(open_link(HOST, lsock.getsockname()[1], timeout=10,
                                                         tls=wrong_client))
            accepted, _ = await loop.sock_accept(lsock)
            serving = asyncio.ensure_future(accept_link(accepted, tls=server_ctx, handshake_timeout=10))
            with pytest.raises(ssl.SSLCertVerificationError):
                await connecting
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await serving
        finally:
            lsock.close()

    asyncio.run(attempt())


async def read_to_end(link: Link) -> bytes:
    got = bytearray()
    while chunk := await link.read():
        got += chunk
    return bytes(got)


async def test_close_right_after_a_large_write_delivers_everything(certs: HopCertificates) -> None:
    """Records held back while the socket was paused still go out before the close_notify."""
    server_ctx, client_ctx = contexts(certs)
    lsock = listener()
    try:
        server, client = await tls_pair(server_ctx, client_ctx, lsock)
        data = os.urandom(8 * 1024 * 1024)
        server.write(data)  # far above every high-water mark: most of it waits in the backlog
        server.close()
        assert await asyncio.wait_for(read_to_end(client), 60) == data
        client.close()
    finally:
        lsock.close()


async def test_links_release_their_record_buffers_once_idle(certs: HopCertificates) -> None:
    """A large transfer leaves nothing behind on an idle TLS link: OpenSSL's socket BIO with
    SSL_MODE_RELEASE_BUFFERS frees its record buffers (memory BIOs kept their largest size, ~60 KiB
    more per endpoint after 1 MB each way)."""
    server_ctx, client_ctx = contexts(certs)
    lsock = listener()
    count = 20
    pairs: list[tuple[Link, Link]] = []
    try:
        for _ in range(count):
            pairs.append(await tls_pair(server_ctx, client_ctx, lsock))
        await asyncio.gather(*(exchange(server, client, 100) for server, client in pairs))
        gc.collect()
        before = malloc_in_use()
        await asyncio.gather(*(exchange(server, client, 1024 * 1024) for server, client in pairs))
        gc.collect()
        growth = (malloc_in_use() - before) / (2 * count)
        assert growth < 16 * 1024, f"{growth / 1024:.1f} KiB more per TLS endpoint"
    finally:
        for server, client in pairs:
            client.abort()
            server.abort()
        lsock.close()


async def test_starttls_after_a_reply_that_is_still_being_sent(certs: HopCertificates) -> None:
    """The plaintext before STARTTLS (here far more than the socket takes at once) reaches the peer
    whole and in the clear before the handshake starts on the same connection."""
    server_ctx, client_ctx = contexts(certs)
    lsock = listener()
    try:
        loop = asyncio.get_running_loop()
        connecting = asyncio.ensure_future(open_link(HOST, lsock.getsockname()[1], timeout=10))
        accepted, _ = await loop.sock_accept(lsock)
        server = await accept_link(accepted)
        client = await connecting
        reply = os.urandom(4 * 1024 * 1024)
        server.write(reply)
        upgrading = asyncio.ensure_future(server.start_tls(server_ctx, server_side=True))
        assert await asyncio.wait_for(read_exactly(client, len(reply)), 60) == reply
        await asyncio.wait_for(asyncio.gather(upgrading, client.start_tls(client_ctx, server_side=False,
                                                                          server_hostname=HOST)), 60)
        await exchange(server, client, 100_000)
        client.close()
        assert await server.read() == b""
        server.close()
    finally:
        lsock.close()


async def test_paused_reading_loses_nothing(certs: HopCertificates) -> None:
    """Records OpenSSL already decrypted when reading paused are delivered on resume, though the
    socket itself has nothing new to say."""
    server_ctx, client_ctx = contexts(certs)
    lsock = listener()
    try:
        server, client = await tls_pair(server_ctx, client_ctx, lsock)
        assert server.transport is not None
        data = os.urandom(2 * 1024 * 1024)
        chunks: list[bytes] = []
        done = asyncio.get_running_loop().create_future()

        class Pausing(asyncio.Protocol):
            """Pauses after every chunk and resumes on the next loop iteration."""

            def data_received(self, chunk: bytes) -> None:
                chunks.append(chunk)
                server.transport.pause_reading()
                asyncio.get_running_loop().call_soon(server.transport.resume_reading)
                if sum(map(len, chunks)) == len(data) and not done.done():
                    done.set_result(None)

        server.transport.set_protocol(Pausing())
        await send(client, data)
        await asyncio.wait_for(done, 60)
        assert b"".join(chunks) == data
        client.abort()
        server.abort()
    finally:
        lsock.close()


async def test_a_handshake_that_never_comes_is_cut_off(certs: HopCertificates) -> None:
    """A peer that connects and says nothing: the handshake ends with ConnectionAbortedError, as
    asyncio's does, and the descriptor is closed."""
    server_ctx, _ = contexts(certs)
    lsock = listener()
    try:
        loop = asyncio.get_running_loop()
        silent = socket.create_connection((HOST, lsock.getsockname()[1]))
        accepted, _ = await loop.sock_accept(lsock)
        with pytest.raises(ConnectionAbortedError):
            await accept_link(accepted, tls=server_ctx, handshake_timeout=0.2)
        silent.settimeout(10)
        assert silent.recv(1) == b""  # the server side closed its end
        silent.close()
    finally:
        lsock.close()


async def test_small_writes_into_a_full_socket_arrive_in_order(certs: HopCertificates) -> None:
    """Many small writes while the peer does not read: the socket fills, the write OpenSSL could not
    finish is offered again as it was, the rest queues behind it, and the peer gets every byte in order."""
    server_ctx, client_ctx = contexts(certs)
    lsock = listener()
    try:
        server, client = await tls_pair(server_ctx, client_ctx, lsock)
        assert client.transport is not None
        client.transport.pause_reading()  # the server's writes pile up in the kernel, then in its queue
        pieces = [os.urandom(1 + i % 3000) for i in range(3000)]
        for piece in pieces:
            server.write(piece)
        assert server.transport is not None and server.transport.get_write_buffer_size() > 0
        client.transport.resume_reading()
        expected = b"".join(pieces)
        assert await asyncio.wait_for(read_exactly(client, len(expected)), 60) == expected
        client.close()
        server.close()
    finally:
        lsock.close()


def queued_bytes(sock: socket.socket) -> int:
    """Bytes in the socket's receive queue (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


async def test_records_of_4_kib_are_read_on_as_a_bulk_transfer(certs: HopCertificates) -> None:
    """Dovecot 2.3's login process writes a large FETCH in 4 KiB records: records that had all arrived
    when the socket became readable reach the protocol in one `data_received`, not one per record
    (which made the relay write to the client once per 4 KiB)."""
    server_ctx, client_ctx = contexts(certs)
    lsock = listener()
    try:
        server, client = await tls_pair(server_ctx, client_ctx, lsock)
        assert client.transport is not None and server.transport is not None
        client.transport.pause_reading()
        records = [os.urandom(4096) for _ in range(16)]  # 64 KiB: one read's worth (READ_SIZE)
        for record in records:
            server.write(record)  # one SSL_write each: one record each
        assert server.transport.get_write_buffer_size() == 0
        sock = client.transport.get_extra_info("socket")
        at_least = sum(len(r) + 5 for r in records)  # plaintext plus a record header each, at the least
        async with asyncio.timeout(10):
            while queued_bytes(sock) < at_least:  # every record is in the kernel before the read starts
                await asyncio.sleep(0)
        chunks: list[bytes] = []
        got = asyncio.get_running_loop().create_future()

        class Recording(asyncio.Protocol):
            def data_received(self, chunk: bytes) -> None:
                chunks.append(chunk)
                if not got.done():
                    got.set_result(None)

        client.transport.set_protocol(Recording())
        client.transport.resume_reading()
        await asyncio.wait_for(got, 10)
        assert chunks == [b"".join(records)]
        client.abort()
        server.abort()
    finally:
        lsock.close()
