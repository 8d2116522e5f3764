"""A doveadm command that a proxy forwards over the hop, run by the local Dovecot's doveadm server.

The proxy writes two lines right after the hop header (docs/design/backend-hop.md, "doveadm over
the hop"): for the TCP protocol the client's `VERSION` line and the command line; for the HTTP API
`HTTP` and the command as one JSON line. The backend checks that the command is for the hop's user,
checks ownership as for a login, then hands the command to its Dovecot (TCP: logs in to the doveadm
listener with doveadm_password and sends the line; HTTP: POSTs it to the HTTP API with Basic auth),
answers `OK`, and relays: Dovecot's reply goes back byte for byte (TCP: framed as the client's
protocol version asked; HTTP: the whole HTTP response, after which Dovecot closes).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from functools import partial

from palomar.backend.dovecot_login import DovecotEndpoint
from palomar.net.doveadm_hop import HttpPayload, TcpPayload
from palomar.net.link import Link, open_link
from palomar.protocols import doveadm, doveadm_http, hop


def runner(endpoint: DovecotEndpoint, payload: TcpPayload | HttpPayload
           ) -> Callable[[], Awaitable[tuple[hop.HopReply, Link | None]]]:
    if isinstance(payload, HttpPayload):
        return partial(run_http_on_dovecot, endpoint, payload.command)
    return partial(run_on_dovecot, endpoint, payload.version_line, payload.command)


async def run_http_on_dovecot(endpoint: DovecotEndpoint, command: doveadm_http.ApiCommand
                              ) -> tuple[hop.HopReply, Link | None]:
    """POST the command to Dovecot's doveadm HTTP API; the link then carries Dovecot's answer."""
    port = endpoint.ports.get("doveadm-http", 0)
    if not port:
        return hop.Failure("protocol", "the doveadm HTTP API is not enabled on this backend "
                                       "(cluster_backend_dovecot_doveadm_http_port = 0)"), None
    try:
        link = await open_link(endpoint.host, port, timeout=endpoint.timeout)
    except (OSError, TimeoutError) as exc:
        return hop.Failure("unavailable", f"Dovecot doveadm HTTP API not reachable: {exc}"), None
    link.write(doveadm_http.dovecot_request(command, endpoint.doveadm_password))
    return hop.LoggedIn(b""), link


async def run_on_dovecot(endpoint: DovecotEndpoint, version_line: bytes, command: doveadm.Command
                         ) -> tuple[hop.HopReply, Link | None]:
    """Log in to Dovecot's doveadm server and send the command; the link then carries its reply."""
    port = endpoint.ports.get("doveadm", 0)
    if not port:
        return hop.Failure("protocol", "doveadm is not enabled on this backend (doveadm_port = 0)"), None
    try:
        link = await open_link(endpoint.host, port, timeout=endpoint.timeout)
    except (OSError, TimeoutError) as exc:
        return hop.Failure("unavailable", f"Dovecot doveadm not reachable: {exc}"), None
    link.write(version_line)
    buffer = bytearray()
    sent_auth = False
    try:
        async with asyncio.timeout(endpoint.timeout):
            while True:
                while b"\n" not in buffer:
                    data = await link.read()
                    if not data:
                        link.close()
                        return hop.Failure("unavailable", "Dovecot doveadm closed the connection"), None
                    buffer += data
                end = buffer.index(b"\n")
                line = bytes(buffer[:end])
                del buffer[:end + 1]
                if line.startswith(b"VERSION\t") and not sent_auth:
                    continue
                if line == b"-" and not sent_auth:
                    plain = b"\0" + doveadm.USERNAME + b"\0" + endpoint.doveadm_password.encode()
                    link.write(b"PLAIN\t" + base64.b64encode(plain) + b"\n")
                    sent_auth = True
                elif line == b"+":
                    link.write(command.raw)
                    link.unread(bytes(buffer))
                    return hop.LoggedIn(b""), link
                else:
                    link.close()
                    what = "refused doveadm_password" if line == b"-" else "broke the doveadm handshake"
                    return hop.Failure("internal", f"Dovecot doveadm {what}"), None
    except TimeoutError:
        link.abort()
        return hop.Failure("unavailable", "Dovecot doveadm did not answer in time"), None
