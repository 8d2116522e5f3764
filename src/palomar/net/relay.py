"""After login: move bytes between two transports, nothing else.

No parsing and no task per session: each transport gets a tiny protocol that writes what it
receives to the other side. Back-pressure: when one side's write buffer passes its high-water
mark, the other side stops reading until it drains. Half-close is passed on; a full close
of either side closes both and reports who closed first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


@dataclass(slots=True)
class RelayStats:
    """What the session log line and the metrics report when the relay ends."""

    started: float
    bytes_in: int = 0
    """client -> backend"""
    bytes_out: int = 0
    """backend -> client"""
    last_activity: float = 0.0
    closed_by: str = ""
    """"client", "server" or "proxy"."""


class _End(asyncio.Protocol):
    __slots__ = ("relay", "side", "transport", "peer")

    def __init__(self, relay: Relay, side: str, transport: asyncio.Transport) -> None:
        self.relay = relay
        self.side = side
        self.transport = transport
        self.peer: _End | None = None

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport.is_closing():
            return
        peer.transport.write(data)
        self.relay.count(self.side, len(data))

    def eof_received(self) -> bool:
        self.relay.half_closed(self)
        return self.transport.can_write_eof()  # TLS cannot stay half-open: let it close

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.lost(self)


class Relay:
    """Joins a client transport and a server (backend) transport."""

    __slots__ = ("stats", "_on_done", "_finished", "_eofs", "client", "server")

    def __init__(
        self,
        client: asyncio.Transport,
        server: asyncio.Transport,
        on_done: Callable[[RelayStats], None] | None = None,
    ) -> None:
        now = time.monotonic()
        self.stats = RelayStats(started=now, last_activity=now)
        self._on_done = on_done
        self._finished = False
        self._eofs = 0
        self.client = _End(self, "client", client)
        self.server = _End(self, "server", server)
        self.client.peer = self.server
        self.server.peer = self.client

    def start(self, client_pending: bytes = b"", server_pending: bytes = b"", *, client_eof: bool = False,
              server_eof: bool = False) -> None:
        """Install the relay and forward what each side sent before the switch, and a FIN a side
        sent before it (`*_eof`): a client that pipelined its commands after LOGIN and then shut
        down its sending half still gets every answer before the relay closes."""
        for end in (self.client, self.server):
            end.transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
            end.transport.set_protocol(end)
        if client_pending:
            self.client.data_received(client_pending)
        if server_pending:
            self.server.data_received(server_pending)
        for end, eof in ((self.client, client_eof), (self.server, server_eof)):
            if end.transport.is_closing():
                self.lost(end)
            elif eof:
                self.half_closed(end)

    def count(self, side: str, n: int) -> None:
        if side == "client":
            self.stats.bytes_in += n
        else:
            self.stats.bytes_out += n
        self.stats.last_activity = time.monotonic()

    def half_closed(self, end: _End) -> None:
        self._eofs += 1
        if not self.stats.closed_by:
            self.stats.closed_by = end.side
        peer = end.peer
        if self._eofs >= 2 or peer is None:
            self.close()
        elif peer.transport.can_write_eof():
            peer.transport.write_eof()
        else:
            self.close()

    def lost(self, end: _End) -> None:
        if not self.stats.closed_by:
            self.stats.closed_by = end.side
        self.close()

    def close(self, by: str | None = None) -> None:
        """Close both sides (by="proxy" when palomar ends the session, e.g. a kick)."""
        if by and not self.stats.closed_by:
            self.stats.closed_by = by
        for end in (self.client, self.server):
            if not end.transport.is_closing():
                end.transport.close()
        if not self._finished:
            self._finished = True
            if self._on_done is not None:
                self._on_done(self.stats)
