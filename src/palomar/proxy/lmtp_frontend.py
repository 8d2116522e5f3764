"""The proxy's LMTP listener: mail from MTAs fanned out to the backends of its recipients.

LMTP has no login, so it does not fit the login-session loop (session.py). Each RCPT is looked
up in the passdb (renames apply) and routed like a login; the recipients of one transaction
travel over one hop per backend, each spoken with an LMTP client, and the message is streamed to
all of them at once. The rules (reply order, which reply a recipient gets, referrals) are in
`cluster.lmtp_fanout`; this module does the I/O. See docs/design/lmtp.md.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from palomar.auth.passdb import AuthRequest
from palomar.boundary import is_store_error, log_failure
from palomar.cluster import lmtp_fanout as fan
from palomar.cluster.model import Site
from palomar.logsafe import safe
from palomar.net.drain import ShuttingDown
from palomar.net.lmtp_leg import LmtpLeg
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
from palomar.protocols.smtp_syntax import Reply
from palomar.protocols.subaddress import delivery_address, split_detail
from palomar.proxy.failures import WORDING
from palomar.proxy.frontend import ClientConnection, accept
from palomar.proxy.hop_client import HopFailed, HopTarget
from palomar.proxy.limits import smtp_bye
from palomar.proxy.state import ProxyState

log = logging.getLogger("palomar.lmtp")

EXTENSIONS = ("CHUNKING",)
"""Offered besides PIPELINING, ENHANCEDSTATUSCODES, 8BITMIME and SIZE. BDAT chunks are turned into
one DATA stream towards the backends, so CHUNKING needs nothing from them; SMTPUTF8 and DSN are
not offered (palomar does not assume the Dovecot backends have them)."""
DEFAULT_MAX_SIZE = 50 << 20
IDLE_TIMEOUT = 300.0
"""Seconds an MTA may stay silent between commands (Dovecot's SMTP server uses 5 minutes)."""
LEG_TIMEOUT = 125.0
"""Seconds a backend may take for any one reply (Dovecot's lmtp proxy_timeout)."""


def lmtp_handler(state: ProxyState, cfg, listener) -> Callable[[socket.socket], Awaitable[None]]:
    """The accept handler for one `service lmtp { inet_listener ... }`."""
    return partial(serve_lmtp, state, haproxy=listener.haproxy, ssl=listener.ssl,
                   max_size=cfg["cluster_lmtp_max_mail_size"] or None)


async def serve_lmtp(state: ProxyState, sock: socket.socket, *, haproxy: bool, ssl: bool,
                     max_size: int | None = DEFAULT_MAX_SIZE) -> None:
    conn = await accept(state, sock, service="lmtp", haproxy=haproxy, ssl=ssl, per_address=False,
                        bye=lambda farewell: smtp_bye(lmtp_hostname(state.proxy_host), farewell))
    if conn is None:
        return
    session = LmtpProxySession(state, conn, max_size=max_size)
    try:
        await session.run()
    except (ConnectionError, OSError) as exc:
        log.debug("session=%s client connection error: %s", conn.session_id, exc)
        conn.link.abort()
    except Exception as exc:  # the session's boundary: a 421 (the MTA retries what is open), log once
        log_failure(log, f"session={conn.session_id} proto=lmtp", exc)
        conn.link.write(WORDING["lmtp"].internal_bye(session.core.hostname))
        conn.link.close()
    finally:
        session.close_legs()
        conn.admission.release()


def lmtp_hostname(name: str) -> str:
    return "".join(ch for ch in name if ch.isalnum() or ch in ".-") or "palomar"


class LmtpProxySession:
    """One MTA connection: the LMTP server core towards the MTA, one leg per backend towards the cluster."""

    def __init__(self, state: ProxyState, conn: ClientConnection, *, max_size: int | None) -> None:
        self.state = state
        self.conn = conn
        self.core = LmtpServer(hostname=lmtp_hostname(state.proxy_host), capabilities=EXTENSIONS, max_size=max_size,
                               greeting=state.greeting)
        self.legs: dict[str, LmtpLeg] = {}
        self.legs_lhlo: str | None = None
        self.fanout: fan.Fanout | None = None
        self.sender = ""
        self.mail_params: dict[str, str | None] = {}
        self.data_legs: dict[str, LmtpLeg] = {}
        self.outcomes: dict[str, list[Reply] | fan.BackendFailed] = {}
        registry = state.metrics.registry
        self.rcpt_success = registry.counter(
            "lmtp_rcpt_finished_success", "LMTP recipients delivered", ("dest_host",))
        self.rcpt_failure = registry.counter(
            "lmtp_rcpt_finished_failure", "LMTP recipients that failed, not counting permanent (5.x.x) errors",
            ("dest_host",))

    # ---- the MTA side

    def flush(self) -> None:
        self.conn.link.write(self.core.data_to_send())

    async def run(self) -> None:
        link = self.conn.link
        link.write(self.core.greeting())
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    data = await self.state.drain.read(link, stoppable=not self.core.in_transaction)
            except ShuttingDown:
                link.write(WORDING["lmtp"].shutdown(self.core.hostname))
                link.close()
                return
            except TimeoutError:
                link.write(WORDING["lmtp"].timeout_bye(self.core.hostname))
                link.close()
                return
            if not data:
                link.close()
                return
            if not await self.handle(self.core.receive(data)):
                return

    async def handle(self, events: list[Event]) -> bool:
        """Act on the core's events in order; False once the connection is to be closed. Replies
        collect and go out in one write when the events are handled (the MAIL and RCPT replies of
        a pipelined envelope together); the 354 and the replies after a message go out at once."""
        queue = deque(events)
        while queue:
            event = queue.popleft()
            if isinstance(event, MailFrom):
                self.begin(event)
            elif isinstance(event, RcptRequest):
                for reply in await self.recipients([rcpt.address for rcpt in rcpt_batch(event, queue)]):
                    queue.extend(self.core.rcpt_reply(reply))
            elif isinstance(event, DataStart):
                self.flush()  # the 354: the peer streams while the next hop opens DATA
                await self.data_start()
            elif isinstance(event, DataChunk):
                await self.data_chunk(event.data, last=ends_message(queue))
            elif isinstance(event, DataEnd):
                queue.extend(self.core.data_replies(await self.data_end()))
                self.flush()  # the replies to a stored message are never held back
            elif isinstance(event, DataAborted):
                self.data_aborted()
            elif isinstance(event, TransactionReset):
                self.transaction_reset()
            elif isinstance(event, Close):
                self.flush()
                self.conn.link.close()
                return False
        self.flush()
        return True

    # ---- transaction

    def begin(self, event: MailFrom) -> None:
        if self.legs_lhlo != self.core.lhlo_name:  # legs speak with the MTA's LHLO name
            self.close_legs()
            self.legs_lhlo = self.core.lhlo_name
        self.fanout = fan.Fanout()
        self.sender, self.mail_params = event.address, dict(event.params)
        self.data_legs, self.outcomes = {}, {}

    async def recipients(self, addresses: list[str]) -> list[str]:
        """The replies to pipelined RCPTs, in order. Each recipient is looked up and routed in turn;
        those for this site's backends are written to their legs together (one write per leg) and
        the replies read after, in the order sent. A referral sends the recipient on to the next
        backend, behind what that leg already carries. Recipients are accepted into the fan-out in
        RCPT order, so DATA's replies line up with the core's recipient list."""
        replies = [""] * len(addresses)
        sent: deque[_Routed] = deque()
        for index, address in enumerate(addresses):
            try:
                step = await self.route_recipient(index, address)
                if isinstance(step, _Routed):
                    refused = await self.send(step)
                    if refused is None:
                        sent.append(step)
                    else:
                        replies[index] = refused
                elif isinstance(step, _OtherSite):  # its own leg and referrals: after the others, alone
                    await self.answer(sent, replies)
                    replies[index] = await self.deliver_other_site(address, step.user, step.site, step.rcpt_address)
                else:
                    replies[index] = step
            except Exception as exc:
                replies[index] = self.recipient_failed(address, exc)
        await self.answer(sent, replies)
        return replies

    def recipient_failed(self, address: str, exc: Exception) -> str:
        """One recipient's exception boundary: a GeoDB or LocalDB that fails while routing it
        (`451 4.4.3`) or a bug (`451 4.3.0`) fails this recipient only, logged once; the MTA's
        session and the transaction's other recipients go on."""
        log_failure(log, f"session={self.conn.session_id} rcpt={safe(address)}", exc)
        return self.denied(address, fan.rcpt_failed(address, store=is_store_error(exc)), "")

    async def route_recipient(self, index: int, address: str) -> str | _Routed | _OtherSite:
        """Look up and route one recipient: its backend (or site), or the reply that refuses it."""
        rcpt = split_detail(address, self.state.recipient_delimiter)
        request = AuthRequest(username=rcpt.username, service="lmtp", remote_ip=self.conn.client[0],
                              local_ip=self.conn.local[0], secured=self.conn.tls)
        try:
            result = await self.state.passdb.lookup(rcpt.username, request)
        except Exception as exc:  # a passdb that breaks must not end the MTA's session
            log.warning("session=%s rcpt=%s passdb lookup failed: %s", self.conn.session_id, safe(address), exc)
            return self.denied(address, fan.lookup_failed(address), "")
        if result.status in ("unknown_user", "failed"):
            return self.denied(address, fan.unknown_user(address), "")
        if result.status == "nologin":
            return self.denied(address, fan.login_disabled(address), "")
        if result.status != "ok":
            return self.denied(address, fan.lookup_failed(address), "")
        user, host_override = result.user, result.fields.get("host")
        rcpt_address = delivery_address(address, rcpt, user)  # the backend gets the detail too
        route = await self.state.router.route(user, host_override=host_override)  # raises: recipient_failed
        if route.site is not None:
            return _OtherSite(user, route.site, rcpt_address)
        if route.host is None:
            log.warning("session=%s rcpt=%s not routed: %s", self.conn.session_id, safe(address), route.reason)
            return self.denied(address, fan.proxy_failed(address, "no backend available"), "")
        return _Routed(index, address, user, rcpt_address, host_override, route.host)

    async def send(self, rcpt: _Routed) -> str | None:
        """Put the recipient's RCPT on the leg to `rcpt.host` (written by `answer`); the refusal if
        no leg can be had there, after one re-route if the backend turned out to be offline."""
        while True:
            rcpt.visited.append(rcpt.host)
            leg = await self.leg_for(rcpt.host, rcpt.user)
            if isinstance(leg, HopFailed):
                if not rcpt.rerouted and await self.backend_went_offline(leg):
                    rcpt.rerouted = True
                    again = await self._route_again(rcpt.user, rcpt.host_override)
                    if again is not None and again not in rcpt.visited:
                        rcpt.host = again
                        continue
                return self.denied(rcpt.address, fan.proxy_failed(rcpt.address, _hop_detail(leg)), rcpt.host)
            rcpt.leg = leg
            leg.send_rcpt(rcpt.rcpt_address)
            return None

    async def answer(self, sent: deque[_Routed], replies: list[str]) -> None:
        """Write the RCPTs `send` queued, read their replies in the order sent, follow referrals;
        accept the recipients backends took, in RCPT order."""
        accepted: list[_Routed] = []
        for leg in {id(r.leg): r.leg for r in sent}.values():
            assert leg is not None
            leg.flush()
        while sent:
            rcpt = sent.popleft()
            try:
                reply = await self.rcpt_answer(rcpt)
                if reply is None:  # referred: on to the next backend, behind that leg's RCPTs
                    reply = await self.send(rcpt)
                    if reply is None:
                        assert rcpt.leg is not None
                        rcpt.leg.flush()
                        sent.append(rcpt)
                        continue
            except Exception as exc:
                reply = self.recipient_failed(rcpt.address, exc)
            replies[rcpt.index] = reply
            if rcpt.accepted:
                accepted.append(rcpt)
        assert self.fanout is not None
        for rcpt in sorted(accepted, key=lambda r: r.index):
            assert rcpt.leg is not None
            self.fanout.accept(rcpt.address, rcpt.user, rcpt.leg.name)

    async def rcpt_answer(self, rcpt: _Routed) -> str | None:
        """The backend's reply to the recipient's RCPT made the MTA's reply; None if it referred the
        recipient on (`rcpt.host` is the next backend)."""
        leg = rcpt.leg
        assert leg is not None
        reply = await leg.rcpt_reply()
        if reply is None:
            self.drop_leg(leg)
            return self.denied(rcpt.address, fan.proxy_failed(rcpt.address, leg.failure or "connection lost"),
                               rcpt.host)
        target = fan.parse_referral(reply)
        if target is None:
            client_reply = fan.rcpt_reply(rcpt.address, reply)
            if reply.positive:  # only the backend's Dovecot accepts a recipient
                if self.state.health is not None:
                    self.state.health.session_succeeded(leg.name)
                rcpt.accepted = True
                return client_reply
            return self.denied(rcpt.address, client_reply, leg.name)
        log.info("session=%s rcpt=%s referred from %s to %s", self.conn.session_id, safe(rcpt.address), leg.name,
                 safe(target))
        self.state.count_redirect(leg.name)
        step = fan.follow_referral(rcpt.visited, target)
        if isinstance(step, fan.GiveUp):
            return self.denied(rcpt.address, fan.proxy_failed(rcpt.address, step.reason), leg.name)
        rcpt.host = step.host
        return None

    async def deliver_other_site(self, address: str, user: str, site: Site, rcpt_address: str) -> str:
        """Give the recipient to its site's load balancer, on a leg of its own (proxy/site_hop.py).

        A backend there may refer the recipient (a move in that site, or its proxy's stale cache).
        This proxy cannot reach that site's backends, so it asks the same load balancer again,
        naming the referred backend in the hop: as for a backend of its own, at most
        MAX_REFERRAL_HOPS referrals per recipient and never a backend twice.
        """
        lb = site.load_balancer
        if not lb:
            return self.denied(address, fan.proxy_failed(address, f"site {site.name} has no load balancer"), "")
        visited = [lb]
        referred = ""
        while True:
            leg = await self.leg_for(lb, user, site, referred)
            if isinstance(leg, HopFailed):
                return self.denied(address, fan.proxy_failed(address, _hop_detail(leg)), lb)
            assert self.fanout is not None
            reply = await leg.rcpt(rcpt_address)
            if reply is None:
                self.drop_leg(leg)
                return self.denied(address, fan.proxy_failed(address, leg.failure or "connection lost"), leg.name)
            target = fan.parse_referral(reply)
            if target is None:
                client_reply = fan.rcpt_reply(address, reply)
                if reply.positive:
                    self.fanout.accept(address, user, leg.name)
                    return client_reply
                return self.denied(address, client_reply, leg.name)
            log.info("session=%s rcpt=%s referred within site %s to %s", self.conn.session_id, safe(address),
                     site.name, safe(target))
            step = fan.follow_referral(visited, target)
            if isinstance(step, fan.GiveUp):
                return self.denied(address, fan.proxy_failed(address, step.reason), leg.name)
            visited.append(step.host)
            referred = step.host

    async def _route_again(self, user: str, host_override: str | None) -> str | None:
        try:
            return (await self.state.router.route(user, host_override=host_override)).host
        except Exception as exc:
            log.warning("session=%s user=%s routing again failed: %s", self.conn.session_id, safe(user), exc)
            return None

    async def backend_went_offline(self, failed: HopFailed) -> bool:
        health = self.state.health
        if health is None:
            return False
        try:
            return bool(await health.session_failed(failed.host, failed.error_code))
        except Exception as exc:  # health bookkeeping must not fail the delivery
            log.warning("backend health update for %s failed: %s", failed.host, exc)
            return False

    async def leg_for(self, host: str, user: str, site: Site | None = None, referred: str = "") -> LmtpLeg | HopFailed:
        """This session's leg to `host`, opened (hop, LHLO) if needed, inside the current transaction.

        With `site`, `host` is that site's load balancer and the leg carries this one user's
        recipients (the remote proxy routed the leg by its user), named `"<lb> <user>"`; with
        `referred` too, the remote proxy hands it to that backend, named `"<lb> <user> <backend>"`.
        """
        name = _leg_name(host, site, user, referred)
        leg = self.legs.get(name)
        if leg is not None and not leg.usable:
            self.drop_leg(leg)
            leg = None
        if leg is None:
            opened = await self.open_leg(host, user, site, referred)
            if isinstance(opened, HopFailed):
                return opened
            leg = self.legs[name] = opened
        if not leg.in_transaction:
            leg.begin(self.sender, self.mail_params)
        return leg

    async def open_leg(self, host: str, user: str, site: Site | None = None, referred: str = "") -> LmtpLeg | HopFailed:
        conn = self.conn
        via = (str(self.state.site_id),) if site is not None and self.state.site_id is not None else ()
        target = HopTarget(user=user, protocol="lmtp", session_id=conn.session_id, client=conn.client,
                           local=conn.local, client_tls=conn.tls, via_sites=via, referred=referred)
        outcome = await self.state.hops.connect(host, target, on_redirect=self.state.count_redirect)
        if isinstance(outcome, HopFailed):
            self.state.count_failure(outcome.host, outcome.error_code, login=False)
            log.warning("session=%s proxy dest %s to %s: %s", conn.session_id, outcome.error_code, outcome.host,
                        safe(outcome.text))
            return outcome
        client = LmtpClient(lhlo_name=self.core.lhlo_name or "unknown")
        name = _leg_name(outcome.host, site, user, referred)
        leg = LmtpLeg(name, outcome.link, client,
                      timeout=LEG_TIMEOUT)
        leg.feed(outcome.leftover)
        if not await leg.handshake():
            failed = HopFailed(outcome.host, "proxy_dest_protocol_failure", f"LMTP handshake: {leg.failure}")
            self.state.count_failure(failed.host, failed.error_code, login=False)
            log.warning("session=%s LMTP to %s failed: %s", conn.session_id, failed.host, safe(failed.text))
            return failed
        # No health success yet: the backend's LMTP gateway answers the hop and LHLO itself, also
        # while its Dovecot is stalled. A recipient Dovecot accepted is the success (deliver_to).
        self.state.count_success(outcome.host, login=False)
        return leg

    def drop_leg(self, leg: LmtpLeg) -> None:
        leg.close()
        if self.legs.get(leg.name) is leg:
            del self.legs[leg.name]

    def close_legs(self) -> None:
        for leg in list(self.legs.values()):
            self.drop_leg(leg)

    # ---- the message

    async def data_start(self) -> None:
        """DATA to every backend with accepted recipients, at once; those refusing keep their reply."""
        assert self.fanout is not None
        legs = [self.legs.get(host) for host in self.fanout.hosts()]
        pending: dict[str, LmtpLeg] = {}
        for host, leg in zip(self.fanout.hosts(), legs, strict=True):
            if leg is None or not leg.usable:
                self.outcomes[host] = fan.BackendFailed((leg.failure if leg else None) or "connection lost")
            else:
                pending[host] = leg
        replies = await asyncio.gather(*(leg.open_data() for leg in pending.values()))
        for (host, leg), reply in zip(pending.items(), replies, strict=True):
            if reply is None:
                self.outcomes[host] = fan.BackendFailed(leg.failure or "connection lost")
            elif reply.code == 354:
                self.data_legs[host] = leg
            else:
                self.outcomes[host] = [reply] * len(self.fanout.recipients_of(host))

    async def data_chunk(self, data: bytes, *, last: bool = False) -> None:
        """The same bytes to every backend; the next read from the MTA waits until all took them.
        The `last` chunk goes out with the final dot (`data_end` writes it and waits for replies)."""
        for leg in self.data_legs.values():
            leg.write_chunk(data, last=last)
        if not last:
            await asyncio.gather(*(leg.drain() for leg in self.data_legs.values()))

    async def data_end(self) -> list[str]:
        assert self.fanout is not None
        hosts = list(self.data_legs)
        results = await asyncio.gather(*(leg.finish_data() for leg in self.data_legs.values()))
        for host, replies in zip(hosts, results, strict=True):
            leg = self.data_legs[host]
            self.outcomes[host] = (replies if len(replies) == len(self.fanout.recipients_of(host))
                                   else fan.BackendFailed(leg.failure or "connection lost"))
        replies = self.fanout.replies(self.outcomes)
        for rcpt, reply in zip(self.fanout.accepted, replies, strict=True):
            self.account(rcpt.address, reply, rcpt.host)
        self.end_transaction()
        return replies

    def data_aborted(self) -> None:
        """The message broke a limit while streaming: abort what the backends got, so nothing is delivered."""
        for leg in self.data_legs.values():
            self.drop_leg(leg)
        if self.fanout is not None:
            for rcpt in self.fanout.accepted:
                self.account(rcpt.address, f"552 5.3.4 <{rcpt.address}> Message too big", rcpt.host)
        self.end_transaction()

    def transaction_reset(self) -> None:
        if self.data_legs:  # the MTA left in the middle of the message
            for leg in self.data_legs.values():
                self.drop_leg(leg)
        if self.fanout is not None:
            for rcpt in self.fanout.accepted:
                self.account_event(rcpt.address, fan.ABORTED, rcpt.host)
        self.end_transaction()

    def end_transaction(self) -> None:
        for leg in list(self.legs.values()):
            if not leg.usable:
                self.drop_leg(leg)
            else:
                leg.reset()
        self.fanout, self.data_legs, self.outcomes = None, {}, {}

    # ---- accounting

    def denied(self, address: str, reply: str, host: str) -> str:
        self.account(address, reply, host)
        return reply

    def account(self, address: str, reply: str, host: str) -> None:
        self.account_event(address, fan.rcpt_finished(reply), host)

    def account_event(self, address: str, event: fan.RcptFinished, host: str) -> None:
        """The seed's lmtp_rcpt_finished_* metrics, the proxy_dest_stats counters, one log line."""
        if event.success:
            self.rcpt_success.inc(dest_host=host)
        elif event.failure:
            self.rcpt_failure.inc(dest_host=host)
        if host and (event.success or event.failure):
            self.state.dest.add(host, "lmtp_rcpt_success" if event.success else "lmtp_rcpt_failure")
        log.info("event=smtp_server_transaction_rcpt_finished session=%s rcpt=%s dest_host=%s status_code=%d "
                 "enhanced_code=%s%s", self.conn.session_id, safe(address), host or "-", event.status_code,
                 event.enhanced_code, f" error={safe(repr(event.error))}" if event.error else "")


@dataclass
class _Routed:
    """A recipient on its way to a backend of this site: where it is now, where it has been."""

    index: int
    address: str
    user: str
    rcpt_address: str
    host_override: str | None
    host: str
    visited: list[str] = field(default_factory=list)
    rerouted: bool = False
    leg: LmtpLeg | None = None
    accepted: bool = False


@dataclass(frozen=True)
class _OtherSite:
    """A recipient routed to another site's load balancer."""

    user: str
    site: Site
    rcpt_address: str


def _leg_name(host: str, site: Site | None, user: str, referred: str) -> str:
    """A backend's leg is named by its host; a leg to another site's load balancer carries one user
    (and maybe the referred backend there): `<lb> <user>` or `<lb> <user> <backend>`."""
    return host if site is None else " ".join(filter(None, (host, user, referred)))


def _hop_detail(failed: HopFailed) -> str:
    return {"proxy_dest_connect_failed": "connect"}.get(failed.error_code, "backend failure")
