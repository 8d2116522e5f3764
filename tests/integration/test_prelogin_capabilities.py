"""The proxy's pre-login IMAP CAPABILITY, Submission EHLO and ManageSieve greeting follow the
backends' real Dovecot (docs/compatibility.md), not constants.

The two backends' Dovecot are configured apart from Dovecot's defaults, and differ from each
other: the proxies must offer what both offer (the intersection), and say once that they differ.
proxy2 adds its own settings on top (`imap_capability = +...`, `managesieve_sieve_capability`,
`submission_backend_capabilities`).
"""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest
from harness.clients import IMAP4From

from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.net import wait_until

CLIENT = "127.0.0.50"
SHARED = (
    ("submission_backend_capabilities", "8BITMIME DSN"),
    ("managesieve_notify_capability", "mailto xmpp"),
)


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(
        harness_root / "caps-cluster", proxies_count=2, allow_cleartext=True,
        backend_dovecot_settings={
            "*": SHARED,
            "backend1": (("imap_capability", "+XPALOMAR-TEST XPALOMAR-ONLY-ONE"),
                         ("submission_max_mail_size", "40M"),
                         ("managesieve_sieve_capability", "fileinto reject envelope vacation body")),
            "backend2": (("imap_capability", "+XPALOMAR-TEST"),
                         ("submission_max_mail_size", "20M"),
                         ("managesieve_sieve_capability", "fileinto reject envelope vacation")),
        },
        proxy_settings={"proxy2": ("imap_capability = +XPROXY-OWN",
                                   "managesieve_sieve_capability = fileinto vacation",
                                   "submission_backend_capabilities = 8BITMIME")},
    )
    c.start()
    for node in c.proxies:
        wait_until(lambda node=node: "pre-login capabilities from 2 backend(s)" in node.log_path.read_text(), 30.0,
                   f"{node.name} learnt both backends' capabilities")
    yield c
    c.stop()


def proxy(cluster: LocalCluster, name: str):
    return next(p for p in cluster.proxies if p.name == name)


def sieve_greeting(host: str, port: int) -> list[bytes]:
    with socket.create_connection((host, port), timeout=10, source_address=(CLIENT, 0)) as sock:
        stream = sock.makefile("rb")
        lines = []
        while not lines or not lines[-1].startswith(b"OK"):
            lines.append(stream.readline().rstrip(b"\r\n"))
    return lines


def test_imap_capability_is_what_every_backend_offers(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    imap = IMAP4From(node.host, node.imap, source=CLIENT)
    typ, data = imap.capability()
    imap.logout()
    assert typ == "OK"
    assert data[0].split() == [b"IMAP4rev1", b"SASL-IR", b"LOGIN-REFERRALS", b"ID", b"ENABLE", b"IDLE",
                               b"XPALOMAR-TEST", b"LITERAL+", b"STARTTLS", b"AUTH=PLAIN", b"AUTH=LOGIN"]


def test_imap_capability_setting_adds_to_the_learnt_list(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy2")
    imap = IMAP4From(node.host, node.imap, source=CLIENT)
    caps = set(imap.capabilities)
    imap.logout()
    assert {"XPALOMAR-TEST", "XPROXY-OWN", "IDLE", "STARTTLS"} <= caps
    assert "XPALOMAR-ONLY-ONE" not in caps


def test_submission_ehlo_follows_the_backends(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    with smtplib.SMTP(node.host, node.submission, source_address=(CLIENT, 0), timeout=10) as smtp:
        code, text = smtp.ehlo("client.example.test")
    assert code == 250
    assert text.split(b"\n")[1:] == [b"8BITMIME", b"AUTH PLAIN LOGIN", b"BURL imap", b"CHUNKING", b"DSN",
                                     b"ENHANCEDSTATUSCODES", b"SIZE 20971520", b"STARTTLS", b"PIPELINING"]


def test_submission_backend_capabilities_on_the_proxy_overrides(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy2")
    with smtplib.SMTP(node.host, node.submission, source_address=(CLIENT, 0), timeout=10) as smtp:
        smtp.ehlo("client.example.test")
        assert smtp.has_extn("8bitmime") and not smtp.has_extn("dsn")
        assert smtp.esmtp_features["size"] == "20971520"


def test_sieve_greeting_follows_the_backends(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    lines = sieve_greeting(node.host, node.sieve)
    assert b'"SIEVE" "fileinto reject envelope vacation"' in lines
    assert b'"NOTIFY" "mailto xmpp"' in lines
    assert lines[0] == b'"IMPLEMENTATION" "palomar"'


def test_sieve_capability_setting_on_the_proxy_overrides(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy2")
    assert b'"SIEVE" "fileinto vacation"' in sieve_greeting(node.host, node.sieve)


def test_disagreement_is_logged_once_and_a_login_still_works(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    log_text = node.log_path.read_text()
    assert log_text.count("backends disagree on their pre-login capabilities") == 1
    assert "XPALOMAR-ONLY-ONE" in log_text and "sieve:body" in log_text and "SIZE 41943040" in log_text
    user = cluster.users[0]
    imap = IMAP4From(node.host, node.imap, source=CLIENT)
    assert imap.login(user.name, user.password)[0] == "OK"
    typ, data = imap.capability()  # post-login: the backend's own list
    assert typ == "OK" and b"XPALOMAR-TEST" in data[0].split()
    imap.logout()


def test_logins_ask_the_backends_nothing_more(cluster: LocalCluster) -> None:
    """The lists are cached: sessions never cause a capability query (one per backend and proxy at start)."""

    def queries() -> int:
        return sum(b.log_path.read_text().count("cmd=capabilities") for b in cluster.backends)

    before = queries()
    assert before >= len(cluster.proxies) * len(cluster.backends)
    node = proxy(cluster, "proxy1")
    for user in cluster.users[:10]:
        imap = IMAP4From(node.host, node.imap, source=CLIENT)
        imap.login(user.name, user.password)
        imap.logout()
        with smtplib.SMTP(node.host, node.submission, source_address=(CLIENT, 0), timeout=10) as smtp:
            smtp.ehlo("client.example.test")
        sieve_greeting(node.host, node.sieve)
    assert queries() == before
