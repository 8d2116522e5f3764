"""Client-facing connection setup shared by every protocol: the PROXY header on haproxy
listeners (trusted networks only), implicit TLS on ssl listeners, the session id."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from palomar.logsafe import safe
from palomar.net.link import Link, accept_link
from palomar.net.proxyheader import read_proxy_header
from palomar.protocols.proxyproto import ProxyProtocolError
from palomar.proxy.limits import QUEUE_FULL, Admission, Farewell, too_many_from_ip
from palomar.proxy.state import ProxyState

log = logging.getLogger("palomar.proxy")


@dataclass
class ClientConnection:
    """A client after the transport-level preliminaries: real addresses and TLS state known."""

    link: Link
    client: tuple[str, int]
    local: tuple[str, int]
    tls: bool
    session_id: str
    admission: Admission
    """Its place in the connection counts; whoever ends the connection releases it."""
    auth_failures: int = 0
    relaying: bool = False
    client_id: tuple[tuple[str, str | None], ...] = ()
    """The client's IMAP ID pairs to pass on to the backend (imap_id_retain)."""


def new_session_id(client: tuple[str, int]) -> str:
    """Dovecot's shape: base64 of a microsecond clock, the client port and address."""
    micros = time.time_ns() // 1000
    packed = struct.pack("<Q", micros)[:6] + struct.pack(">H", client[1] & 0xFFFF)
    address = client[0]
    packed += socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    return base64.b64encode(packed).decode().rstrip("=")


def _plain(address: str) -> str:
    """Strip the IPv4-mapped IPv6 form so logs and trust checks see the IPv4 address."""
    if ":" not in address:  # IPv4 from the kernel or a parsed PROXY header: already canonical
        return address
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def trusted(address: str, networks) -> bool:
    ip = ipaddress.ip_address(_plain(address))
    return any(ip in net for net in networks)


async def accept(state: ProxyState, sock: socket.socket, *, service: str, haproxy: bool, ssl: bool,
                 bye: Callable[[Farewell], bytes], per_address: bool = True) -> ClientConnection | None:
    """Admit the connection, read the PROXY header and/or do the TLS handshake; None when the
    connection was refused or dropped. `bye` words a refusal in the service's protocol;
    `per_address` applies login_max_ip_connections (not to LMTP, whose clients are MTAs)."""
    admission = state.limits.admit(service)
    if admission is None:
        refuse(state, sock, b"" if ssl else bye(QUEUE_FULL), "client_limit", None)
        return None
    conn = None
    try:
        conn = await _handshake(state, sock, admission, haproxy=haproxy, ssl=ssl, bye=bye, per_address=per_address)
        return conn
    finally:
        if conn is None:
            admission.release()


def refuse(state: ProxyState, sock: socket.socket, reply: bytes, reason: str, address: str | None) -> None:
    """Close a refused connection with its one line (best effort: never wait for a flooder)."""
    with contextlib.suppress(OSError):
        sock.send(reply)
    sock.close()
    line = state.refusals.record(reason, address)
    if line:
        log.warning(line)


async def _handshake(state: ProxyState, sock: socket.socket, admission: Admission, *, haproxy: bool, ssl: bool,
                     bye: Callable[[Farewell], bytes], per_address: bool) -> ClientConnection | None:
    try:
        peer = sock.getpeername()
        local = sock.getsockname()
    except OSError:  # gone already, e.g. a load balancer's TCP health check
        sock.close()
        return None
    client = (_plain(peer[0]), peer[1])
    local = (_plain(local[0]), local[1])
    tls = False
    if haproxy:
        if not trusted(client[0], state.haproxy_trusted):
            log.warning("haproxy listener: connection from %s dropped: not in haproxy_trusted_networks",
                        client[0])
            sock.close()
            return None
        try:
            async with asyncio.timeout(state.haproxy_timeout):
                header = await read_proxy_header(sock)
        except TimeoutError:
            log.warning("haproxy listener: %s sent no complete PROXY header in time", client[0])
            sock.close()
            return None
        except (ProxyProtocolError, ConnectionError, OSError) as exc:
            log.warning("haproxy listener: bad PROXY header from %s: %s", client[0], safe(exc))
            sock.close()
            return None
        if header.command == "PROXY" and header.source is not None and header.dest is not None:
            client = (_plain(header.source[0]), header.source[1])
            local = (_plain(header.dest[0]), header.dest[1])
        tls = header.ssl is not None and bool(getattr(header.ssl, "client_ssl", False))
    if per_address and not trusted(client[0], state.login_trusted) and not admission.claim_address(client[0]):
        refuse(state, sock, b"" if ssl else bye(too_many_from_ip(state.limits.setting)),
               "login_max_ip_connections", client[0])
        return None
    try:
        link = await accept_link(sock)
    except OSError:
        sock.close()
        return None
    if ssl:
        if state.tls is None:
            link.abort()
            return None
        try:
            async with asyncio.timeout(state.login_timeout):
                await link.start_tls(state.tls, server_side=True)
        except (OSError, TimeoutError, ConnectionError) as exc:
            # A client giving up, or a load balancer's TLS health check: noise, not an event.
            log.debug("TLS handshake with %s failed: %s", client[0], exc or type(exc).__name__)
            link.abort()
            return None
        tls = True
    return ClientConnection(link, client, local, tls, new_session_id(client), admission)
