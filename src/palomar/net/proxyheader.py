"""Reading a PROXY header: from a raw socket without consuming a byte more (a TLS handshake may
follow it), or from a Link when plain application bytes follow (the hop to a backend)."""

from __future__ import annotations

import asyncio
import socket
import struct

from palomar.net.link import Link
from palomar.protocols.proxyproto import ProxyHeader, ProxyHeaderParser


async def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes from a raw socket: the PROXY header must be consumed without taking any
    byte of what follows (which may be a TLS ClientHello)."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise ConnectionError("peer closed during the PROXY header")
        data += chunk
    return bytes(data)


async def read_proxy_header(sock: socket.socket) -> ProxyHeader:
    """Read one PROXY v1 or v2 header, byte-exact."""
    parser = ProxyHeaderParser()
    first = await _recv_exact(sock, 8)
    header = parser.feed(first)
    if header is None and not first.startswith(b"PROXY"):
        rest = await _recv_exact(sock, 8)
        header = parser.feed(rest)
        if header is None:
            header = parser.feed(await _recv_exact(sock, struct.unpack(">H", rest[6:8])[0]))
    while header is None:  # v1: a text line of at most 107 bytes, read byte by byte
        header = parser.feed(await _recv_exact(sock, 1))
    return header


async def read_proxy_header_from(link: Link) -> ProxyHeader:
    """Read one PROXY header from a Link and put back what followed it.

    Cheaper than `read_proxy_header` (no reader registered and removed per chunk, usually one
    read for the whole header), for connections that stay plain after the header.
    """
    parser = ProxyHeaderParser()
    while True:
        data = await link.read()
        if not data:
            raise ConnectionError("peer closed during the PROXY header")
        header = parser.feed(data)
        if header is not None:
            link.unread(parser.remaining)
            return header
