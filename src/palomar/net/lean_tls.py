"""TLS transports without asyncio's 256 KiB read buffer per connection.

asyncio's `SSLProtocol` gives every connection its own `bytearray(256 KiB)` to `recv_into`, and
keeps it for the connection's life: an idle IMAPS session cost 277 KiB instead of ~20. That
buffer only carries bytes from the socket into the connection's `ssl.MemoryBIO`, and it is emptied
synchronously: the selector loop calls `get_buffer`, `recv_into` and `buffer_updated` one after the
other, and the first thing `buffer_updated` does is copy the bytes into the BIO. So one buffer per
thread (an event loop runs in one thread) serves every connection of that loop.

`LeanSSLProtocol` shares that buffer, reads decrypted data in 16 KiB steps (one TLS record at
most, so nothing is lost by the smaller step; asyncio's 256 KiB `read()` allocates 256 KiB and
shrinks it for every record), and encrypts one record at a time, so that the connection's two
`MemoryBIO`s, whose capacity never shrinks, stay near one record each. The three ways a
connection gets TLS (accepted, connected, STARTTLS) are wired here the way asyncio's own
`_make_ssl_transport` and `start_tls` wire them.

`asyncio.sslproto` is not public API: this relies on CPython 3.11+'s `SSLProtocol` (the one ported
from uvloop), its `get_buffer`/`buffer_updated` pair and `_app_transport`.
`tests/unit/net/test_lean_tls.py` pins the behaviour (memory per connection, byte-exact transfers).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from asyncio import sslproto
from collections.abc import Callable

SOCKET_READ_SIZE = 32 * 1024
"""Bytes one `recv_into` may take from the kernel: two full TLS records. Everything read goes into the
connection's incoming BIO, which keeps the capacity of the most it ever held: with 256 KiB reads
(and whole writes encrypted at once) a connection kept ~380 KiB after a 1 MB transfer, with 32 KiB
reads ~85 KiB, at the same loopback throughput (docs/design/login-path-cost.md, "TLS memory")."""

RECORD_WRITE_SIZE = 16 * 1024
"""Plaintext encrypted per step: one full TLS record."""

RECORD_READ_SIZE = 16 * 1024
"""Plaintext taken from the TLS object per `read` call: a TLS record carries at most 16 KiB."""

_per_thread = threading.local()


def _shared_read_buffer() -> memoryview:
    view = getattr(_per_thread, "view", None)
    if view is None:
        view = _per_thread.view = memoryview(bytearray(SOCKET_READ_SIZE))
    return view


class LeanSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol, reading the socket into its thread's shared buffer."""

    max_size = RECORD_READ_SIZE

    def __init__(self, *args, **kwargs) -> None:
        self.max_size = 0  # the base __init__ allocates bytearray(max_size): nothing to allocate
        super().__init__(*args, **kwargs)
        del self.max_size
        self._ssl_buffer_view = _shared_read_buffer()
        self._ssl_buffer = None

    def get_buffer(self, n: int) -> memoryview:
        return self._ssl_buffer_view

    def _do_write(self) -> None:
        """Encrypt the backlog one record at a time, handing each to the socket transport before the
        next, and stop while the socket transport is paused: the outgoing BIO never holds more than one
        record. (asyncio encrypts each whole write at once; a BIO keeps the capacity of the most it ever
        held for the connection's life.)"""
        try:
            while self._write_backlog and not self._ssl_writing_paused:
                data = self._write_backlog[0]
                count = self._sslobj.write(memoryview(data)[:RECORD_WRITE_SIZE])
                if count < len(data):
                    self._write_backlog[0] = memoryview(data)[count:]
                else:
                    del self._write_backlog[0]
                self._write_buffer_size -= count
                self._process_outgoing()
        except sslproto.SSLAgainErrors:
            pass
        self._process_outgoing()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_backlog and self._state == sslproto.SSLProtocolState.WRAPPED:
            self._do_write()

    def _do_flush(self) -> None:
        """Closing: what is still in the backlog (held back while the socket was paused) goes into the
        BIO before the close_notify alert, all at once as asyncio does it."""
        if self._write_backlog:
            super()._do_write()
        super()._do_flush()


async def accept_tls(sock: socket.socket, protocol: asyncio.Protocol, context: ssl.SSLContext, *,
                     handshake_timeout: float | None,
                     on_transport: Callable[[asyncio.BaseTransport], None]) -> asyncio.Transport:
    """Server-side TLS on an accepted socket; `protocol.connection_made` gets the TLS transport once
    the handshake is done. `on_transport` learns the socket's transport as soon as it owns the
    socket (before the handshake), so a caller can close it if the handshake never ends."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    tls = LeanSSLProtocol(loop, protocol, context, waiter, server_side=True,
                          ssl_handshake_timeout=handshake_timeout)
    raw, _ = await loop.connect_accepted_socket(lambda: tls, sock)
    on_transport(raw)
    return await _handshake(tls, raw, waiter)


async def connect_tls(host: str, port: int, protocol: asyncio.Protocol, context: ssl.SSLContext, *,
                      handshake_timeout: float | None, session: ssl.SSLSession | None = None) -> asyncio.Transport:
    """Client-side TLS to host:port, the certificate checked against `host`; with `session` (from an
    earlier connection to the same host with the same context) the server may resume it, which skips
    the certificate's signature and its verification (asyncio's own API cannot pass one)."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    tls = LeanSSLProtocol(loop, protocol, context, waiter, server_side=False, server_hostname=host,
                          ssl_handshake_timeout=handshake_timeout)
    if session is not None:
        tls._sslobj.session = session
    raw, _ = await loop.create_connection(lambda: tls, host, port)
    return await _handshake(tls, raw, waiter)


async def start_tls(transport: asyncio.Transport, protocol: asyncio.Protocol, context: ssl.SSLContext, *,
                    server_side: bool, server_hostname: str | None = None,
                    session: ssl.SSLSession | None = None) -> asyncio.Transport:
    """Upgrade a plaintext transport in place (STARTTLS), as `loop.start_tls` does; a client may offer
    `session` to resume, as in `connect_tls`."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    tls = LeanSSLProtocol(loop, protocol, context, waiter, server_side=server_side,
                          server_hostname=server_hostname, call_connection_made=False)
    if session is not None:
        tls._sslobj.session = session
    transport.pause_reading()  # nothing reaches the TLS protocol before its connection_made
    transport.set_protocol(tls)
    made = loop.call_soon(tls.connection_made, transport)
    resume = loop.call_soon(transport.resume_reading)
    try:
        return await _handshake(tls, transport, waiter)
    except BaseException:
        made.cancel()
        resume.cancel()
        raise


async def _handshake(tls: LeanSSLProtocol, raw: asyncio.BaseTransport,
                     waiter: asyncio.Future[None]) -> asyncio.Transport:
    try:
        await waiter
    except BaseException:
        raw.close()
        raise
    return tls._app_transport
