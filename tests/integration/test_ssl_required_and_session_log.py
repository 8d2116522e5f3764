"""`ssl = required` on every login protocol, and what an operator reads in the proxy's log.

One cluster, two proxies: proxy1 allows cleartext logins (auth_allow_cleartext = yes), proxy2
has the same setting plus `ssl = required`, which (as in Dovecot 2.3) takes no password
without TLS whatever auth_allow_cleartext says. Real clients talk to the proxies' own
listeners.
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import re
import smtplib
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from harness.clients import tls_context

from palomar.devcluster.cluster import LocalCluster, ProxyNode
from palomar.devcluster.net import wait_until


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(harness_root / "ssl-required-cluster", proxies_count=2, allow_cleartext=True,
                     auth_failure_delay="100 ms", proxy_settings={"proxy2": ("ssl = required",)})
    c.start()
    yield c
    c.stop()


def proxy(cluster: LocalCluster, name: str) -> ProxyNode:
    return next(p for p in cluster.proxies if p.name == name)


# --- ssl = required --------------------------------------------------------------------------------


def test_imap_takes_no_password_before_starttls(cluster: LocalCluster) -> None:
    user = cluster.users[0]
    allowed = proxy(cluster, "proxy1")
    with imaplib.IMAP4(allowed.host, allowed.imap) as control:  # the same setting without ssl = required
        assert control.login(user.name, user.password)[0] == "OK"
    node = proxy(cluster, "proxy2")
    with imaplib.IMAP4(node.host, node.imap) as imap:
        assert "LOGINDISABLED" in imap.capabilities and "AUTH=PLAIN" not in imap.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            imap.login(user.name, user.password)
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            imap.authenticate("PLAIN", lambda _: f"\0{user.name}\0{user.password}".encode())
        imap.starttls(tls_context())
        assert imap.login(user.name, user.password)[0] == "OK"
    with imaplib.IMAP4_SSL(node.host, node.imaps, ssl_context=tls_context()) as imaps:
        assert imaps.login(user.name, user.password)[0] == "OK"


def test_pop3_takes_no_password_before_stls(cluster: LocalCluster) -> None:
    user = cluster.users[1]
    node = proxy(cluster, "proxy2")
    pop = poplib.POP3(node.host, node.pop3, timeout=10)
    try:
        assert pop.capa()["SASL"] == []  # no mechanism offered (Dovecot's bare `SASL` line)
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Plaintext authentication disallowed"):
            pop.user(user.name)
            pop.pass_(user.password)
        pop.stls(tls_context())
        pop.user(user.name)
        assert pop.pass_(user.password).startswith(b"+OK")
    finally:
        pop.quit()


def test_submission_offers_no_auth_before_starttls(cluster: LocalCluster) -> None:
    user = cluster.users[2]
    node = proxy(cluster, "proxy2")
    with smtplib.SMTP(node.host, node.submission, timeout=10) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        code, _ = smtp.docmd("AUTH", "PLAIN " + _plain_b64(user.name, user.password))
        assert code == 538
        smtp.starttls(context=tls_context())
        smtp.ehlo()
        assert smtp.login(user.name, user.password)[0] == 235


def test_managesieve_takes_no_password_before_starttls(cluster: LocalCluster) -> None:
    user = cluster.users[3]
    node = proxy(cluster, "proxy2")
    with socket.create_connection((node.host, node.sieve), timeout=10) as sock:
        greeting = _sieve_reply(sock)
        assert '"STARTTLS"' in greeting and '"SASL" ""' in greeting
        sock.sendall(f'AUTHENTICATE "PLAIN" "{_plain_b64(user.name, user.password)}"\r\n'.encode())
        assert _sieve_reply(sock).startswith("NO")
    result = subprocess.run(["sieve-connect", "--nosslverify", "-s", node.host, "-p", str(node.sieve),
                             "-u", user.name, "--passwordfd", "0", "--list"], input=user.password,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr  # sieve-connect does STARTTLS first


def _plain_b64(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _sieve_reply(sock: socket.socket) -> str:
    """Lines up to and including the first OK/NO/BYE line."""
    data = b""
    while not re.search(rb"(^|\r\n)(OK|NO|BYE)[^\r\n]*\r\n$", data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode()


# --- the session log -------------------------------------------------------------------------------

NOISE = re.compile(r"passdb |unknown user|password mismatch|TLS handshake|refused: $")


def test_the_proxy_log_has_one_line_per_session_with_its_reason_and_no_noise(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    user = cluster.users[4]
    start = len(node.log_path.read_text())
    # What a load balancer's TCP health check does to a TLS listener: connect and leave.
    for port in (node.imaps, node.pop3s, node.submissions):
        socket.create_connection((node.host, port), timeout=10).close()
    with imaplib.IMAP4(node.host, node.imap) as imap:
        imap.login(user.name, user.password)
        imap.select("INBOX")
    with imaplib.IMAP4_SSL(node.host, node.imaps, ssl_context=tls_context()) as imaps, \
            pytest.raises(imaplib.IMAP4.error):
        imaps.login(user.name, "wrong")
    pop = poplib.POP3(node.host, node.pop3, timeout=10)
    pop.user(user.name)
    pop.pass_(user.password)
    pop.quit()
    with smtplib.SMTP(node.host, node.submission, timeout=10) as smtp:
        smtp.starttls(context=tls_context())
        smtp.login(user.name, user.password)
    subject = uuid.uuid4().hex
    with smtplib.LMTP(node.host, node.lmtp) as lmtp:
        lmtp.sendmail("a@example.test", [user.name], f"Subject: {subject}\r\n\r\nhi\r\n")
    subprocess.run(["sieve-connect", "--nosslverify", "-s", node.host, "-p", str(node.sieve), "-u", user.name,
                    "--passwordfd", "0", "--list"], input=user.password, capture_output=True, text=True,
                   timeout=60, check=True)

    def new_lines() -> list[str]:
        return node.log_path.read_text()[start:].splitlines()

    def sessions() -> list[str]:
        return [line for line in new_lines() if " palomar.session: " in line]

    wait_until(lambda: len(sessions()) >= 5, 15, "five session lines")  # imap x2, pop3, submission, sieve
    ids = [re.search(r"session=(\S+)", line).group(1) for line in sessions()]  # type: ignore[union-attr]
    assert len(ids) == len(set(ids)) == 5
    assert sorted(re.search(r"proto=(\S+)", line).group(1) for line in sessions()) == [  # type: ignore[union-attr]
        "imap", "imap", "pop3", "sieve", "submission"]
    [failed] = [line for line in sessions() if "result=" in line]
    assert "result=AuthFailed reason=password mismatch" in failed
    assert sum("event=smtp_server_transaction_rcpt_finished" in line for line in new_lines()) == 1
    # the reason is in the session's line, nowhere else
    assert [line for line in new_lines() if NOISE.search(line) and line not in sessions()] == []
    assert [line for line in new_lines() if " INFO " not in line] == []
