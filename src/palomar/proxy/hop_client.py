"""The proxy's side of the hop: connect to a backend, present the session, follow referrals."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from palomar.cluster.routing import MAX_REFERRAL_HOPS
from palomar.geodb.engine import now_micros
from palomar.net.link import Link, open_link
from palomar.protocols import hop
from palomar.protocols.proxyproto import build_v2

log = logging.getLogger("palomar.proxy")

START_TTL = 5


@dataclass(frozen=True)
class Established:
    """Logged in at `host`: relay between the client and `link` from now on."""

    host: str
    link: Link
    text: bytes
    leftover: bytes
    referrals: int


@dataclass(frozen=True)
class HopFailed:
    """No session; `error_code` uses Dovecot's proxy error codes (proxy_dest_*)."""

    host: str
    error_code: str
    text: str
    auth: bool = False
    """The backend refused the login itself (reported to the client as an auth failure)."""


_FAILURE_CODES = {
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


class HopClient:
    """Opens hops with one shared secret and port; counts redirects through `on_redirect`."""

    def __init__(self, secret: bytes, port: int, *, timeout: float = 30.0) -> None:
        self.secret = secret
        self.port = port
        self.timeout = timeout

    async def _attempt(self, host: str, target: HopTarget, ttl: int) -> tuple[hop.HopReply, Link] | HopFailed:
        try:
            link = await open_link(host, self.port, timeout=self.timeout)
        except (OSError, TimeoutError) as exc:
            return HopFailed(host, "proxy_dest_connect_failed", f"connect({host}:{self.port}) failed: {exc}")
        request = hop.HopRequest(
            user=target.user, protocol=target.protocol, session_id=target.session_id, backend_host=host,
            client=target.client, local=target.local, client_tls=target.client_tls, ttl=ttl,
            client_id=hop.encode_client_id(target.client_id),
        )
        tlvs, _ = hop.seal(request, self.secret, now_micros())
        link.write(build_v2(target.client, target.local, tlvs))
        reader = hop.ReplyReader()
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    data = await link.read()
                    if not data:
                        link.close()
                        return HopFailed(host, "proxy_dest_remote_failure", "backend closed the hop")
                    reply = reader.feed(data)
                    if reply is not None:
                        link.unread(reader.leftover)
                        return reply, link
        except TimeoutError:
            link.abort()
            return HopFailed(host, "proxy_dest_remote_failure", "backend did not answer the hop in time")
        except hop.HopError as exc:
            link.abort()
            return HopFailed(host, "proxy_dest_protocol_failure", str(exc))

    async def connect(self, host: str, target: HopTarget, on_redirect=None) -> Established | HopFailed:
        """Log the user in at `host`, following up to MAX_REFERRAL_HOPS referrals (never a host twice)."""
        visited = [host]
        ttl = START_TTL
        for referrals in range(MAX_REFERRAL_HOPS + 1):
            outcome = await self._attempt(host, target, ttl)
            if isinstance(outcome, HopFailed):
                return outcome
            reply, link = outcome
            if isinstance(reply, hop.LoggedIn):
                return Established(host, link, reply.text, link.take_buffer(), referrals)
            link.close()
            if isinstance(reply, hop.Failure):
                return HopFailed(host, _FAILURE_CODES[reply.code], reply.text, auth=reply.code == "auth")
            log.info("session=%s user=%s referred from %s to %s (%s)", target.session_id, target.user, host,
                     reply.host, reply.reason or "no reason")
            if on_redirect is not None:
                on_redirect(host)
            if reply.host in visited:
                return HopFailed(host, "proxy_dest_redirected", f"referral loop via {reply.host}")
            visited.append(reply.host)
            host = reply.host
            ttl -= 1
        return HopFailed(host, "proxy_dest_redirected", "too many referrals")
