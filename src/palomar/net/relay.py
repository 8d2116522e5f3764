"""After login: move bytes between two transports, nothing else.

No parsing and no task per session: each transport gets a tiny protocol that writes what it
receives to the other side. Back-pressure: when one side's write buffer passes its high-water
mark, the other side stops reading until it drains. Half-close is passed on; a full close
of either side closes both and reports who closed first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


@dataclass(slots=True)
class RelayStats:
    """What the session log line and the metrics report when the relay ends."""

    started: float
    bytes_in: int = 0
    """client -> backend (set when the relay ends)"""
    bytes_out: int = 0
    """backend -> client (set when the relay ends)"""
    last_activity: float = 0.0
    closed_by: str = ""
    """"client", "server" or "proxy"."""


class _End(asyncio.Protocol):
    """One side of the relay. `data_received` runs for every chunk of every session, so it does only
    the write, its own byte count and the clock; the relay's stats get the counts when it ends."""

    __slots__ = ("relay", "stats", "side", "transport", "peer", "received", "tracks_lines")

    def __init__(self, relay: Relay, side: str, transport: asyncio.Transport) -> None:
        self.relay = relay
        self.stats = relay.stats
        self.side = side
        self.transport = transport
        self.peer: _End | None = None
        self.received = 0
        self.tracks_lines = side == "server"
        """Whether the relay must know that this side's stream ended a line (the server's)."""

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport.is_closing():
            return
        peer.transport.write(data)
        self.received += len(data)
        self.stats.last_activity = monotonic()
        if self.tracks_lines:
            self.relay.at_line_start = data[-1:] == b"\n"

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

    __slots__ = ("stats", "_on_done", "_finished", "_eofs", "client", "server", "shutdown_line", "at_line_start")

    def __init__(
        self,
        client: asyncio.Transport,
        server: asyncio.Transport,
        on_done: Callable[[RelayStats], None] | None = None,
        shutdown_line: bytes = b"",
    ) -> None:
        now = monotonic()
        self.stats = RelayStats(started=now, last_activity=now)
        self._on_done = on_done
        self.shutdown_line = shutdown_line
        """What the protocol tells a client when the server shuts down (e.g. IMAP's `* BYE`)."""
        self.at_line_start = True
        """The server's stream last ended a line (the login reply does), so a line may be put in."""
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

    def half_closed(self, end: _End) -> None:
        self._eofs += 1
        if not self.stats.closed_by:
            self.stats.closed_by = end.side
        peer = end.peer
        if self._eofs >= 2 or peer is None:
            self.close()
        elif peer.transport.can_write_eof():
            peer.transport.write_eof()
        elif end.side == "server":
            self.close()  # the server is done; its FIN cannot cross TLS, so the close says it
        # else: a client's FIN towards a TLS server (the hop), which cannot carry a half-close. Keep the
        # server open: its answers to what came before the FIN still come back, and its own close
        # (after LOGOUT/QUIT, or its idle timeout) ends the relay, as with an idle client.

    def lost(self, end: _End) -> None:
        if not self.stats.closed_by:
            self.stats.closed_by = end.side
        self.close()

    def shut_down(self) -> None:
        """Close the session because this service stops: stop reading the server, give the client
        `shutdown_line` if the server's stream is between two lines, close both sides.

        Only the last byte relayed is known, not the protocol's state: a server that stalled in the
        middle of a literal right after a line break gets the line inside its data; the connection
        closes either way, and the client sees it close.
        """
        if self._finished:
            return
        self.server.transport.pause_reading()
        client = self.client.transport
        if self.shutdown_line and self.at_line_start and not client.is_closing():
            client.write(self.shutdown_line)
        self.close(by="proxy")

    def close(self, by: str | None = None, *, abort: bool = False) -> None:
        """Close both sides (by="proxy" when palomar ends the session, e.g. a kick).

        `abort` drops what is still buffered for either side instead of flushing it (fencing:
        nothing more of this session may reach anyone)."""
        if by and not self.stats.closed_by:
            self.stats.closed_by = by
        for end in (self.client, self.server):
            if abort:
                end.transport.abort()
            elif not end.transport.is_closing():
                end.transport.close()
        if not self._finished:
            self._finished = True
            self.stats.bytes_in = self.client.received
            self.stats.bytes_out = self.server.received
            if self._on_done is not None:
                self._on_done(self.stats)
