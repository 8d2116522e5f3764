"""Stopping a service gracefully (SIGTERM): stop accepting, let logins in progress finish within a
bound, end every relayed session with its protocol's shutdown line, then return.

A session waiting for its client's next command is stopped at once: `Drain.read` raises
`ShuttingDown` in it, and it answers with the shutdown line. A session busy with a login (or
an LMTP transaction) is left alone until the bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from palomar.net.link import Link
from palomar.net.relay import Relay
from palomar.net.server import AcceptLoop

log = logging.getLogger("palomar.net")

LOGIN_GRACE = 10.0
"""Seconds logins (and LMTP transactions) in progress get to finish once a stop began."""
FLUSH_GRACE = 2.0
"""Seconds the closed sessions get to flush their last bytes (the shutdown lines) to the clients."""
FLUSH_POLL = 0.02


class ShuttingDown(Exception):
    """The service stops: answer the client with the protocol's shutdown line and close."""


class Drain:
    """Which sessions wait for client input, so a stop can interrupt exactly those."""

    def __init__(self) -> None:
        self.stopping = False
        self._readers: set[asyncio.Task] = set()

    async def read(self, link: Link, *, stoppable: bool = True) -> bytes:
        """`link.read()`, or ShuttingDown once the service stops (only if `stoppable`)."""
        if not stoppable:
            return await link.read()
        if self.stopping:
            raise ShuttingDown
        task = asyncio.current_task()
        assert task is not None
        self._readers.add(task)
        try:
            return await link.read()
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            task.uncancel()
            raise ShuttingDown from None
        finally:
            self._readers.discard(task)

    def stop_readers(self) -> None:
        self.stopping = True
        for task in list(self._readers):
            task.cancel()


async def drain_service(loops: Iterable[AcceptLoop], drain: Drain, relays: Iterable[Relay], *,
                        grace: float = LOGIN_GRACE) -> None:
    """The stop sequence of a relaying service (proxy or backend); `relays` is read after the
    logins finished, so sessions that logged in meanwhile are included."""
    loops = list(loops)
    for accept_loop in loops:
        await accept_loop.stop_accepting()
    drain.stop_readers()
    deadline = time.monotonic() + grace
    cut = 0
    for accept_loop in loops:
        cut += await accept_loop.finish(max(deadline - time.monotonic(), 0))
    closing = list(relays)
    for relay in closing:
        relay.shut_down()
    log.info("stopping: %d relayed session(s) closed, %d session(s) cut after %gs", len(closing), cut, grace)
    transports = [relay.client.transport for relay in closing]
    deadline = time.monotonic() + FLUSH_GRACE
    while any(t.get_write_buffer_size() for t in transports) and time.monotonic() < deadline:
        await asyncio.sleep(FLUSH_POLL)  # transports report no "flushed" event; bounded
    await asyncio.sleep(0)  # let connection_lost callbacks run
