"""Logging a user in to the local Dovecot as the master user, forwarding the client's address."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from palomar.net.link import Link, open_link
from palomar.protocols import hop, imap


@dataclass(frozen=True)
class DovecotEndpoint:
    host: str
    ports: dict[str, int]
    master_user: str
    master_password: str
    timeout: float = 30.0


async def login_imap(endpoint: DovecotEndpoint, request: hop.HopRequest) -> tuple[hop.HopReply, Link | None]:
    """Open an IMAP session for `request.user`; on success the link is ready to relay."""
    try:
        link = await open_link(endpoint.host, endpoint.ports["imap"], timeout=endpoint.timeout)
    except (OSError, TimeoutError) as exc:
        return hop.Failure("temp", f"Dovecot IMAP not reachable: {exc}"), None
    local = link.sockname() or ("127.0.0.1", 0)
    client = imap.ImapLoginClient(
        request.user,
        master_user=endpoint.master_user,
        master_password=endpoint.master_password,
        id_fields=[
            ("x-session-id", request.session_id),
            ("x-originating-ip", request.client[0]),
            ("x-originating-port", str(request.client[1])),
            ("x-connected-ip", request.local[0]),
            ("x-connected-port", str(request.local[1])),
            ("x-proxy-ttl", str(max(request.ttl - 1, 1))),
        ],
    )
    del local
    try:
        async with asyncio.timeout(endpoint.timeout):
            while True:
                data = await link.read()
                if not data:
                    return hop.Failure("temp", "Dovecot closed the connection during login"), None
                result = client.receive(data)
                link.write(client.data_to_send())
                if result is None:
                    continue
                if isinstance(result, imap.LoggedIn):
                    link.unread(client.leftover())
                    return hop.LoggedIn(result.untagged + result.ok_line), link
                link.close()
                code = {"auth": "auth", "temp": "temp", "referral": "internal"}.get(result.kind, "protocol")
                return hop.Failure(code, f"Dovecot: {result.text}"), None
    except TimeoutError:
        link.abort()
        return hop.Failure("temp", "Dovecot did not answer the login in time"), None


LOGINS = {"imap": login_imap}
