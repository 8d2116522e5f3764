"""The line that ends a session when the server stops, per hop protocol, in one table.

Worded as Dovecot CE words it (`MASTER_SERVICE_SHUTTING_DOWN_MSG`). It is protocol wording, not
proxy policy: the proxy's relays and front ends and the backend's relays and LMTP gateway all
send it, so it lives with the protocol cores where both services can use it without one
depending on the other.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

SHUTTING_DOWN = "Server shutting down"


def _smtp_shutdown(host: str) -> bytes:
    # The SMTP family names the host in its closing replies.
    return f"421 4.3.2 {host} {SHUTTING_DOWN}\r\n".encode()


SHUTDOWN: dict[str, Callable[[str], bytes]] = {
    "imap": lambda host: f"* BYE {SHUTTING_DOWN}.\r\n".encode(),
    "pop3": lambda host: f"-ERR [SYS/TEMP] {SHUTTING_DOWN}.\r\n".encode(),
    "submission": _smtp_shutdown,
    "lmtp": _smtp_shutdown,
    "sieve": lambda host: f'BYE "{SHUTTING_DOWN}."\r\n'.encode(),
}
"""Protocol -> the shutdown line for a host name."""


@cache  # one bytes object per protocol and host, shared by every relayed session
def shutdown_line(protocol: str, hostname: str) -> bytes:
    """The shutdown line of a hop protocol (imap, pop3, submission, lmtp, sieve); b"" for others (doveadm)."""
    line = SHUTDOWN.get(protocol)
    return line(hostname) if line is not None else b""
