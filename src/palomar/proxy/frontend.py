"""Client-facing connection setup shared by every protocol: the PROXY header on haproxy
listeners (trusted networks only), implicit TLS on ssl listeners, the session id."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
import struct
import time
from dataclasses import dataclass

from palomar.net.link import Link, accept_link
from palomar.net.proxyheader import read_proxy_header
from palomar.protocols.proxyproto import ProxyProtocolError
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


async def accept(state: ProxyState, sock: socket.socket, *, haproxy: bool, ssl: bool) -> ClientConnection | None:
    """Read the PROXY header and/or do the TLS handshake; None when the connection was dropped."""
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
            log.warning("haproxy listener: bad PROXY header from %s: %s", client[0], exc)
            sock.close()
            return None
        if header.command == "PROXY" and header.source is not None and header.dest is not None:
            client = (_plain(header.source[0]), header.source[1])
            local = (_plain(header.dest[0]), header.dest[1])
        tls = header.ssl is not None and bool(getattr(header.ssl, "client_ssl", False))
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
            log.info("TLS handshake with %s failed: %s", client[0], exc)
            link.abort()
            return None
        tls = True
    return ClientConnection(link, client, local, tls, new_session_id(client))
