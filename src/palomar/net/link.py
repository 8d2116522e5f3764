"""A connection for the login phase: await bytes, write bytes, then hand over to the relay.

asyncio Protocols instead of streams: the same transport is later switched to the relay
protocol with `set_protocol`, so an established session costs two transports and two small
protocol objects, not a task with buffered readers and writers.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from palomar.net import socket_tls
from palomar.net.server import handed_over

READ_LIMIT = 256 * 1024
"""Pause reading when this much unread input piled up during the login phase."""


class LinkClosed(Exception):
    """The peer went away while we were waiting for it."""


class Link(asyncio.Protocol):
    """Buffers what the peer sends until the session code awaits it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._lost = False
        self._paused = False
        self._writable: asyncio.Future[None] | None = None

    # asyncio.Protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > READ_LIMIT and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        """The peer will send no more, but it may still be reading: keep the sending half open so
        everything it sent before its FIN is answered (`nc -N`, MTAs that shut down their side
        after the last command). The session closes the link once it has read to the end. TLS
        cannot stay half-open, so a TLS transport closes itself as before."""
        self._eof = True
        self._wake()
        return self.transport is not None and self.transport.can_write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # session API
    @property
    def eof(self) -> bool:
        """The peer finished sending (what it sent before may still be unread)."""
        return self._eof or self._lost

    @property
    def closed(self) -> bool:
        """Nothing more will come from the peer, or the connection is gone."""
        return self._eof or self._lost or self.transport is None or self.transport.is_closing()

    async def read(self) -> bytes:
        """Everything received so far (at least one byte); b"" once the peer closed."""
        while not self._buffer:
            if self._eof or self._lost:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._paused and self.transport is not None and not self._lost:
            self._paused = False
            self.transport.resume_reading()
        return data

    def unread(self, data: bytes) -> None:
        """Put back bytes that belong to the next phase (e.g. what follows a header)."""
        self._buffer[:0] = data

    def take_buffer(self) -> bytes:
        """Hand over unread bytes (at the switch to relaying)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's send buffer is above its high-water mark, so a slow peer
        slows the sender down instead of the data piling up in memory (returns at once if closed)."""
        while self._writable is not None and not self._lost:
            await asyncio.shield(self._writable)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def peername(self) -> tuple[str, int] | None:
        if self.transport is None:
            return None
        peer = self.transport.get_extra_info("peername")
        return (peer[0], peer[1]) if peer else None

    def new_tls_session(self) -> ssl.SSLSession | None:
        """After a full handshake, the TLS session to offer the next connections to the same server;
        None after a resumed one (the session offered is still good) or on plaintext. Reading a
        session costs a serialisation round trip in CPython (`_ssl_session_dup`), about as much as
        resuming saves, so it is read once per full handshake, not per connection."""
        if self.transport is None:
            return None
        tls = self.transport.get_extra_info("ssl_object")
        if tls is None or tls.session_reused:
            return None
        return tls.session

    def sockname(self) -> tuple[str, int] | None:
        if self.transport is None:
            return None
        name = self.transport.get_extra_info("sockname")
        return (name[0], name[1]) if name else None

    async def start_tls(self, context, *, server_side: bool, server_hostname: str | None = None,
                        session: ssl.SSLSession | None = None) -> None:
        """Upgrade in place (STARTTLS). Unread plaintext is discarded: bytes pipelined after a
        STARTTLS command must never be treated as if they had been encrypted."""
        assert self.transport is not None
        self._buffer.clear()
        if self.transport.get_write_buffer_size():  # the reply to STARTTLS goes out in plaintext first
            self.transport.set_write_buffer_limits(high=0)
            await self.drain()
            if self._lost:
                raise ConnectionResetError("the peer closed before TLS started")
        self.transport = await socket_tls.start_tls(self.transport, self, context, server_side=server_side,
                                                    server_hostname=server_hostname, session=session,
                                                    on_transport=handed_over)


async def accept_link(sock: socket.socket, *, tls: ssl.SSLContext | None = None,
                      handshake_timeout: float | None = None) -> Link:
    """Hand an accepted socket over to a Link's transport, for good (with `tls`: after a server-side
    handshake within `handshake_timeout`).

    The transport gets the descriptor in a socket object of its own and `sock` is left detached
    (`fileno() == -1`): whoever still holds `sock` (the accept loop's last-resort close) can no
    longer close a descriptor that a live transport owns. Closing it under the transport would
    let the kernel hand the same number to the next connection while the event loop still
    watches it ("File descriptor N is used by transport"). TLS goes through `net.socket_tls`.
    """
    owned = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    owned.setblocking(False)
    link = Link()
    try:
        if tls is None:
            transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: link, owned)
            handed_over(transport)
        else:
            await socket_tls.accept_tls(owned, link, tls, handshake_timeout=handshake_timeout,
                                        on_transport=handed_over)
    except BaseException:
        owned.close()
        raise
    return link


async def open_link(host: str, port: int, *, timeout: float, tls: ssl.SSLContext | None = None,
                    session: ssl.SSLSession | None = None, preamble: bytes = b"") -> Link:
    """Connect to host:port within `timeout` seconds; with `tls`, handshake and verify the
    certificate against `host` within the same time (or resume `session`). `preamble` is sent first,
    in clear, before any handshake (a PROXY header)."""
    link = Link()
    async with asyncio.timeout(timeout):  # not wait_for: that wraps the connect in one more task
        if tls is None:
            await asyncio.get_running_loop().create_connection(lambda: link, host, port)
            if preamble:
                link.write(preamble)
        else:
            await socket_tls.connect_tls(host, port, link, tls, handshake_timeout=timeout, session=session,
                                         preamble=preamble)
    return link
