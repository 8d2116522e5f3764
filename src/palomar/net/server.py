"""Listening sockets and the accept loop shared by the proxy and the backend services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

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


_handed_over: ContextVar[list[asyncio.BaseTransport] | None] = ContextVar("palomar_handed_over", default=None)
"""The transports the running handler gave its accepted socket to (`net.link.accept_link`)."""


def handed_over(transport: asyncio.BaseTransport) -> None:
    """Record that the running handler's socket now belongs to `transport`, so that the accept
    loop's last resort closes the transport, never the socket under it."""
    owned = _handed_over.get()
    if owned is not None:
        owned.append(transport)


class AcceptLoop:
    """Accepts connections and runs `handler(sock)` for each in its own task."""

    def __init__(self, sock: socket.socket, handler: Callable[[socket.socket], Awaitable[None]]) -> None:
        self.sock = sock
        self.handler = handler
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
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)  # e.g. out of file descriptors: do not spin
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._guarded(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        self.sock.close()
        for task in list(self._tasks):
            task.cancel()
