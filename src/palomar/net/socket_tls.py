"""TLS transports over a non-blocking `ssl.SSLSocket`: no record buffers while a connection is idle.

asyncio's TLS keeps two memory BIOs (`ssl.MemoryBIO`) per connection between OpenSSL and
the socket, whose capacity never shrinks. Here OpenSSL reads and writes the socket itself (its
socket BIO), and with `SSL_MODE_RELEASE_BUFFERS` (CPython sets it on every context) it frees its
record buffers whenever they are empty: an idle connection holds only the `SSL` object, its session
and the few Python objects below, as nginx's connections do.

The transport drives the `SSLSocket` from the event loop's reader/writer callbacks:

* reads go into one buffer per thread (an event loop runs in one thread), record after record until a
  short one (`SHORT_RECORD`) or the socket is empty, and reach the protocol as one `data_received` per
  readiness event;
* a write is handed to OpenSSL at once, in pieces of at most `WRITE_PIECE` bytes; a piece OpenSSL
  could not finish (`SSLWantWriteError`) is offered again, identical, when the socket is writable
  (OpenSSL's rule for a retried `SSL_write`); the rest waits in the transport's queue, with the usual
  high/low water marks;
* TLS cannot be half-closed: the peer's end of stream (close_notify, or a bare FIN) is reported
  with `eof_received` and the transport then closes, after the queued data and its own close_notify.

The three ways a connection gets TLS (accepted, connected, STARTTLS on a plaintext transport) are
`accept_tls`, `connect_tls` and `start_tls`. `tests/unit/net/test_socket_tls.py` pins the behaviour.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import fcntl
import os
import socket
import ssl
import termios
import threading
from collections.abc import Callable, Iterable
from typing import Any

READ_SIZE = 64 * 1024
"""Plaintext taken per readiness event at most (four full TLS records): one `data_received` for all."""

SHORT_RECORD = 4 * 1024
"""A record with less plaintext than this ends a read: it is most likely the last of a reply, and the
next loop iteration takes any record that did follow (no syscall that only says EAGAIN per small
command). After a longer record the read goes on while the kernel holds more bytes (`_bytes_waiting`:
one ioctl, far cheaper than an `SSL_read` that fails with SSLWantReadError). OpenSSL writers fill
records to 16 KiB, but Dovecot 2.3's login process, the TLS end in front of its `imap` process on the
direct path, writes 4 KiB records (`LOGIN_MAX_OUTBUF_SIZE`): one `data_received` per record made the
relay send to the client once per 4 KiB (docs/design/login-path-cost.md, "Large FETCH on the direct
path with TLS")."""

WRITE_PIECE = 64 * 1024
"""Plaintext handed to one `SSL_write` at most, so a large write does not sit whole in OpenSSL."""

HIGH_WATER = 64 * 1024
"""Default write-queue limit before the protocol is paused (asyncio's default)."""

SHUTDOWN_TIMEOUT = 30.0
"""How long a closing transport waits for its peer to take the queued data and the close_notify."""

_per_thread = threading.local()


def _bytes_waiting(fd: int) -> bool:
    """Whether the socket's receive queue holds anything (FIONREAD)."""
    count = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return any(count)


def _read_buffer() -> memoryview:
    view = getattr(_per_thread, "view", None)
    if view is None:
        view = _per_thread.view = memoryview(bytearray(READ_SIZE))
    return view


class SocketTLSTransport(asyncio.Transport):
    """An established TLS connection; the handshake is done before it is made. (`__slots__` and a
    write queue only while something waits: an idle connection's Python objects stay small.)"""

    __slots__ = ("_loop", "_sock", "_fd", "_protocol", "_queue", "_queued", "_high", "_low", "_protocol_paused",
                 "_reading", "_writer_on", "_read_wants_write", "_write_wants_read", "_closing", "_lost",
                 "_shutdown_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._queue: collections.deque[bytes | memoryview] | None = None
        """What OpenSSL has not taken yet; its head is offered again, identical, until it is taken."""
        self._queued = 0
        self._high = HIGH_WATER
        self._low = HIGH_WATER // 4
        self._protocol_paused = False
        self._reading = True
        self._writer_on = False
        self._read_wants_write = False
        self._write_wants_read = False
        self._closing = False
        self._lost = False
        self._shutdown_timer: asyncio.TimerHandle | None = None
        protocol.connection_made(self)
        loop.add_reader(self._fd, self._read_ready)

    # extra info
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Read from the socket when asked, not kept: most are never asked for."""
        sock = self._sock
        try:
            if name in ("socket", "ssl_object"):
                return sock
            if name == "sslcontext":
                return sock.context
            if name == "peername":
                return sock.getpeername()
            if name == "sockname":
                return sock.getsockname()
            if name == "peercert":
                return sock.getpeercert()
            if name == "cipher":
                return sock.cipher()
            if name == "compression":
                return sock.compression()
        except (OSError, ValueError):
            pass
        return default

    # protocol
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    # reading
    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        if self._closing or not self._reading:
            return
        self._reading = False
        self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if self._closing or self._reading:
            return
        self._reading = True
        self._loop.add_reader(self._fd, self._read_ready)
        if self._sock.pending():  # decrypted bytes OpenSSL holds: the socket will not say so
            self._loop.call_soon(self._read_ready)

    def _read_ready(self) -> None:
        if self._closing or not self._reading:
            return
        view = _read_buffer()
        got = 0
        eof = False
        failed: BaseException | None = None
        try:
            while got < READ_SIZE:
                count = self._sock.recv_into(view[got:])
                if not count:
                    eof = True
                    break
                got += count
                if not self._sock.pending() and (count < SHORT_RECORD or not _bytes_waiting(self._fd)):
                    break  # the last record that came: no recv that only says EAGAIN
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLWantWriteError:  # OpenSSL must answer something first (a key update)
            self._read_wants_write = True
            self._want_writer()
        except (OSError, ValueError) as exc:  # SSLError is an OSError; what came before it is delivered
            failed = exc
        if got:
            try:
                self._protocol.data_received(bytes(view[:got]))  # type: ignore[attr-defined]
            except Exception as exc:
                self._protocol_failed(exc, "data_received")
                return
        if failed is not None:
            self._force_close(failed)
        elif eof:
            self._end_of_stream()
        elif got == READ_SIZE and self._reading and not self._closing and self._sock.pending():
            self._loop.call_soon(self._read_ready)
        if self._write_wants_read and not self._closing:
            self._write_wants_read = False
            self._flush()

    def _end_of_stream(self) -> None:
        if self._closing:
            return
        try:
            self._protocol.eof_received()  # type: ignore[attr-defined]
        except Exception as exc:
            self._protocol_failed(exc, "eof_received")
            return
        self.close()  # TLS cannot stay half-open

    def _protocol_failed(self, exc: Exception, call: str) -> None:
        """A bug in the protocol: reported as asyncio's own transports report it, and the connection closed."""
        self._loop.call_exception_handler({"message": f"Fatal error: protocol.{call}() call failed.",
                                           "exception": exc, "transport": self, "protocol": self._protocol})
        self._force_close(exc)

    # writing
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._closing:
            return
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        if self._queue is None:
            if not self._writer_on and len(data) <= WRITE_PIECE:
                try:
                    self._sock.send(data)  # the usual case: all of it, at once
                    return
                except ssl.SSLWantWriteError:  # queued: offered again, identical, when writable
                    self._want_writer()
                except ssl.SSLWantReadError:
                    self._write_wants_read = True
                except (OSError, ValueError) as exc:
                    self._force_close(exc)
                    return
            self._queue = collections.deque()
        self._queue.append(data)
        self._queued += len(data)
        if not self._writer_on and not self._write_wants_read:
            self._flush()
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS cannot be half-closed")

    def get_write_buffer_size(self) -> int:
        return self._queued

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def _flush(self) -> None:
        """Hand the queue to OpenSSL, piece by piece, until it is empty or the socket is full."""
        queue = self._queue
        if queue is None:
            return
        try:
            while queue:
                head = queue[0]
                piece = head if len(head) <= WRITE_PIECE else memoryview(head)[:WRITE_PIECE]
                sent = self._sock.send(piece)
                self._queued -= sent
                if sent == len(head):
                    queue.popleft()
                else:
                    queue[0] = memoryview(head)[sent:]
        except ssl.SSLWantWriteError:
            self._want_writer()
            return
        except ssl.SSLWantReadError:  # OpenSSL must read first; the next read retries the write
            self._write_wants_read = True
            return
        except (OSError, ValueError) as exc:
            self._force_close(exc)
            return
        self._queue = None
        if self._writer_on and not self._read_wants_write:
            self._writer_on = False
            self._loop.remove_writer(self._fd)
        self._maybe_resume_protocol()
        if self._closing and not self._lost:
            self._shutdown()

    def _want_writer(self) -> None:
        if not self._writer_on:
            self._writer_on = True
            self._loop.add_writer(self._fd, self._write_ready)

    def _write_ready(self) -> None:
        if self._lost:
            return
        if self._read_wants_write:
            self._read_wants_write = False
            if self._queue is None and not self._closing:
                self._writer_on = False
                self._loop.remove_writer(self._fd)
            self._read_ready()
            if self._lost:
                return
        if self._queue is not None:
            self._flush()
        elif self._closing:
            self._shutdown()

    def _maybe_pause_protocol(self) -> None:
        if self._queued > self._high and not self._protocol_paused:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self._queued <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()

    # closing
    def close(self) -> None:
        """Send what is queued, then close_notify, then close the socket (within SHUTDOWN_TIMEOUT)."""
        if self._closing:
            return
        self._closing = True
        if self._reading:
            self._loop.remove_reader(self._fd)
        self._shutdown_timer = self._loop.call_later(SHUTDOWN_TIMEOUT, self._force_close, None)
        if self._queue is None:
            self._shutdown()

    def abort(self) -> None:
        self._force_close(None)

    def _shutdown(self) -> None:
        try:
            self._sock.unwrap()  # close_notify; the peer's answer is not waited for
        except ssl.SSLWantWriteError:
            self._want_writer()
            return
        except (OSError, ValueError):  # SSLWantReadError (close_notify sent), or the peer is gone
            pass
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._queue = None
        self._queued = 0
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    waiter = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    add(fd, lambda: waiter.done() or waiter.set_result(None))
    try:
        await waiter
    finally:
        remove(fd)


async def _handshake(sock: ssl.SSLSocket, protocol: asyncio.BaseProtocol,
                     timeout: float | None) -> SocketTLSTransport:
    """Finish the handshake on `sock` (closed on failure) and make the transport. A handshake that
    takes longer than `timeout` fails with ConnectionAbortedError, as asyncio's own does."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    try:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        sock.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        await _ready(loop, fd, write=False)
                    except ssl.SSLWantWriteError:
                        await _ready(loop, fd, write=True)
        except TimeoutError:
            raise ConnectionAbortedError(f"TLS handshake is taking longer than {timeout} seconds: "
                                         "aborting the connection") from None
    except BaseException:
        sock.close()
        raise
    return SocketTLSTransport(loop, sock, protocol)


def _wrap(sock: socket.socket, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None,
          session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's socket transports do
    return context.wrap_socket(sock, server_side=server_side, server_hostname=server_hostname,
                               do_handshake_on_connect=False, session=session)


async def accept_tls(sock: socket.socket, protocol: asyncio.BaseProtocol, context: ssl.SSLContext, *,
                     handshake_timeout: float | None,
                     on_transport: Callable[[asyncio.BaseTransport], None]) -> asyncio.Transport:
    """Server-side TLS on an accepted socket; `protocol.connection_made` gets the transport once
    the handshake is done. `on_transport` learns the transport (the socket's owner from then on)."""
    try:
        tls = _wrap(sock, context, server_side=True)
    except BaseException:
        sock.close()
        raise
    transport = await _handshake(tls, protocol, handshake_timeout)
    on_transport(transport)
    return transport


async def connect_tls(host: str, port: int, protocol: asyncio.BaseProtocol, context: ssl.SSLContext, *,
                      handshake_timeout: float | None, session: ssl.SSLSession | None = None,
                      preamble: bytes = b"") -> asyncio.Transport:
    """Client-side TLS to host:port, the certificate checked against `host`; with `session` (from an
    earlier connection to the same host with the same context) the server may resume it, which skips
    the certificate's signature and its verification. `preamble` goes first, in clear (a PROXY header:
    Dovecot's `haproxy = yes` listener reads it before its handshake)."""
    sock = await _connect(host, port)
    try:
        if preamble:
            await asyncio.get_running_loop().sock_sendall(sock, preamble)
        tls = _wrap(sock, context, server_side=False, server_hostname=host, session=session)
    except BaseException:
        sock.close()
        raise
    return await _handshake(tls, protocol, handshake_timeout)


async def _connect(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket; an address literal skips the resolver's thread hop."""
    loop = asyncio.get_running_loop()
    targets = _literal(host, port)
    if targets is None:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        targets = [(family, address) for family, _, _, _, address in infos]
    errors: list[OSError] = []
    for family, address in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            errors.append(exc)
        except BaseException:
            sock.close()
            raise
    if len(errors) == 1:
        raise errors[0]
    raise OSError(errors[0].errno if errors else errno.EHOSTUNREACH,
                  f"connect to {host}:{port} failed: {'; '.join(map(str, errors)) or 'no address'}")


def _literal(host: str, port: int) -> list[tuple[int, tuple[str, int]]] | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, (host, port))]
    return None


class _Detached(asyncio.Protocol):
    """Takes a plaintext transport's last callback once its socket went on to TLS."""


async def start_tls(transport: asyncio.Transport, protocol: asyncio.BaseProtocol, context: ssl.SSLContext, *,
                    server_side: bool, server_hostname: str | None = None,
                    handshake_timeout: float | None = None, session: ssl.SSLSession | None = None,
                    on_transport: Callable[[asyncio.BaseTransport], None] | None = None) -> asyncio.Transport:
    """Move a plaintext transport's connection to TLS (STARTTLS, or TLS after a PROXY header); a client
    may offer `session` to resume, as in `connect_tls`.

    The plaintext transport must have written everything (the caller waits for its buffer to
    drain). Its descriptor is duplicated for the TLS socket and the plaintext transport is then
    closed: asyncio's transports cannot hand their socket over, and the duplicate keeps the TCP
    connection open while the old descriptor goes.
    """
    if transport.get_write_buffer_size():
        raise RuntimeError("start_tls: the plaintext transport still has data to send")
    plain = transport.get_extra_info("socket")
    transport.pause_reading()
    sock = socket.socket(plain.family, plain.type, plain.proto, fileno=os.dup(plain.fileno()))
    transport.set_protocol(_Detached())
    transport.abort()
    try:
        tls = _wrap(sock, context, server_side=server_side, server_hostname=server_hostname, session=session)
    except BaseException:
        sock.close()
        raise
    result = await _handshake(tls, protocol, handshake_timeout)
    if on_transport is not None:
        on_transport(result)
    return result
