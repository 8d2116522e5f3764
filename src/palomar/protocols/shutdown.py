"""What each protocol tells a client when the server shuts down, worded as Dovecot CE words it
(`MASTER_SERVICE_SHUTTING_DOWN_MSG`, "Server shutting down": imap's `* BYE`, pop3's
`-ERR [SYS/TEMP]`, the SMTP server's 421 with enhanced code 4.3.2 and the host name first,
ManageSieve's `BYE`)."""

from __future__ import annotations

from functools import cache

SHUTTING_DOWN = "Server shutting down"


@cache  # one bytes object per protocol, shared by every relayed session
def shutdown_line(protocol: str, hostname: str) -> bytes:
    """The line for `protocol` (a hop protocol name: imap, pop3, submission, lmtp, sieve); b"" if none."""
    if protocol == "imap":
        return f"* BYE {SHUTTING_DOWN}.\r\n".encode()
    if protocol == "pop3":
        return f"-ERR [SYS/TEMP] {SHUTTING_DOWN}.\r\n".encode()
    if protocol in ("submission", "lmtp"):
        return f"421 4.3.2 {hostname} {SHUTTING_DOWN}\r\n".encode()
    if protocol == "sieve":
        return f'BYE "{SHUTTING_DOWN}."\r\n'.encode()
    return b""
