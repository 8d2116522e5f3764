"""How many connections one proxy process holds: per service (`client_limit`) and, before login,
per client address (`login_max_ip_connections`).

`client_limit` counts every connection of a service in this process, pre-login and relayed alike,
as Dovecot's login processes do in high-performance mode (the proxied sessions live in the login
process). The per-address cap counts only connections that have not logged in yet: idle pre-login
connections cost a descriptor each and are what a flood is made of, while a NAT or a busy client with
many logged-in sessions is normal. The address is the one the session believes is the client's: the
PROXY header's source on haproxy listeners (HAProxy's own address is never counted as one client).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Farewell:
    """Why the server closes a connection; each protocol words it as its BYE, -ERR or 421."""

    text: str
    enhanced: str = "4.0.0"
    """The SMTP enhanced status code (Submission and LMTP answer `421 <enhanced> <host> <text>`)."""


QUEUE_FULL = Farewell("Connection queue full")
"""Dovecot's words when a login process is full (client_limit): `* BYE Connection queue full`."""

TOO_MANY_AUTH_FAILURES = Farewell("Too many authentication failures.", "4.7.0")


def too_many_from_ip(limit: int) -> Farewell:
    """Worded like Dovecot's mail_max_userip_connections refusal, naming the setting."""
    return Farewell(f"Maximum number of connections from IP exceeded (login_max_ip_connections={limit})")


class Admission:
    """One connection's place in the counts, from accept until it closes."""

    __slots__ = ("_limits", "service", "address")

    def __init__(self, limits: ConnectionLimits, service: str) -> None:
        self._limits = limits
        self.service = service
        self.address: str | None = None

    def claim_address(self, address: str) -> bool:
        """Count this pre-login connection against `address`; False when that address is at its cap."""
        limits = self._limits
        if limits.max_per_ip and limits.prelogin.get(address, 0) >= limits.max_per_ip:
            return False
        limits.prelogin[address] += 1
        self.address = address
        return True

    def logged_in(self) -> None:
        """The client logged in: it no longer counts against its address (still against client_limit)."""
        if self.address is not None:
            limits = self._limits
            limits.prelogin[self.address] -= 1
            if limits.prelogin[self.address] <= 0:
                del limits.prelogin[self.address]
            self.address = None

    def release(self) -> None:
        """The connection closed. Safe to call twice."""
        self.logged_in()
        if self.service:
            self._limits.open[self.service] -= 1
            self.service = ""


class ConnectionLimits:
    """The counts of one proxy process; decisions only, the session code does the talking."""

    def __init__(self, client_limits: dict[str, int], max_per_ip: int, *, setting: int | None = None) -> None:
        self.client_limits = client_limits
        """service -> client_limit (0: no limit)."""
        self.max_per_ip = max_per_ip
        """The cap this process applies: with worker processes, its share of `setting`."""
        self.setting = max_per_ip if setting is None else setting
        """login_max_ip_connections as configured: what the refusal names."""
        self.open: defaultdict[str, int] = defaultdict(int)
        self.prelogin: defaultdict[str, int] = defaultdict(int)

    def admit(self, service: str) -> Admission | None:
        """A new connection of `service`, or None when the service's client_limit is reached."""
        limit = self.client_limits.get(service, 0)
        if limit and self.open[service] >= limit:
            return None
        self.open[service] += 1
        return Admission(self, service)


def smtp_bye(host: str, farewell: Farewell) -> bytes:
    """Submission's and LMTP's closing reply: `421 <enhanced> <host> <text>`, as Dovecot's lib-smtp words it."""
    return f"421 {farewell.enhanced} {host} {farewell.text}\r\n".encode()
