"""The proxy's session boundaries in-process, without a mail store behind them: real loopback
listeners, a real SQLite GeoDB with a fault switch (tests/inprocess_cluster.py)."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from inprocess_cluster import (
    PASSWORD,
    USERS,
    InProcessCluster,
    connect,
    read_to_end,
    read_until,
    start_cluster,
)
from palomar.proxy.failures import WORDING, login_failure
from palomar.proxy.login import AuthFailed, NoLogin, TempFailed


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[InProcessCluster]:
    c = await start_cluster(tmp_path / "inprocess", backend_host="127.0.0.1")
    yield c
    await c.stop()


@pytest.mark.parametrize(("protocol", "outcome", "reply"), [
    ("imap", TempFailed("x", "y"), "NO [UNAVAILABLE] Account is temporarily unavailable."),
    ("pop3", TempFailed("x", "y"), "-ERR [SYS/TEMP] Account is temporarily unavailable."),
    ("submission", TempFailed("x", "y"), "454 4.7.0 Account is temporarily unavailable."),
    ("sieve", TempFailed("x", "y"), 'NO (TRYLATER) "Account is temporarily unavailable."'),
    ("imap", AuthFailed(), "NO [AUTHENTICATIONFAILED] Authentication failed."),
    ("pop3", NoLogin("Gone\r\nfishing."), "-ERR [AUTH] Gone fishing."),
    ("submission", NoLogin("Gone fishing."), "535 5.7.8 Gone fishing."),
    ("sieve", NoLogin("Gone fishing."), 'NO "Gone fishing."'),
])
def test_login_failure_wording(protocol: str, outcome, reply: str) -> None:
    assert login_failure(protocol, outcome) == reply


def exchange(address: tuple[str, int], commands: bytes) -> bytes:
    """Past the greeting line, send `commands`, read until the server closes."""
    with connect(address) as sock:
        read_until(sock, b"\r\n")
        sock.sendall(commands)
        return read_to_end(sock)


async def test_imap_store_outage_answers_and_the_session_and_listener_go_on(
        cluster: InProcessCluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="palomar")
    cluster.proxy_engine.failing = True
    out = await asyncio.to_thread(exchange, cluster.listeners["imap"],
                                  f"a LOGIN {USERS[0]} {PASSWORD}\r\nb LOGIN {USERS[1]} {PASSWORD}\r\n"
                                  "c LOGOUT\r\n".encode())
    assert b"a NO [UNAVAILABLE] Account is temporarily unavailable.\r\n" in out
    assert b"b NO [UNAVAILABLE] Account is temporarily unavailable.\r\n" in out
    assert b"c OK" in out  # the same session went on
    store = [r for r in caplog.records if "store unavailable" in r.getMessage()]
    assert len(store) == 2 and not any(r.exc_info for r in caplog.records)  # one line per failed login
    out = await asyncio.to_thread(exchange, cluster.listeners["imap"], b"a CAPABILITY\r\nb LOGOUT\r\n")
    assert b"a OK" in out and b"b OK" in out


async def test_a_bug_in_the_login_path_is_a_temporary_failure_with_one_traceback(
        cluster: InProcessCluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(cluster.proxy.router, "route", broken)
    out = await asyncio.to_thread(exchange, cluster.listeners["imap"],
                                  f"a LOGIN {USERS[0]} {PASSWORD}\r\nb LOGOUT\r\n".encode())
    assert b"a NO [UNAVAILABLE]" in out and b"b OK" in out
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "internal error" in tracebacks[0].getMessage()


async def test_a_bug_outside_the_login_ends_the_session_with_the_protocols_bye(
        cluster: InProcessCluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from palomar.protocols import pop3

    def broken(self, data):
        raise ValueError("a bug in the core")

    monkeypatch.setattr(pop3.Pop3LoginServer, "receive", broken)
    out = await asyncio.to_thread(exchange, cluster.listeners["pop3"], b"CAPA\r\n")
    assert out == WORDING["pop3"].internal_bye("proxy.test")
    assert len([r for r in caplog.records if r.exc_info]) == 1
    monkeypatch.undo()
    out = await asyncio.to_thread(exchange, cluster.listeners["pop3"], b"QUIT\r\n")  # the listener goes on
    assert out.startswith(b"+OK")


def lmtp_rcpt(address: tuple[str, int], user: str) -> tuple[int, bytes]:
    lmtp = smtplib.LMTP(*address, timeout=10)
    try:
        lmtp.ehlo_or_helo_if_needed()
        lmtp.mail("mta@example.org")
        return lmtp.rcpt(user)
    finally:
        lmtp.quit()


async def test_lmtp_routing_store_outage_is_451_4_4_3_per_recipient(
        cluster: InProcessCluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="palomar")
    cluster.proxy_engine.failing = True
    code, text = await asyncio.to_thread(lmtp_rcpt, cluster.listeners["lmtp"], USERS[0])
    assert (code, text) == (451, f"4.4.3 <{USERS[0]}> Temporary routing failure".encode())
    assert len([r for r in caplog.records if "store unavailable" in r.getMessage()]) == 1
