"""One LMTP session towards a server, driven over a Link: the proxy's hop to a backend gateway,
and the gateway's connection to its Dovecot. The sans-IO `LmtpClient` does the protocol; this
class does the waiting, the timeouts and the back-pressure, and turns every way a server can
fail (disconnect, timeout, nonsense) into `failure`, so callers answer with a 4xx and go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from palomar.net.link import Link
from palomar.protocols.lmtp import ClientEvent, CommandReply, DeliveryReply, LmtpClient, LmtpFailure, Ready
from palomar.protocols.smtp_syntax import Reply

log = logging.getLogger("palomar.lmtp")

_PARAM_EXTENSION = {"SIZE": "SIZE", "BODY": "8BITMIME", "SMTPUTF8": "SMTPUTF8", "RET": "DSN", "ENVID": "DSN"}
"""The LHLO keyword a MAIL FROM parameter needs."""


class LmtpLeg:
    """An `LmtpClient` over `link`. `failure` is set (and the link aborted) once the session is unusable."""

    def __init__(self, name: str, link: Link, client: LmtpClient, *, timeout: float) -> None:
        self.name = name
        self.link = link
        self.client = client
        self.timeout = timeout
        self.failure: str | None = None
        self.in_transaction = False
        self.mail_reply: Reply | None = None
        self._mail_pending = False
        self._events: deque[ClientEvent] = deque()

    def __repr__(self) -> str:
        return f"<LmtpLeg {self.name} failure={self.failure!r}>"

    @property
    def usable(self) -> bool:
        """Not failed, and the server has not closed the connection meanwhile (e.g. an idle timeout)."""
        return self.failure is None and not self.link.closed

    def feed(self, data: bytes) -> None:
        """Bytes that arrived before this leg existed (e.g. after the hop's reply line)."""
        if data:
            self._events.extend(self.client.receive(data))

    def flush(self) -> None:
        self.link.write(self.client.data_to_send())

    def fail(self, detail: str) -> None:
        if self.failure is None:
            self.failure = detail
            log.debug("lmtp leg %s failed: %s", self.name, detail)
        self.in_transaction = False
        self.link.abort()

    async def _next(self) -> ClientEvent | None:
        """The server's next reply as an event; None once the leg has failed."""
        while not self._events:
            if self.failure is not None:
                return None
            try:
                async with asyncio.timeout(self.timeout):
                    data = await self.link.read()
            except TimeoutError:
                self.fail("timed out")
                return None
            events = self.client.receive(data) if data else self.client.connection_lost()
            self.flush()  # the handshake answers the server by itself (LHLO, XCLIENT)
            if not data and not events:
                self.fail("connection lost")
                return None
            self._events.extend(events)
        event = self._events.popleft()
        if isinstance(event, LmtpFailure):
            self.fail(_failure_detail(event))
            return None
        return event

    async def _reply(self, command: str) -> Reply | None:
        """Wait for the reply to `command`, taking in the replies to earlier commands on the way."""
        while True:
            event = await self._next()
            if event is None:
                return None
            if isinstance(event, CommandReply):
                if event.command == "MAIL":
                    self._mail_pending = False
                    self.mail_reply = event.reply
                if event.command == command:
                    return event.reply

    async def handshake(self) -> bool:
        """Greeting, LHLO, XCLIENT: True when transactions may start."""
        self.flush()
        while not self.client.ready:
            event = await self._next()
            if event is None:
                return False
            if isinstance(event, Ready):
                return True
        return True

    def begin(self, sender: str, params: dict[str, str | None]) -> None:
        """MAIL FROM, pipelined: it is written with the first RCPT (one write, one TLS record, one
        wake-up of the server) and its reply is read with the RCPT's. Parameters of extensions the
        server did not advertise are left out (e.g. SIZE towards a Dovecot that offers no SIZE)."""
        if self.in_transaction:
            self.reset()
        offered = {cap.split(" ", 1)[0].upper() for cap in self.client.capabilities}
        params = {key: value for key, value in params.items() if _PARAM_EXTENSION.get(key.upper()) in offered}
        self.client.mail_from(sender, params)
        self.in_transaction, self._mail_pending, self.mail_reply = True, True, None

    async def rcpt(self, address: str) -> Reply | None:
        """The server's reply to RCPT, or the refusal of MAIL FROM if that failed; None if the leg failed."""
        self.send_rcpt(address)
        self.flush()
        return await self.rcpt_reply()

    def send_rcpt(self, address: str) -> None:
        """RCPT, pipelined: it goes out with the next `flush`; `rcpt_reply` reads the replies in order."""
        self.client.rcpt(address)

    async def rcpt_reply(self) -> Reply | None:
        """The reply to the oldest RCPT not read yet (as `rcpt`)."""
        reply = await self._reply("RCPT")
        if reply is None:
            return None
        if self.mail_reply is not None and not self.mail_reply.positive:
            return self.mail_reply
        return reply

    async def open_data(self) -> Reply | None:
        """Send DATA: its reply (354 when the message may follow), None if the leg failed."""
        self.client.data_start()
        self.flush()
        return await self._reply("DATA")

    def write_chunk(self, data: bytes, *, last: bool = False) -> None:
        """Message bytes; with `last` (the end of the message follows at once) they wait for
        `finish_data` and go out with the final dot in one write."""
        if self.failure is None and self.client.data_open:
            self.client.data_chunk(data)
            if not last:
                self.flush()

    async def drain(self) -> None:
        """Back-pressure: wait until the server took most of what was written."""
        if self.failure is not None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self.link.drain()
        except TimeoutError:
            self.fail("timed out")

    async def finish_data(self) -> list[Reply]:
        """End the message; the per-recipient replies, fewer than the accepted recipients if the leg failed."""
        expected = len(self.client.accepted_recipients)
        self.client.data_end()
        self.flush()
        self.in_transaction = False
        replies: list[Reply] = []
        while len(replies) < expected:
            event = await self._next()
            if event is None:
                break
            if isinstance(event, DeliveryReply):
                replies.append(event.reply)
        return replies

    def reset(self) -> None:
        """RSET the open transaction (its reply is skipped later); nothing to do when none is open."""
        if self.failure is None and self.in_transaction and not self.client.data_open:
            self.client.rset()
            self.flush()
        self.in_transaction = False

    def close(self) -> None:
        """QUIT and close without waiting; a message still open is aborted, never completed."""
        if self.failure is None and self.client.ready and not self.client.data_open:
            self.client.quit()
            self.flush()
            self.link.close()
        else:
            self.link.abort()
        self.failure = self.failure or "closed"


def _failure_detail(event: LmtpFailure) -> str:
    if event.reply is not None:
        return f"bad reply: {event.reply.first_line()}"
    return event.text
