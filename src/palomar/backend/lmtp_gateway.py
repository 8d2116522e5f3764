"""The backend's end of an LMTP hop: an LMTP gateway between a proxy and the local Dovecot.

A proxy's LMTP hop carries every recipient of one transaction that it routed to this backend,
not one logged-in user, so the backend cannot check ownership once and relay bytes as it does
for logins. It speaks LMTP itself: an `LmtpServer` towards the proxy, an `LmtpClient` (through
XCLIENT, so Dovecot logs the MTA's address and LHLO name) towards Dovecot, and every RCPT goes
through the ownership check. A recipient this backend does not own is answered with a referral
reply the proxy follows (`cluster.lmtp_fanout.referral_reply`); an owned one is forwarded to
Dovecot and Dovecot's reply relayed. An RCPT is an access for moves (`MoveExecutor.on_access`),
and an owned recipient stays held by the transaction until it ends, so a move of that user waits
for the message (or aborts it before Dovecot has it, with a 4xx) instead of racing it. See
docs/design/lmtp.md and docs/design/moves.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from palomar.boundary import is_store_error, log_failure
from palomar.cluster import lmtp_fanout as fan
from palomar.cluster.ownership import Own, Refer
from palomar.dovecot_login import BACKEND_HELO, xclient_fields
from palomar.logsafe import safe
from palomar.net.drain import ShuttingDown
from palomar.net.link import Link, open_link
from palomar.net.lmtp_leg import LmtpLeg
from palomar.protocols import hop
from palomar.protocols.lmtp import (
    Close,
    DataAborted,
    DataChunk,
    DataEnd,
    DataStart,
    Event,
    LmtpClient,
    LmtpServer,
    MailFrom,
    RcptRequest,
    TransactionReset,
    ends_message,
    rcpt_batch,
)
from palomar.protocols.shutdown import shutdown_line
from palomar.protocols.smtp_syntax import Reply
from palomar.protocols.subaddress import split_detail

log = logging.getLogger("palomar.backend")

HOP_TEXT = b"LMTP gateway"
"""The text of the hop's OK line; the proxy reads the capabilities from the LHLO reply instead."""
IDLE_TIMEOUT = 300.0
DOVECOT_TIMEOUT = 120.0
"""Seconds Dovecot may take for any one reply (a delivery into a large mailbox can be slow)."""


async def serve_lmtp(state: Any, request: hop.HopRequest, link: Link) -> None:
    """Serve one verified LMTP hop until the proxy quits or goes away."""
    link.write(hop.encode_reply(hop.LoggedIn(HOP_TEXT)))
    gateway = LmtpGateway(state, request, link)
    try:
        await gateway.run()
    except (ConnectionError, OSError) as exc:
        log.debug("session=%s lmtp hop error: %s", request.session_id, exc)
        link.abort()
    except Exception as exc:  # the hop's boundary: a 421 (the proxy fails what is open), log once
        log_failure(log, f"session={request.session_id} lmtp hop", exc)
        link.write(f"{fan.closing_internal(gateway.core.hostname)}\r\n".encode())
        link.close()
    finally:
        gateway.close()


class LmtpGateway:
    """One LMTP hop: the proxy's transactions, checked per recipient and delivered through Dovecot."""

    def __init__(self, state: Any, request: hop.HopRequest, link: Link) -> None:
        self.state = state
        self.request = request
        self.link = link
        name = "".join(ch for ch in state.name if ch.isalnum() or ch in ".-:[]") or "palomar-backend"
        self.core = LmtpServer(hostname=name, greeting="LMTP palomar backend ready.")
        self.dovecot: LmtpLeg | None = None
        self.sender = ""
        self.mail_params: dict[str, str | None] = {}
        self.data_open = False
        self.data_refusal: Reply | None = None
        self.data_failure = ""
        self.accepted = 0
        """Recipients Dovecot accepted in the current transaction."""
        self.held: set[str] = set()
        """Recipients this transaction holds against moves (MoveExecutor.begin_delivery)."""
        self.broken: str | None = None
        """Why the current transaction can no longer be delivered (its Dovecot session was lost or
        aborted after it accepted recipients): every later recipient and the message get a 4xx."""
        self.storing = False
        """The final dot went to Dovecot: the message is being stored, it must not be aborted."""

    def flush(self) -> None:
        self.link.write(self.core.data_to_send())

    async def run(self) -> None:
        self.link.write(self.core.greeting())
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    data = await self.state.drain.read(self.link, stoppable=not self.core.in_transaction)
            except ShuttingDown:
                self.link.write(shutdown_line("lmtp", self.core.hostname))
                self.link.close()
                return
            except TimeoutError:
                self.link.write(f"421 4.4.2 {self.core.hostname} Disconnected for inactivity\r\n".encode())
                self.link.close()
                return
            if not data:  # the proxy is gone: close() aborts a message still open, so it is not delivered
                self.link.close()
                return
            if not await self.handle(self.core.receive(data)):
                return

    async def handle(self, events: list[Event]) -> bool:
        """As the proxy's session does (LmtpProxySession.handle): replies go out in one write when
        the events are handled, the 354 and the replies after a message at once."""
        queue = deque(events)
        while queue:
            event = queue.popleft()
            if isinstance(event, MailFrom):
                self.end_transaction()
                self.sender, self.mail_params = event.address, dict(event.params)
                if self.dovecot is not None:
                    self.dovecot.reset()
            elif isinstance(event, RcptRequest):
                for reply in await self.recipients([rcpt.address for rcpt in rcpt_batch(event, queue)]):
                    queue.extend(self.core.rcpt_reply(reply))
            elif isinstance(event, DataStart):
                self.flush()  # the 354: the peer streams while the next hop opens DATA
                await self.data_start()
            elif isinstance(event, DataChunk):
                if self.data_open and self.dovecot is not None:
                    last = ends_message(queue)  # then the chunk goes out with the final dot
                    self.dovecot.write_chunk(event.data, last=last)
                    if not last:
                        await self.dovecot.drain()
            elif isinstance(event, DataEnd):
                queue.extend(self.core.data_replies(await self.data_end(event.recipients)))
                self.flush()  # the replies to a stored message are never held back
            elif isinstance(event, DataAborted):
                self.drop_dovecot()
                self.end_transaction()
            elif isinstance(event, TransactionReset):
                if self.data_open:
                    self.drop_dovecot()
                elif self.dovecot is not None:
                    self.dovecot.reset()
                self.end_transaction()
            elif isinstance(event, Close):
                self.flush()
                self.link.close()
                return False
        self.flush()
        return True

    # ---- recipients

    async def recipients(self, addresses: list[str]) -> list[str]:
        """The replies to pipelined RCPTs, in order. Ownership of all their users is read at once
        (fresh, one engine call for the batch: `BackendState.ownership_of`); each owned recipient
        is held against moves, and the RCPTs go to Dovecot in one write, its replies read after.
        A hold this batch took is released for a user none of whose RCPTs Dovecot accepted."""
        state = self.state
        users = [split_detail(address, state.recipient_delimiter).username for address in addresses]
        checked: dict[str, Any] = {}
        if len(addresses) > 1:
            try:
                checked = await state.ownership_of(users)
            except Exception as exc:  # each recipient is checked alone: its own boundary, the stale rule
                log.debug("session=%s batched ownership check failed: %s", self.request.session_id, exc)
        replies = [""] * len(addresses)
        sent: list[tuple[int, LmtpLeg]] = []
        newly_held: set[str] = set()
        for index, (address, user) in enumerate(zip(addresses, users, strict=True)):
            try:
                reply = await self.recipient(address, user, checked.get(user), newly_held)
            except Exception as exc:
                log_failure(log, f"session={self.request.session_id} rcpt={safe(address)}", exc)
                reply = fan.rcpt_failed(address, store=is_store_error(exc))
            if isinstance(reply, LmtpLeg):
                sent.append((index, reply))
            else:
                replies[index] = reply
        await self.dovecot_replies(addresses, sent, replies)
        if state.moves is not None:
            taken = {users[index] for index, _ in sent if replies[index].startswith("2")}
            for user in newly_held - taken:
                self.held.discard(user)
                state.moves.end_delivery(self, user)
        return replies

    async def recipient(self, address: str, user: str, checked: Any, newly_held: set[str]) -> str | LmtpLeg:
        """One recipient up to Dovecot: the Dovecot session its RCPT is queued on, else the reply. Ownership,
        moves and holds go by the user (the address without its detail); Dovecot gets the whole
        address, so its Sieve and lmtp_save_to_detail_mailbox still see the detail. `checked`: the
        batch's ownership of `user`, None to read it here. Raises: the caller's boundary answers 451."""
        session, state = self.request.session_id, self.state
        decision, group, record = checked if checked is not None else await state.ownership_and_user(user)
        if state.moves is not None:  # a pending group or user move runs first (backend/moves.py)
            decision, group = await state.moves.on_access(user, decision, group, record=record)
        if isinstance(decision, Refer):
            state.referrals += 1
            log.info("session=%s rcpt=%s referred to %s: %s", session, safe(address), decision.host, decision.reason)
            return fan.referral_reply(decision.host)
        if not isinstance(decision, Own):
            log.warning("session=%s rcpt=%s not served here: %s", session, safe(address), decision.reason)
            return f"451 4.4.0 <{address}> Mailbox not served by this backend"
        if self.broken is not None:
            return fan.proxy_failed(address, f"Dovecot: {self.broken}")
        if state.moves is not None:
            moved_to = state.moves.begin_delivery(user, group, self)
            if moved_to is not None:  # migrated while this RCPT was checked
                state.referrals += 1
                log.info("session=%s rcpt=%s referred to %s: user moved", session, safe(address), moved_to)
                return fan.referral_reply(moved_to)
            if user not in self.held:
                newly_held.add(user)
                self.held.add(user)
        elif group is not None:
            state.localdb.user_put(group.name, user)
        leg = await self.dovecot_leg()
        if leg is None:
            return fan.proxy_failed(address, f"Dovecot: {self.broken or self.data_failure}")
        leg.send_rcpt(address)
        return leg

    async def dovecot_replies(self, addresses: list[str], sent: list[tuple[int, LmtpLeg]], replies: list[str]
                              ) -> None:
        """Write the queued RCPTs to Dovecot and fill in its replies, in order. A RCPT queued on a
        session that was lost (and replaced) meanwhile never went out: it fails like the session."""
        if self.dovecot is not None:
            self.dovecot.flush()
        for index, leg in sent:
            address = addresses[index]
            reply = await leg.rcpt_reply() if leg is self.dovecot else None
            if reply is None:
                detail = self.broken or leg.failure or "connection lost"
                if leg is self.dovecot:
                    self.drop_dovecot()
                replies[index] = fan.proxy_failed(address, f"Dovecot: {detail}")
                continue
            if reply.positive:
                self.accepted += 1
            log.info("session=%s rcpt=%s client=%s dovecot: %s", self.request.session_id, safe(address),
                     self.request.client[0], safe(reply.first_line()))
            replies[index] = fan.rcpt_reply(address, reply)

    async def dovecot_leg(self) -> LmtpLeg | None:
        """The LMTP session to Dovecot inside the current transaction; None (detail in data_failure) if down."""
        if self.dovecot is not None and not self.dovecot.usable:
            self.drop_dovecot()
        if self.broken is not None:
            return None
        if self.dovecot is None:
            endpoint = self.state.dovecot
            try:
                link = await open_link(endpoint.host, endpoint.ports["lmtp"], timeout=endpoint.timeout)
            except (OSError, TimeoutError) as exc:
                self.data_failure = f"not reachable: {exc}"
                return None
            # The MTA's LHLO name goes in XCLIENT HELO and in the LHLO after it (Dovecot's Received
            # header shows the latter).
            helo = self.core.lhlo_name or BACKEND_HELO
            xclient = {**xclient_fields(self.request), "HELO": helo}
            leg = LmtpLeg("dovecot", link, LmtpClient(lhlo_name=helo, xclient=xclient),
                          timeout=DOVECOT_TIMEOUT)
            if not await leg.handshake():
                self.data_failure = leg.failure or "handshake failed"
                leg.close()
                return None
            self.dovecot = leg
        if not self.dovecot.in_transaction:
            self.dovecot.begin(self.sender, self.mail_params)
        return self.dovecot

    def drop_dovecot(self, reason: str | None = None) -> None:
        """Close the Dovecot session; a message still open there is aborted, never completed. Within
        a transaction that has accepted recipients, the transaction is lost with it (`broken`): a new
        session would not know them, and their replies after DATA would be miscounted."""
        if self.dovecot is not None:
            if self.accepted and self.broken is None:
                self.broken = reason or self.dovecot.failure or "connection lost"
            self.dovecot.close()
            self.dovecot = None
        self.data_open = False

    def end_transaction(self) -> None:
        """The transaction is over (delivered, reset, aborted): a fresh start for the next one."""
        self.accepted, self.broken, self.storing = 0, None, False
        if self.held:
            self.held.clear()
            if self.state.moves is not None:
                self.state.moves.end_delivery(self)

    def abort_delivery(self, reason: str) -> bool:
        """A move of a held recipient cannot wait any longer (MoveExecutor.wait_for_deliveries)."""
        if self.storing:
            return False
        log.info("session=%s lmtp transaction aborted: %s", self.request.session_id, reason)
        self.drop_dovecot(reason)
        self.broken = self.broken or reason
        self.held.clear()
        if self.state.moves is not None:
            self.state.moves.end_delivery(self)
        return True

    # ---- the message

    async def data_start(self) -> None:
        self.data_open, self.data_refusal, self.data_failure = False, None, ""
        if self.broken is not None:
            self.data_failure = self.broken
            return
        leg = self.dovecot
        if leg is None or not leg.usable or not leg.client.accepted_recipients:
            self.data_failure = (leg.failure if leg is not None else None) or "connection lost"
            return
        reply = await leg.open_data()
        if reply is None:
            self.data_failure = self.broken or leg.failure or "connection lost"
        elif reply.code == 354:
            self.data_open = True
        else:
            self.data_refusal = reply

    async def data_end(self, recipients: tuple[str, ...]) -> list[str]:
        """Dovecot's reply for each recipient, in order; a 451 for those it never answered."""
        replies: list[Reply] = []
        if self.broken is not None:
            self.data_failure = self.broken
        elif self.data_open and self.dovecot is not None:
            leg, self.storing = self.dovecot, True
            replies = await leg.finish_data()
            self.data_failure = leg.failure or "connection lost"
        elif self.data_refusal is not None:
            replies = [self.data_refusal] * len(recipients)
        self.data_open = False
        if self.dovecot is not None and not self.dovecot.usable:
            self.drop_dovecot()
        elif self.dovecot is not None:
            self.dovecot.reset()
        self.end_transaction()
        return [fan.delivery_reply(rcpt, replies[i]) if i < len(replies)
                else fan.proxy_failed(rcpt, f"Dovecot: {self.data_failure}") for i, rcpt in enumerate(recipients)]

    def close(self) -> None:
        self.drop_dovecot()
        self.end_transaction()
