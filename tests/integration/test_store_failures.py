"""A GeoDB that fails during a login or a delivery: the client gets its protocol's temporary
failure, the failure is logged once, and the same listener goes on serving (no descriptor is
closed under a live transport, so the next connection on that number works).

In-process proxy and backend (tests/inprocess_cluster.py) over real loopback sockets and a real
SQLite GeoDB whose engine raises on demand; the backend logs users in to a real Dovecot CE.
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import logging
import poplib
import smtplib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from inprocess_cluster import PASSWORD, USERS, InProcessCluster, connect, read_until, start_cluster
from palomar.devcluster.dovecot import DovecotInstance


@pytest.fixture
async def cluster(tmp_path: Path, dovecot_backends: dict[str, DovecotInstance]) -> AsyncIterator[InProcessCluster]:
    dovecot = dovecot_backends["backend1"]
    c = await start_cluster(tmp_path / "inprocess", backend_host=dovecot.params.listen, dovecot=dovecot)
    yield c
    await c.stop()


@pytest.fixture
def fresh_user() -> Callable[[], str]:
    """Users this test's LocalDB cache has never seen, so routing must ask the GeoDB."""
    return iter(USERS).__next__


# --------------------------------------------------------------------------- one login per protocol
# Each returns "OK" after a login and a command on the backend, or the server's refusal.


def imap_login(address: tuple[str, int], user: str) -> str:
    imap = imaplib.IMAP4(*address, timeout=10)
    try:
        imap.login(user, PASSWORD)
    except imaplib.IMAP4.error as exc:
        imap.logout()
        return str(exc)
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()
    return "OK"


def pop3_login(address: tuple[str, int], user: str) -> str:
    pop = poplib.POP3(*address, timeout=10)
    pop.user(user)
    try:
        pop.pass_(PASSWORD)
    except poplib.error_proto as exc:
        pop.quit()
        return str(exc)
    pop.stat()
    pop.quit()
    return "OK"


def submission_login(address: tuple[str, int], user: str) -> str:
    smtp = smtplib.SMTP(*address, timeout=10)
    smtp.ehlo("client.example.test")
    code, text = smtp.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode())
    if code != 235:
        smtp.quit()
        return f"{code} {text.decode()}"
    assert smtp.noop()[0] == 250
    smtp.quit()
    return "OK"


def sieve_login(address: tuple[str, int], user: str) -> str:
    with connect(address) as sock:
        assert b"\r\nOK" in read_until(sock, b"\r\nOK")
        plain = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        sock.sendall(f'AUTHENTICATE "PLAIN" "{plain}"\r\n'.encode())
        reply = read_until(sock, b"\r\n").decode().strip()
        if not reply.startswith("OK"):
            return reply
        sock.sendall(b"LOGOUT\r\n")
        assert read_until(sock, b"\r\n").startswith(b"OK")
        return "OK"


LOGINS: dict[str, tuple[Callable[[tuple[str, int], str], str], str]] = {
    "imap": (imap_login, "[UNAVAILABLE] Account is temporarily unavailable."),
    "pop3": (pop3_login, "-ERR [SYS/TEMP] Account is temporarily unavailable."),
    "submission": (submission_login, "454 4.7.0 Account is temporarily unavailable."),
    "sieve": (sieve_login, 'NO (TRYLATER) "Account is temporarily unavailable."'),
}


def store_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "store unavailable" in r.getMessage()]


def assert_no_errors(caplog: pytest.LogCaptureFixture) -> None:
    """No traceback, no descriptor confusion, nothing at ERROR level (a store outage is a warning)."""
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info
           or "used by transport" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize("side", ["proxy", "backend"])
@pytest.mark.parametrize("protocol", list(LOGINS))
async def test_failing_geodb_gives_a_temporary_failure_and_the_listener_keeps_serving(
        cluster: InProcessCluster, caplog: pytest.LogCaptureFixture, fresh_user: Callable[[], str], protocol: str,
        side: str) -> None:
    caplog.set_level(logging.INFO, logger="palomar")
    login, temp_failure = LOGINS[protocol]
    address = cluster.listeners[protocol]
    engine = cluster.proxy_engine if side == "proxy" else cluster.backend_engine
    engine.failing = True
    assert temp_failure in await asyncio.to_thread(login, address, fresh_user())
    assert engine.failed_calls >= 1
    lines = store_lines(caplog)
    assert len(lines) == 1 and "injected fault" in lines[0].getMessage() and lines[0].exc_info is None
    engine.failing = False
    for _ in range(3):  # several connections, so a reused descriptor number would show
        assert await asyncio.to_thread(login, address, fresh_user()) == "OK"
    assert_no_errors(caplog)


def lmtp_rcpt(address: tuple[str, int], user: str, subject: str | None) -> tuple[int, str]:
    """One transaction for `user`: the RCPT reply, and the DATA reply when RCPT was accepted and
    `subject` is given."""
    lmtp = smtplib.LMTP(*address, timeout=10)
    try:
        lmtp.ehlo_or_helo_if_needed()
        assert lmtp.mail("sender@example.org")[0] == 250
        code, text = lmtp.rcpt(user)
        if code != 250 or subject is None:
            return code, text.decode()
        lmtp.putcmd("data")
        assert lmtp.getreply()[0] == 354
        lmtp.send(f"Subject: {subject}\r\n\r\nbody\r\n.\r\n".encode())
        code, text = lmtp.getreply()
        return code, text.decode()
    finally:
        lmtp.quit()


def count_subject(address: tuple[str, int], user: str, subject: str) -> int:
    imap = imaplib.IMAP4(*address, timeout=10)
    imap.login(user, PASSWORD)
    imap.select("INBOX")
    _, data = imap.search(None, "SUBJECT", f'"{subject}"')
    imap.logout()
    return len(data[0].split())


@pytest.mark.parametrize("side", ["proxy", "backend"])
async def test_failing_geodb_during_lmtp_gives_451_4_4_3_and_delivery_goes_on(
        cluster: InProcessCluster, caplog: pytest.LogCaptureFixture, fresh_user: Callable[[], str], side: str) -> None:
    caplog.set_level(logging.INFO, logger="palomar")
    address = cluster.listeners["lmtp"]
    user = fresh_user()
    if side == "backend":  # the proxy must have routed the user before, so only the backend asks the GeoDB
        assert (await asyncio.to_thread(lmtp_rcpt, address, user, None))[0] == 250
    engine = cluster.proxy_engine if side == "proxy" else cluster.backend_engine
    engine.failing = True
    code, text = await asyncio.to_thread(lmtp_rcpt, address, user, None)
    assert (code, text) == (451, f"4.4.3 <{user}> Temporary routing failure")
    assert len(store_lines(caplog)) == 1
    engine.failing = False
    subject = f"after the outage {uuid.uuid4().hex}"
    code, text = await asyncio.to_thread(lmtp_rcpt, address, user, subject)
    assert code == 250, text
    assert await asyncio.to_thread(count_subject, cluster.listeners["imap"], user, subject) == 1
    assert_no_errors(caplog)
