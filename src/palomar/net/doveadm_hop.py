"""The doveadm command a proxy writes right after a hop header (docs/design/backend-hop.md,
"doveadm over the hop"): read and checked by the backend that runs it, and by another site's proxy
that passes it on to its backend (proxy/site_hop.py) exactly as it came."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from palomar.net.link import Link
from palomar.protocols import doveadm, doveadm_http

PAYLOAD_TIMEOUT = 5.0
"""The proxy writes its two lines with the header: a hop that lacks them is broken."""


@dataclass(frozen=True)
class TcpPayload:
    version_line: bytes
    command: doveadm.Command
    raw: bytes
    """The two lines as received."""


@dataclass(frozen=True)
class HttpPayload:
    command: doveadm_http.ApiCommand
    raw: bytes
    """The two lines as received."""


async def read_payload(link: Link, user: str) -> TcpPayload | HttpPayload:
    """The command the proxy sent, which must be for `user` (the hop's user).

    Raises DoveadmProtocolError (or TimeoutError) for anything else."""
    buffer = bytearray()
    newlines = 0  # counted in each piece as it comes: the buffer is never scanned again
    async with asyncio.timeout(PAYLOAD_TIMEOUT):
        while newlines < 2:
            if len(buffer) > doveadm.MAX_LINE * 2 + doveadm_http.MAX_BODY:
                raise doveadm.DoveadmProtocolError("doveadm hop payload too long")
            data = await link.read()
            if not data:
                raise doveadm.DoveadmProtocolError("hop closed before its doveadm command")
            buffer += data
            newlines += data.count(b"\n")
    first = buffer.index(b"\n") + 1
    second = buffer.index(b"\n", first) + 1
    first_line, line = bytes(buffer[:first]), bytes(buffer[first:second])
    link.unread(bytes(buffer[second:]))
    payload: TcpPayload | HttpPayload
    if first_line == doveadm_http.HOP_MARKER:
        payload = HttpPayload(doveadm_http.parse_hop_command(line), first_line + line)
        target = doveadm_http.target_user(payload.command)
    elif first_line.startswith(doveadm.VERSION_PREFIX):
        payload = TcpPayload(first_line, doveadm.parse_command(line), first_line + line)
        target = doveadm.target_user(payload.command)
    else:
        raise doveadm.DoveadmProtocolError("doveadm hop payload without its VERSION or HTTP line")
    if target != user:
        raise doveadm.DoveadmProtocolError("doveadm command is not for the hop's user")
    return payload
