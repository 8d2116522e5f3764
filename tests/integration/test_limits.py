"""Connection caps and the auth penalty through the whole cluster: real clients → HAProxy (PROXY v2) →
palomar proxy → backend → Dovecot CE. HAProxy's own address is the same for every connection, so these
tests also show the caps apply to the client's address from the PROXY header."""

from __future__ import annotations

import imaplib
import socket
from pathlib import Path

import pytest
from harness.clients import IMAP4From, tls_context

from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.net import wait_until

FLOODER = "127.0.0.50"
CAP = 50


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(harness_root / "limits-cluster", proxies_count=1, auth_failure_delay="100 ms",
                     proxy_settings={"*": (f"login_max_ip_connections = {CAP}", "auth_penalty_max_delay = 1 secs")})
    c.start()
    yield c
    c.stop()


def _first_line(cluster: LocalCluster, source: str) -> tuple[bytes, socket.socket]:
    sock = socket.create_connection((cluster.lb_host, cluster.lb_imap), 10, source_address=(source, 0))
    return sock.makefile("rb").readline(), sock


def test_an_idle_flood_from_one_address_does_not_stop_another_from_logging_in(cluster: LocalCluster) -> None:
    held: list[socket.socket] = []
    try:
        lines = []
        for _ in range(400):
            line, sock = _first_line(cluster, FLOODER)
            lines.append(line)
            held.append(sock)
        greeted = [line for line in lines if line.startswith(b"* OK ")]
        assert len(greeted) == CAP
        refused = b"* BYE Maximum number of connections from IP exceeded (login_max_ip_connections=50)\r\n"
        assert lines.count(refused) == 400 - CAP
        imap = IMAP4From(cluster.lb_host, cluster.lb_imap, source="127.0.0.51")
        imap.starttls(ssl_context=tls_context())
        assert imap.login("user1@example.test", "password1")[0] == "OK"
        imap.logout()
        proxy = cluster.proxies[0]
        # one line for the first refusal, the rest wait for the summary: never a line per connection
        wait_until(lambda: "login_max_ip_connections" in proxy.log_path.read_text(), 10, "the refusal log line")
        assert proxy.log_path.read_text().count("refused ") <= 3
    finally:
        for sock in held:
            sock.close()


def test_the_connection_is_closed_after_three_failures(cluster: LocalCluster) -> None:
    imap = IMAP4From(cluster.lb_host, cluster.lb_imap, source="127.0.0.52")
    imap.starttls(ssl_context=tls_context())
    for i in range(3):
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login("user2@example.test", f"wrong{i}")
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        imap.login("user2@example.test", "password2")
