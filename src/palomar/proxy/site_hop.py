"""Site-to-site proxying: the listener other sites' proxies reach through this site's load balancer.

A proxy that routes a user to another site opens a hop (the same header, challenge and MAC as
a hop to a backend, with the shared secret) to that site's `load_balancer`; the load balancer
passes the bytes to one of the site's proxies, which arrives here. This proxy routes the user
with its own view (the same `route_login`), opens the hop to its backend, answers the calling
proxy with the backend's reply and relays bytes both ways. The caller then sees the remote
site exactly as it sees a backend: for IMAP, POP3, Submission and ManageSieve the login, for
LMTP the leg of one recipient (the backend checks every recipient again; a backend that refers
it is named in the caller's next hop, TLV 0xEC), for doveadm one command for one user (the two
lines after the header, checked and passed on as they came).

Loop guard: the hop carries the sites it passed through (TLV 0xEB, under the MAC, so only
holders of the secret can set it). A user this site would send on to a site already passed
through, or past `MAX_SITE_HOPS`, is refused with a temporary failure; one it would send to
a third site is answered with a referral to that site's load balancer, which the calling proxy
follows (`auth_nologin_referral`), with its own referral limit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from uuid import UUID

from palomar.boundary import log_failure
from palomar.cluster.site_selection import follow_site
from palomar.logsafe import safe
from palomar.net.doveadm_hop import read_payload
from palomar.net.link import Link, accept_link
from palomar.net.proxyheader import read_proxy_header_from
from palomar.net.relay import Relay
from palomar.protocols import doveadm, hop
from palomar.protocols.proxyproto import ProxyProtocolError
from palomar.protocols.shutdown import shutdown_line
from palomar.proxy.hop_client import HopFailed, HopTarget

log = logging.getLogger("palomar.proxy")

SITE_HOP_TIMEOUT = 5.0
"""Seconds a calling proxy has for the TLS handshake, and again for its header."""
SITE_PING_COMMAND = b'{"cmd":"site-ping"}'
_FAILURES = {
    "proxy_dest_auth_failed": "auth",
    "proxy_dest_auth_temp_failed": "temp",
    "proxy_dest_protocol_failure": "protocol",
}


async def handle_site_hop(state, tls: ssl.SSLContext | None, sock: socket.socket) -> None:
    """One connection from another site's proxy (through this site's load balancer)."""
    try:
        peer = sock.getpeername()[0]
    except OSError:
        sock.close()
        return
    try:
        link = await accept_link(sock, tls=tls, handshake_timeout=SITE_HOP_TIMEOUT if tls else None)
    except OSError as exc:
        log.info("site hop from %s: TLS handshake failed: %s", peer, exc)
        return
    try:
        await _site_hop(state, link, peer)
    except (ConnectionError, OSError) as exc:
        log.debug("site hop from %s: connection error: %s", peer, exc)
        link.abort()
    except Exception as exc:  # last resort: log once, close
        log_failure(log, f"site hop from {peer}", exc)
        link.close()


def _site_ping(view, admin: bytes) -> hop.HopReply:
    """Another site's reachability probe (proxy/site_probes.py): OK while this site can serve."""
    if admin != SITE_PING_COMMAND:
        return hop.Failure("protocol", "the only admin command between sites is site-ping")
    if not any(b.online for b in view.backends):
        return hop.Failure("unavailable", f"site {view.site.name} has no online backend")
    return hop.LoggedIn(f"site {view.site.name}".encode())


def _refuse(link: Link, reply: hop.HopReply) -> None:
    link.write(hop.encode_reply(reply))
    link.close()


async def _site_hop(state, link: Link, peer: str) -> None:
    view = await state.router.site_view()
    if view is not None and not view.site.load_balancer:
        # Cached from before an admin set the address (`site update --load-balancer`): read it again.
        state.router.invalidate_site_view()
        view = await state.router.site_view()
    own_address = view.site.load_balancer if view is not None else None
    if not own_address:
        log.warning("site hop from %s refused: this site has no load balancer in the GeoDB", peer)
        _refuse(link, hop.Failure("denied", "hop refused"))
        return
    challenge = hop.new_challenge()
    link.write(hop.encode_challenge(challenge))
    try:
        async with asyncio.timeout(SITE_HOP_TIMEOUT):
            header = await read_proxy_header_from(link)
        request = hop.verify(header.source, header.dest, header.tlvs, secret=state.hops.secret,
                             own_host=own_address, challenge=challenge)
    except ConnectionError:
        link.abort()
        return
    except (TimeoutError, ProxyProtocolError, OSError, hop.HopError) as exc:
        log.warning("site hop from %s refused: %s", peer, "no hop header in time" if isinstance(exc, TimeoutError)
                    else safe(str(exc) or type(exc).__name__))
        _refuse(link, hop.Failure("denied", "hop refused"))
        return
    if request.admin is not None:
        _refuse(link, _site_ping(view, request.admin))
        return
    payload = b""
    if request.protocol == "doveadm":  # the command follows the header: checked, then passed on as it came
        try:
            payload = (await read_payload(link, request.user)).raw
        except (TimeoutError, doveadm.DoveadmProtocolError) as exc:
            log.warning("session=%s user=%s proto=doveadm site hop refused: %s", request.session_id,
                        safe(request.user), "no doveadm command in time" if isinstance(exc, TimeoutError)
                        else safe(str(exc)))
            _refuse(link, hop.Failure("protocol", "bad doveadm command"))
            return
    visited = [UUID(s) for s in request.via_sites]
    if state.site_id is not None:
        visited.append(state.site_id)
    route = await state.router.route(request.user)
    if route.site is not None:
        loop = follow_site(visited, route.site.id)
        if loop is not None or not route.site.load_balancer:
            why = loop or f"site {route.site.name} has no load balancer"
            log.warning("session=%s user=%s site hop not relayed on: %s", request.session_id, safe(request.user), why)
            _refuse(link, hop.Failure("unavailable", why))
            return
        log.info("session=%s user=%s referred to site %s", request.session_id, safe(request.user), route.site.name)
        _refuse(link, hop.Referral(route.site.load_balancer, f"site {route.site.name}"))
        return
    host = route.host
    if request.referred:  # a backend of this site referred the caller: it knows better than our cache
        referred = None if view is None else view.backend_by_host(request.referred)
        if referred is None or not referred.online:
            why = "not an online backend of this site"
            _refuse(link, hop.Failure("unavailable", f"referred to {request.referred}, {why}"))
            return
        host = request.referred
        log.info("session=%s user=%s sent to %s, the backend of this site that referred it", request.session_id,
                 safe(request.user), safe(host))
    if host is None:
        _refuse(link, hop.Failure("unavailable", route.reason or "no backend"))
        return
    target = HopTarget(user=request.user, protocol=request.protocol, session_id=request.session_id,
                       client=request.client, local=request.local, client_tls=request.client_tls,
                       client_id=(hop.decode_client_id(request.client_id) or ()) if request.client_id else (),
                       via_sites=tuple(str(s) for s in visited), payload=payload)
    outcome = await state.hops.connect(host, target, on_redirect=state.count_redirect)
    if isinstance(outcome, HopFailed):
        state.count_failure(outcome.host, outcome.error_code, login=request.protocol != "lmtp")
        _refuse(link, hop.Failure(_FAILURES.get(outcome.error_code, "unavailable"), outcome.text))
        return
    state.count_success(outcome.host, login=request.protocol != "lmtp")
    log.info("session=%s user=%s proto=%s relayed from another site to %s", request.session_id,
             safe(request.user), request.protocol, outcome.host)
    link.write(hop.encode_reply(hop.LoggedIn(outcome.text)))
    caller, backend = link.transport, outcome.link.transport
    assert caller is not None and backend is not None
    host = outcome.host
    relay = Relay(caller, backend, lambda _stats: state.sessions.remove(host, relay),
                  shutdown_line(request.protocol, state.proxy_host))
    state.sessions.add(host, relay, origin=UUID(request.via_sites[-1]) if request.via_sites else None)
    relay.start(client_pending=link.take_buffer(), server_pending=outcome.leftover + outcome.link.take_buffer(),
                client_eof=link.eof, server_eof=outcome.link.eof)
