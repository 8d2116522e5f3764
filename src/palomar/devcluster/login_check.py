"""One real login per protocol through HAProxy: what `palomar demo` proves before it says it runs.

Every listener accepting connections says little: a Dovecot whose auth process cannot read
its passdb still greets, then answers every login with `NO [UNAVAILABLE]`. So the demo logs in
as a user over IMAP, POP3, Submission and ManageSieve, and delivers one message over LMTP,
with the stdlib clients a user would try first.
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterable
from email.message import EmailMessage
from pathlib import Path
from typing import BinaryIO, Protocol

TIMEOUT = 20.0
ERROR_LINE = re.compile(r"\b(error|fatal|panic|critical)\b", re.IGNORECASE)


class Ports(Protocol):
    lb_imap: int
    lb_pop3: int
    lb_submission: int
    lb_sieve: int
    lb_lmtp: int


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the demo's certificate is self-signed
    return context


def imap_login(host: str, port: int, user: str, password: str) -> None:
    with imaplib.IMAP4(host, port, timeout=TIMEOUT) as imap:
        imap.starttls(_context())
        imap.login(user, password)
        imap.select("INBOX", readonly=True)
        imap.logout()


def pop3_login(host: str, port: int, user: str, password: str) -> None:
    pop = poplib.POP3(host, port, timeout=TIMEOUT)
    try:
        pop.stls(_context())
        pop.user(user)
        pop.pass_(password)
        pop.stat()
        pop.quit()
    finally:
        pop.close()


def submission_login(host: str, port: int, user: str, password: str) -> None:
    with smtplib.SMTP(host, port, timeout=TIMEOUT) as smtp:
        smtp.starttls(context=_context())
        smtp.login(user, password)


def sieve_login(host: str, port: int, user: str, password: str) -> None:
    """ManageSieve (RFC 5804) has no stdlib client: STARTTLS, AUTHENTICATE PLAIN, LOGOUT."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
        reader = raw.makefile("rb")
        _sieve_ok(reader, "greeting")
        raw.sendall(b"STARTTLS\r\n")
        _sieve_ok(reader, "STARTTLS")
        with _context().wrap_socket(raw, server_hostname=None) as tls:
            reader = tls.makefile("rb")
            _sieve_ok(reader, "capabilities after STARTTLS")
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            tls.sendall(f'AUTHENTICATE "PLAIN" "{token}"\r\n'.encode())
            _sieve_ok(reader, "AUTHENTICATE")
            tls.sendall(b"LOGOUT\r\n")


def _sieve_ok(reader: BinaryIO, what: str) -> None:
    """Read lines up to the response line; raise unless it is OK."""
    while True:
        line = reader.readline(4096)
        if not line:
            raise ConnectionError(f"connection closed before the {what} response")
        text = line.decode(errors="replace").rstrip("\r\n")
        if text.startswith("OK"):
            return
        if text.startswith(("NO", "BYE")):
            raise ConnectionError(f"{what}: {text}")


def lmtp_delivery(host: str, port: int, user: str, _password: str) -> None:
    message = EmailMessage()
    message["From"] = "palomar-demo@example.test"
    message["To"] = user
    message["Subject"] = "palomar demo: delivery check"
    message.set_content("palomar demo delivered this message through HAProxy and LMTP when it started.\n")
    with smtplib.LMTP(host, port, local_hostname="palomar-demo.example.test", timeout=TIMEOUT) as lmtp:
        lmtp.send_message(message)  # raises unless the recipient got 250


Check = Callable[[str, int, str, str], None]
CHECKS: tuple[tuple[str, str, Check], ...] = (
    ("IMAP login", "lb_imap", imap_login),
    ("POP3 login", "lb_pop3", pop3_login),
    ("Submission login", "lb_submission", submission_login),
    ("ManageSieve login", "lb_sieve", sieve_login),
    ("LMTP delivery", "lb_lmtp", lmtp_delivery),
)


def check_logins(ports: Ports, hosts: Iterable[str], user: str, password: str) -> list[str]:
    """One line per protocol and host that failed (empty: every check passed)."""
    failures = []
    for host in hosts:
        for what, attribute, check in CHECKS:
            port = getattr(ports, attribute)
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            try:
                check(host, port, user, password)
            except (OSError, EOFError, imaplib.IMAP4.error, poplib.error_proto, smtplib.SMTPException) as exc:
                failures.append(f"{what} as {user} through HAProxy {where} failed: {_reason(exc)}")
    return failures


def _reason(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "; ".join(f"{rcpt}: {code} {text.decode(errors='replace')}"
                         for rcpt, (code, text) in exc.recipients.items())
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
    text = " ".join(str(arg.decode(errors="replace") if isinstance(arg, bytes) else arg) for arg in exc.args)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def error_lines(logs: Iterable[Path], per_log: int = 5) -> list[str]:
    """The last error lines of each log, prefixed with its path: where a failed check's cause shows."""
    lines = []
    for log in logs:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        found = [line for line in text.splitlines() if ERROR_LINE.search(line)][-per_log:]
        lines += [f"{log}: {line}" for line in found]
    return lines
