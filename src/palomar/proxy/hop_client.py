"""The proxy's side of the hop: connect to a backend, present the session, follow referrals."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from palomar.cluster.routing import MAX_REFERRAL_HOPS
from palomar.logsafe import safe
from palomar.net.hop_tls import describe_tls_failure
from palomar.net.link import Link, open_link
from palomar.protocols import hop
from palomar.protocols.proxyproto import build_v2

log = logging.getLogger("palomar.proxy")

START_TTL = 5
SPARE_MAX_AGE = 2.0
"""Seconds a spare hop waits for a login before it is closed: well inside the backend's 5 s for the
header after its challenge (`backend.service.HOP_HEADER_TIMEOUT`), so a spare is never late."""


@dataclass
class _Spare:
    """A hop connected, TLS done and the backend's challenge read, waiting for the next login."""

    link: Link
    challenge: bytes
    expiry: asyncio.TimerHandle


@dataclass(frozen=True)
class Established:
    """Logged in at `host`: relay between the client and `link` from now on."""

    host: str
    link: Link
    text: bytes
    leftover: bytes
    referrals: int
    remote_site: str | None = None
    """Set when `host` is another site's load balancer (site-to-site proxying), not a backend."""


@dataclass(frozen=True)
class HopFailed:
    """No session; `error_code` uses Dovecot's proxy error codes (proxy_dest_*)."""

    host: str
    error_code: str
    text: str
    auth: bool = False
    """The backend refused the login itself (reported to the client as an auth failure)."""


FAILURE_CODES = {
    "denied": "proxy_dest_internal_failure",
    "temp": "proxy_dest_auth_temp_failed",
    "auth": "proxy_dest_auth_failed",
    "internal": "proxy_dest_internal_failure",
    "protocol": "proxy_dest_protocol_failure",
    "unavailable": "proxy_dest_remote_failure",
}


@dataclass(frozen=True)
class HopTarget:
    user: str
    protocol: str
    session_id: str
    client: tuple[str, int]
    local: tuple[str, int]
    client_tls: bool
    client_id: tuple[tuple[str, str | None], ...] = ()
    """The client's own IMAP ID pairs, passed on to the backend's Dovecot (imap_id_retain)."""
    admin: bytes | None = None
    """An admin command for the backend itself (protocol `doveadm`): its JSON result comes back
    as the `Established.text`, and the connection is then closed."""
    payload: bytes = b""
    """Written right after the header, before the backend's reply: a doveadm command (the client's
    VERSION line and the command line), which the backend checks before it answers."""
    via_sites: tuple[str, ...] = ()
    """Sites whose proxies relayed this login (set when the hop goes to another site's load balancer)."""
    referred: str = ""
    """A backend of that other site that referred the session: its proxy hands the session there."""


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port` or `[v6]:port` (a site's load balancer) as (host, port)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else default_port
    host, sep, port = address.rpartition(":")
    if sep and host and ":" not in host and port.isdigit():
        return host, int(port)
    return address, default_port


async def open_backend_link(host: str, address: str, port: int, *, timeout: float, tls: ssl.SSLContext | None,
                            sessions: dict[str, ssl.SSLSession], preamble: bytes = b"") -> Link | HopFailed:
    """A link to backend `host` at address:port (`split_host_port` of the host), with TLS checked
    against the address and the host's last session offered; the hop and the direct path alike.
    `preamble` goes first, in clear (the direct path's PROXY header)."""
    try:
        return await open_link(address, port, timeout=timeout, tls=tls, session=sessions.get(host), preamble=preamble)
    except ssl.SSLError as exc:  # verification failed, or TLS on one side only
        return HopFailed(host, "proxy_dest_connect_failed", f"TLS to {address}:{port}: {describe_tls_failure(exc)}")
    except (OSError, TimeoutError) as exc:
        return HopFailed(host, "proxy_dest_connect_failed", f"connect({address}:{port}) failed: {exc}")


class HopClient:
    """Opens hops with one shared secret, port and TLS context (None: plaintext hop)."""

    def __init__(self, secret: bytes, port: int, *, tls: ssl.SSLContext | None, connect_timeout: float,
                 answer_timeout: float, sessions: dict[str, ssl.SSLSession] | None = None,
                 spares: bool = False) -> None:
        self.secret = secret
        self.port = port
        self.tls = tls
        self.sessions: dict[str, ssl.SSLSession] = {} if sessions is None else sessions
        """backend host -> the last TLS session it gave us: the next hop resumes it instead of a full
        handshake (the certificate was verified for that host when the session was made)."""
        self.connect_timeout = connect_timeout
        """`cluster_hop_connect_timeout`: until the backend accepted the connection (and, with TLS,
        finished the handshake: a stalled backend's kernel still accepts)."""
        self.answer_timeout = answer_timeout
        """`cluster_hop_answer_timeout`: from the backend's challenge until its one-line reply."""
        self.keep_spares = spares
        """After a hop to a host, open the next one at once (connect, TLS, challenge) and keep it for
        up to SPARE_MAX_AGE: the next login to that host only writes its header and reads the reply.
        The header is still sealed with that connection's own fresh challenge, and the backend reads
        ownership when the header arrives, so neither replay protection nor fresh reads change."""
        self._spares: dict[str, _Spare] = {}
        self._filling: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def with_timeout(self, timeout: float) -> HopClient:
        """The same hop settings for a probe that may take `timeout`: the answer waits that long, and
        the connect (TCP and TLS handshake) no longer than that either, so a probe into a network that
        drops packets silently is over in time even when `cluster_hop_connect_timeout` is longer."""
        return HopClient(self.secret, self.port, tls=self.tls, connect_timeout=min(self.connect_timeout, timeout),
                         answer_timeout=timeout, sessions=self.sessions)

    async def _challenged(self, host: str, deadline: float) -> tuple[Link, bytes] | HopFailed:
        """A new hop to `host` with the backend's challenge read (by `deadline`, loop time)."""
        link = await open_backend_link(host, *split_host_port(host, self.port), timeout=self.connect_timeout,
                                       tls=self.tls, sessions=self.sessions)
        if isinstance(link, HopFailed):
            return link
        try:
            async with asyncio.timeout_at(deadline):
                challenge = await _read_line(link, hop.ChallengeReader())
        except (TimeoutError, hop.HopError, ConnectionError, OSError) as exc:
            link.abort()
            return _hop_failure(host, exc)
        if challenge is None:
            link.close()
            return HopFailed(host, "proxy_dest_remote_failure", "backend closed the hop before its "
                             "challenge" + ("" if self.tls else " (is cluster_hop_ssl = no there too?)"))
        session = link.new_tls_session()  # TLS 1.3 tickets arrive with the server's first data
        if session is not None and session.has_ticket:
            self.sessions[host] = session
        return link, challenge

    async def _attempt(self, host: str, target: HopTarget, ttl: int) -> tuple[hop.HopReply, Link] | HopFailed:
        spare = self._take_spare(host)
        if spare is not None:
            outcome = await self._present(host, spare.link, spare.challenge, target, ttl, self._answer_deadline())
            if outcome is not None:
                return outcome
            # closed without a reply: the spare died unused (the backend restarted); a fresh hop decides
        deadline = self._answer_deadline()  # the challenge and the reply share `answer_timeout`, as before
        challenged = await self._challenged(host, deadline)
        if isinstance(challenged, HopFailed):
            return challenged
        outcome = await self._present(host, *challenged, target, ttl, deadline)
        if outcome is None:
            return HopFailed(host, "proxy_dest_remote_failure", "backend closed the hop")
        return outcome

    def _answer_deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.answer_timeout

    async def _present(self, host: str, link: Link, challenge: bytes, target: HopTarget, ttl: int, deadline: float
                       ) -> tuple[hop.HopReply, Link] | HopFailed | None:
        """Write the session's header, sealed with `challenge`, and read the backend's reply (None:
        the connection closed before any reply)."""
        request = hop.HopRequest(
            user=target.user, protocol=target.protocol, session_id=target.session_id, backend_host=host,
            client=target.client, local=target.local, client_tls=target.client_tls, ttl=ttl,
            client_id=hop.encode_client_id(target.client_id), admin=target.admin, via_sites=target.via_sites,
            referred=target.referred,
        )
        try:
            async with asyncio.timeout_at(deadline):
                link.write(build_v2(target.client, target.local, hop.seal(request, self.secret, challenge))
                           + target.payload)
                self._fill(host)  # made while this login waits for the backend, not after: less in the way
                reply = await _read_line(link, hop.ReplyReader())
        except (TimeoutError, hop.HopError) as exc:
            link.abort()
            return _hop_failure(host, exc)
        except (ConnectionError, OSError):
            reply = None
        if reply is None:
            link.abort()
            return None
        return reply, link

    def has_spare(self, host: str) -> bool:
        """A spare hop to `host` is kept and, as far as this side knows, still open."""
        spare = self._spares.get(host)
        return spare is not None and not spare.link.closed

    def _take_spare(self, host: str) -> _Spare | None:
        spare = self._spares.pop(host, None)
        if spare is None:
            return None
        spare.expiry.cancel()
        if spare.link.closed or spare.link.take_buffer():  # gone, or a backend that spoke out of turn
            spare.link.abort()
            return None
        return spare

    def _fill(self, host: str) -> None:
        """Open the next hop to `host` in the background, unless one is kept or on its way."""
        if not self.keep_spares or host in self._spares or host in self._filling:
            return
        self._filling.add(host)
        task = asyncio.get_running_loop().create_task(self._make_spare(host))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _make_spare(self, host: str) -> None:
        try:
            challenged = await self._challenged(host, self._answer_deadline())
        finally:
            self._filling.discard(host)
        if isinstance(challenged, HopFailed):  # the next login connects itself, and reports it
            log.debug("spare hop to %s: %s", host, challenged.text)
            return
        link, challenge = challenged
        if host in self._spares:
            link.close()
            return
        expiry = asyncio.get_running_loop().call_later(SPARE_MAX_AGE, self._expire, host, link)
        self._spares[host] = _Spare(link, challenge, expiry)

    def _expire(self, host: str, link: Link) -> None:
        spare = self._spares.get(host)
        if spare is not None and spare.link is link:
            del self._spares[host]
        link.close()  # the backend sees a hop that left without a word, and forgets it

    def close_spares(self) -> None:
        """Close the kept hops and stop the ones being opened (the proxy is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        for spare in self._spares.values():
            spare.expiry.cancel()
            spare.link.close()
        self._spares.clear()

    async def _reply(self, host: str, target: HopTarget, ttl: int) -> Established | HopFailed | hop.HopReply:
        """One hop: the session if the backend logged the user in, else its reply (the link closed)."""
        outcome = await self._attempt(host, target, ttl)
        if isinstance(outcome, HopFailed):
            return outcome
        reply, link = outcome
        if isinstance(reply, hop.LoggedIn):
            return Established(host, link, reply.text, link.take_buffer(), 0)
        link.close()
        return reply

    async def connect(self, host: str, target: HopTarget, on_redirect=None) -> Established | HopFailed:
        """Log the user in at `host`, following up to MAX_REFERRAL_HOPS referrals (never a host twice)."""
        return await follow_referrals(self._reply, host, target, on_redirect)


Attempt = Callable[[str, HopTarget, int], Awaitable["Established | HopFailed | hop.HopReply"]]
"""One login attempt at a host with a ttl: the session, a failure to connect, or the backend's reply."""


async def follow_referrals(attempt: Attempt, host: str, target: HopTarget, on_redirect=None
                           ) -> Established | HopFailed:
    """Run `attempt` at `host`, following up to MAX_REFERRAL_HOPS referrals (never a host twice); the
    hop and the direct path (direct_client.py) alike."""
    visited = [host]
    ttl = START_TTL
    for referrals in range(MAX_REFERRAL_HOPS + 1):
        outcome = await attempt(host, target, ttl)
        if isinstance(outcome, Established):
            return replace(outcome, referrals=referrals)
        if isinstance(outcome, HopFailed):
            return outcome
        if isinstance(outcome, hop.Failure):
            return HopFailed(host, FAILURE_CODES[outcome.code], outcome.text, auth=outcome.code == "auth")
        assert isinstance(outcome, hop.Referral)
        log.info("session=%s user=%s referred from %s to %s (%s)", target.session_id, safe(target.user), host,
                 safe(outcome.host), safe(outcome.reason or "no reason"))
        if on_redirect is not None:
            on_redirect(host)
        if outcome.host in visited:
            return HopFailed(host, "proxy_dest_redirected", f"referral loop via {outcome.host}")
        visited.append(outcome.host)
        host = outcome.host
        target = replace(target, referred="")  # it named a backend of the site that referred us on
        ttl -= 1
    return HopFailed(host, "proxy_dest_redirected", "too many referrals")


def _hop_failure(host: str, exc: BaseException) -> HopFailed:
    if isinstance(exc, TimeoutError):
        return HopFailed(host, "proxy_dest_remote_failure", "backend did not answer the hop in time")
    if isinstance(exc, hop.HopError):
        return HopFailed(host, "proxy_dest_protocol_failure", str(exc))
    return HopFailed(host, "proxy_dest_remote_failure", f"hop connection failed: {exc}")


async def _read_line(link: Link, reader: hop.LineReader[hop.T]) -> hop.T | None:
    """One hop line from `link` (None if the backend closed first); what follows stays in `link`."""
    while True:
        data = await link.read()
        if not data:
            return None
        decoded = reader.feed(data)
        if decoded is not None:
            link.unread(reader.leftover)
            return decoded
