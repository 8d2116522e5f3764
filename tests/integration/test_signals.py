"""Signals on real `palomar proxy`, `palomar backend` and `palomar controller` processes: SIGHUP
reopens the log file (logrotate) and the process keeps serving; SIGTERM lets a login in
progress finish, ends relayed sessions with the protocol's shutdown line, and exits 0."""

from __future__ import annotations

import imaplib
import re
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from harness.clients import IMAP4From, backend_of

from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.net import wait_until
from palomar.net.drain import LOGIN_GRACE

FAILURE_DELAY = 3.0
"""Long enough that SIGTERM lands while the proxy still holds the failed login's answer."""
EXIT_BOUND = LOGIN_GRACE + 10
IMAP_BYE = b"* BYE Server shutting down.\r\n"


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(harness_root / "signals-cluster", auth_failure_delay=f"{int(FAILURE_DELAY)} secs",
                     allow_cleartext=True, users_count=4, proxies_count=1, controller=True)
    c.start()
    yield c
    c.stop()


def rotate_and_hup(proc: subprocess.Popen[bytes], log: Path) -> Path:
    """What logrotate does: rename the log, send SIGHUP; the process must write a new file."""
    rotated = log.with_suffix(".log.1")
    log.rename(rotated)
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: log.exists() and "reload (SIGHUP)" in log.read_text(), 15, f"a new {log.name} after SIGHUP")
    assert proc.poll() is None
    return rotated


def imap_login(cluster: LocalCluster, number: int) -> imaplib.IMAP4:
    user = cluster.users[number]
    imap = IMAP4From(cluster.proxies[0].host, cluster.proxies[0].imap, timeout=30)
    imap.login(user.name, user.password)
    return imap


def test_sighup_reopens_the_proxy_log_and_the_proxy_keeps_serving(cluster: LocalCluster) -> None:
    node = cluster.proxies[0]
    assert node.proc is not None
    rotated = rotate_and_hup(node.proc, node.log_path)
    assert "TLS certificate" in node.log_path.read_text()  # the listeners' certificate was reloaded too
    imap = imap_login(cluster, 0)
    imap.logout()
    user = cluster.users[0].name
    wait_until(lambda: f"user={user}" in node.log_path.read_text(), 15, "the session's line in the new log")
    assert f"user={user}" not in rotated.read_text()


def test_sighup_reopens_the_backend_and_controller_logs(cluster: LocalCluster) -> None:
    for node in cluster.backends:
        assert node.proc is not None
        rotate_and_hup(node.proc, node.log_path)
    assert cluster.controller_proc is not None
    rotate_and_hup(cluster.controller_proc, cluster.root / "controller" / "palomar.log")
    imap = imap_login(cluster, 1)  # the backends still serve
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()


def auth_failures(node) -> float:
    """The proxy's count of failed passdb authentications (Dovecot's name: dovecot_auth_failures_total)."""
    text = urllib.request.urlopen(f"http://{node.host}:{node.metrics}/metrics", timeout=10).read().decode()
    match = re.search(r"^dovecot_auth_failures_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_sigterm_on_the_proxy_finishes_a_login_then_says_bye_to_idle_sessions_and_exits_0(
        cluster: LocalCluster) -> None:
    node = cluster.proxies[0]
    assert node.proc is not None
    idle = imap_login(cluster, 2)
    idle.send(b"i1 IDLE\r\n")
    assert idle.readline().startswith(b"+ ")
    waiting = socket.create_connection((node.host, node.imap), timeout=30)  # has not logged in yet
    assert waiting.recv(4096).startswith(b"* OK")
    login = socket.create_connection((node.host, node.imap), timeout=30)
    assert login.recv(4096).startswith(b"* OK")
    user = cluster.users[3].name
    failures_before = auth_failures(node)
    login.sendall(f'l1 LOGIN "{user}" "wrong"\r\n'.encode())
    # counted when the passdb answers, before the failure delay: the login is in progress
    wait_until(lambda: auth_failures(node) > failures_before, 15, "the login to be in progress")

    node.proc.send_signal(signal.SIGTERM)

    login_replies = read_until_closed(login)
    assert login_replies.startswith(b"l1 NO [AUTHENTICATIONFAILED]")  # the login in progress got its answer
    assert login_replies.endswith(IMAP_BYE)
    assert read_until_closed(waiting) == IMAP_BYE
    idle_rest = read_until_closed(idle.sock)
    assert idle_rest == IMAP_BYE
    assert node.proc.wait(EXIT_BOUND) == 0
    text = node.log_path.read_text()
    assert "stopping on SIGTERM" in text and "1 relayed session(s) closed" in text and "proxy stopped" in text
    cluster.restart_proxy(node)


def test_sigterm_on_a_backend_says_bye_through_the_proxy_and_exits_0(cluster: LocalCluster) -> None:
    imap = imap_login(cluster, 0)
    imap.send(b"i1 IDLE\r\n")
    assert imap.readline().startswith(b"+ ")
    host = backend_of(cluster, cluster.users[0].name)
    node = next(b for b in cluster.backends if b.host == host)
    assert node.proc is not None

    node.proc.send_signal(signal.SIGTERM)

    assert read_until_closed(imap.sock) == IMAP_BYE
    assert node.proc.wait(EXIT_BOUND) == 0
    assert "backend stopped" in node.log_path.read_text()
    cluster.restart_backend(node)


def test_sigterm_on_the_controller_exits_0(cluster: LocalCluster) -> None:
    proc = cluster.controller_proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(EXIT_BOUND) == 0
    assert "controller_stopped" in (cluster.root / "controller" / "palomar.log").read_text()
