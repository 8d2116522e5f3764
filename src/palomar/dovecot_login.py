"""Logging a user in to a backend's Dovecot as the master user, forwarding the client's address.

Each protocol's client core does the talking (IMAP: ID then AUTHENTICATE PLAIN; POP3 and
ManageSieve: XCLIENT then AUTH); this module drives one of them over a connection and turns
its result into the hop's reply. Two callers: `palomar backend` (the hop path: its local Dovecot)
and a proxy with `cluster_backend_path = direct` (the backend's Dovecot itself, behind a PROXY
v2 header that carries the client's address).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from palomar.net.link import Link, open_link
from palomar.protocols import hop, imap, managesieve, pop3, submission


@dataclass(frozen=True)
class DovecotEndpoint:
    host: str
    ports: dict[str, int]
    master_user: str
    master_password: str
    timeout: float = 30.0
    doveadm_password: str = field(default="", repr=False)
    """For the doveadm server at ports["doveadm"] (the backend's doveadm_port)."""


def _imap_client(endpoint: DovecotEndpoint, request: hop.HopRequest) -> imap.ImapLoginClient:
    return imap.ImapLoginClient(
        request.user, master_user=endpoint.master_user, master_password=endpoint.master_password,
        id_fields=[
            *((hop.decode_client_id(request.client_id) or ()) if request.client_id else ()),
            ("x-session-id", request.session_id),
            ("x-originating-ip", request.client[0]),
            ("x-originating-port", str(request.client[1])),
            ("x-connected-ip", request.local[0]),
            ("x-connected-port", str(request.local[1])),
            ("x-proxy-ttl", str(max(request.ttl - 1, 1))),
        ],
    )


def xclient_fields(request: hop.HopRequest) -> dict[str, str]:
    """What Dovecot 2.3's POP3/ManageSieve/SMTP XCLIENT accepts: address, port, session, ttl."""
    return {
        "ADDR": request.client[0],
        "PORT": str(request.client[1]),
        "SESSION": request.session_id,
        "TTL": str(max(request.ttl - 1, 1)),
    }


def _pop3_client(endpoint: DovecotEndpoint, request: hop.HopRequest) -> pop3.Pop3LoginClient:
    return pop3.Pop3LoginClient(request.user, master_user=endpoint.master_user,
                                master_password=endpoint.master_password, xclient=xclient_fields(request))


def _sieve_client(endpoint: DovecotEndpoint, request: hop.HopRequest) -> managesieve.SieveLoginClient:
    return managesieve.SieveLoginClient(request.user, master_user=endpoint.master_user,
                                        master_password=endpoint.master_password, xclient=xclient_fields(request))


BACKEND_HELO = "palomar-backend"
"""The EHLO name the backend gives its Dovecot; the client's address travels in XCLIENT."""


def _submission_client(endpoint: DovecotEndpoint, request: hop.HopRequest) -> submission.SubmissionLoginClient:
    return submission.SubmissionLoginClient(request.user, master_user=endpoint.master_user,
                                            master_password=endpoint.master_password, helo=BACKEND_HELO,
                                            xclient=xclient_fields(request))


@dataclass(frozen=True)
class LoginFlavour:
    """How one protocol logs in: its client core and how to read the core's results."""

    client: Callable[[DovecotEndpoint, hop.HopRequest], Any]
    logged_in: type
    post_login: Callable[[Any], bytes]


FLAVOURS: dict[str, LoginFlavour] = {
    "imap": LoginFlavour(_imap_client, imap.LoggedIn, lambda r: r.untagged + r.ok_line),
    "pop3": LoginFlavour(_pop3_client, pop3.LoggedIn, lambda r: r.ok_line),
    "sieve": LoginFlavour(_sieve_client, managesieve.LoggedIn, lambda r: r.ok_line),
    "submission": LoginFlavour(_submission_client, submission.LoggedIn, lambda r: r.reply),
}

REFERRAL_MARK = "palomar-referral"
"""Starts a refusal's text when a direct-path backend's login check refers the user elsewhere (the
same word the LMTP gateway uses in its 451 replies)."""

_FAILURE_KINDS = {"auth": "auth", "temp": "temp", "referral": "internal", "config": "internal", "other": "temp"}


async def connect(endpoint: DovecotEndpoint, protocol: str) -> Link | hop.Failure:
    """A connection to Dovecot's `protocol` service, nothing sent yet. Connecting logs nobody in,
    so the backend opens it while the login's ownership check runs (a login that is not admitted
    closes it unused) and Dovecot's greeting is usually waiting when the check is done."""
    if protocol not in FLAVOURS:
        return hop.Failure("protocol", f"protocol {protocol} is not served")
    try:
        return await open_link(endpoint.host, endpoint.ports[protocol], timeout=endpoint.timeout)
    except (OSError, TimeoutError) as exc:
        return hop.Failure("unavailable", f"Dovecot {protocol} not reachable: {exc}")


async def login_over(link: Link, endpoint: DovecotEndpoint, request: hop.HopRequest
                     ) -> tuple[hop.HopReply, Link | None]:
    """Log `request.user` in on an open connection to Dovecot (closed unless the login succeeds)."""
    flavour = FLAVOURS[request.protocol]
    client = flavour.client(endpoint, request)
    try:
        async with asyncio.timeout(endpoint.timeout):
            while True:
                data = await link.read()
                result = client.receive(data) if data else client.connection_lost()
                link.write(client.data_to_send())
                if result is None:
                    continue
                if isinstance(result, flavour.logged_in):
                    link.unread(client.leftover())
                    return hop.LoggedIn(flavour.post_login(result)), link
                link.close()
                return failure_reply(result.kind, result.text), None
    except TimeoutError:
        link.abort()
        return hop.Failure("unavailable", "Dovecot did not answer the login in time"), None


def failure_reply(kind: str, text: str) -> hop.Failure | hop.Referral:
    """A refused login as the hop would answer it. The login check of a direct-path backend refers
    with `nologin` and a reason `palomar-referral <host> <why>` (login_check.py), which Dovecot
    sends as the text of its refusal; any other refusal is a failure."""
    words = text.split()
    if len(words) >= 2 and words[0] == REFERRAL_MARK:
        return hop.Referral(words[1], " ".join(words[2:]))
    return hop.Failure(_FAILURE_KINDS.get(kind, "protocol"), f"Dovecot: {' '.join(words)}")
