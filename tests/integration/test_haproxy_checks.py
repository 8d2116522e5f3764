"""HAProxy takes a stalled `palomar proxy` out of rotation: a SIGSTOPped process still completes
TCP handshakes (the kernel does), so only a check that waits for the greeting can see it. Then
every new client goes to the live proxy."""

from __future__ import annotations

import imaplib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.haproxy import GREETING_CHECKS, Listen, render_haproxy_cfg
from palomar.devcluster.net import wait_until

BOUND = 30.0


@pytest.fixture(scope="module")
def cluster(harness_root: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(harness_root / "haproxy-checks", users_count=2, allow_cleartext=True, password_scheme="PLAIN",
                     auth_failure_delay="100 ms", proxy_settings={"*": ("auth_penalty_max_delay = 0",)})
    c.start()
    yield c
    c.stop()


def test_greeting_checks_render_per_protocol() -> None:
    text = render_haproxy_cfg([Listen("imaps", [("127.0.0.1", 993)], [("127.0.0.10", 20993)],
                                      greeting=GREETING_CHECKS["imaps"])], check_interval="1s", timeout_check="2s")
    assert '  tcp-check expect string "* OK"\n  tcp-check send "a LOGOUT\\r\\n"\n' in text
    assert ("  server imaps-1 127.0.0.10:20993 check inter 1s fall 2 rise 2 check-send-proxy check-ssl verify none "
            "send-proxy-v2") in text
    assert "  option redispatch 1\n" in text and "  timeout check 2s\n" in text


def login(cluster: LocalCluster) -> str:
    user = cluster.users[0]
    imap = imaplib.IMAP4(cluster.lb_host, cluster.lb_imap, timeout=10)
    try:
        return imap.login(user.name, user.password)[0]
    finally:
        imap.logout()


def test_a_stalled_proxy_leaves_the_rotation_and_comes_back(cluster: LocalCluster) -> None:
    assert cluster.haproxy is not None
    stalled = cluster.proxies[0]
    assert stalled.proc is not None
    os.kill(stalled.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "imap/imap-1 is DOWN" in cluster.haproxy.log_text(), BOUND,
                   "HAProxy to take the stalled proxy out")
        for _ in range(6):  # round robin would send every other one to the stalled proxy
            assert login(cluster) == "OK"
    finally:
        os.kill(stalled.proc.pid, signal.SIGCONT)
    wait_until(lambda: "imap/imap-1 is UP" in cluster.haproxy.log_text(), BOUND, "the proxy back in rotation")
    assert login(cluster) == "OK"
