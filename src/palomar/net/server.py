"""Listening sockets and the accept loop shared by the proxy and the backend services."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from palomar.net.refusals import RefusalLog

log = logging.getLogger("palomar.net")

BACKLOG = 1024
"""Deep enough that a burst of logins is queued, not dropped (a dropped SYN costs a 1 s retry)."""


def listen_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking listening TCP socket on host:port (IPv4 or IPv6 literal, or a name)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


_handed_over: ContextVar[list[asyncio.BaseTransport] | None] = ContextVar("palomar_handed_over", default=None)
"""The transports the running handler gave its accepted socket to (`net.link.accept_link`)."""


def handed_over(transport: asyncio.BaseTransport) -> None:
    """Record that the running handler's socket now belongs to `transport`, so that the accept
    loop's last resort closes the transport, never the socket under it."""
    owned = _handed_over.get()
    if owned is not None:
        owned.append(transport)


class AcceptLoop:
    """Accepts connections and runs `handler(sock)` for each in its own task.

    Out of file descriptors, a waiting connection would stay in the backlog and `accept` would fail
    again at once; instead one descriptor kept in reserve is freed to accept it, answer `busy_reply`
    and close it, so clients get a polite refusal and the log gets one summary line per interval.
    """

    def __init__(self, sock: socket.socket, handler: Callable[[socket.socket], Awaitable[None]], *,
                 busy_reply: bytes = b"", refusals: RefusalLog | None = None) -> None:
        self.sock = sock
        self.handler = handler
        self.busy_reply = busy_reply
        self.refusals = refusals if refusals is not None else RefusalLog()
        self._reserve: int | None = _reserve_fd()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno in OUT_OF_FDS and self._shed_one():
                    continue
                line = self.refusals.record("accept failed" if exc.errno not in OUT_OF_FDS
                                            else "out of file descriptors")
                if line:
                    log.warning("%s (%s)", line, exc.strerror or exc)
                await asyncio.sleep(0.1)  # nothing could be accepted: do not spin
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._guarded(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _shed_one(self) -> bool:
        """Out of descriptors: accept one waiting connection with the reserve, refuse it, re-arm."""
        if self._reserve is None:
            self._reserve = _reserve_fd()
            return False
        os.close(self._reserve)
        try:
            conn, peer = self.sock.accept()  # synchronous: nothing else can take the freed descriptor
        except OSError:
            self._reserve = _reserve_fd()
            return False
        with conn:
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.send(self.busy_reply)
        self._reserve = _reserve_fd()
        line = self.refusals.record("out of file descriptors", _address(peer))
        if line:
            log.warning(line)
        return True

    async def _guarded(self, conn: socket.socket) -> None:
        """The last resort, for a bug in a handler: each session owns its connection and has its
        own exception boundary that answers the client. Closing `conn` here is safe: a handler
        that gave it to a transport did so through `net.link.accept_link`, which left `conn`
        detached, so this cannot close a descriptor a live transport still watches."""
        _handed_over.set([])  # this task's own context
        try:
            await self.handler(conn)
        except Exception:  # one broken session must never stop the service
            log.exception("session handler failed")
            for transport in _handed_over.get() or ():
                transport.abort()
            with contextlib.suppress(OSError):
                conn.close()

    async def stop_accepting(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        self.sock.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    async def finish(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for the sessions' handlers, then cancel the rest; how many."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        left = list(self._tasks)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=1.0)
        return len(left)

    async def close(self) -> None:
        await self.stop_accepting()
        for task in list(self._tasks):
            task.cancel()


def _reserve_fd() -> int | None:
    """A descriptor to give up when the process runs out (None if even that is not possible now)."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _address(peer: object) -> str | None:
    return peer[0] if isinstance(peer, tuple) and peer else None
