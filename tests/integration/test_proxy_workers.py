"""A `palomar proxy` with two worker processes (service imap-login { process_limit = 2 }): logins are
served by both, a killed worker is replaced while the other keeps serving, `/metrics` adds the workers
up, and SIGTERM drains every worker before the parent exits 0."""

from __future__ import annotations

import imaplib
import os
import re
import signal
import socket
import urllib.request
from pathlib import Path

import pytest
from harness.clients import IMAP4From

from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.net import wait_until
from palomar.net.drain import LOGIN_GRACE

EXIT_BOUND = LOGIN_GRACE + 20
WORKERS = 2


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(harness_root / "workers-cluster", allow_cleartext=True, users_count=4, proxies_count=1,
                     backends_count=1, password_scheme="PLAIN", auth_failure_delay="100 ms",
                     proxy_settings={"*": ("service imap-login {", f"  process_limit = {WORKERS}", "}",
                                           "auth_penalty_max_delay = 1 secs")})
    c.start()
    yield c
    c.stop()


def log_text(log: Path) -> str:
    """The proxy's log, with the part a rotation (the SIGHUP test) moved aside."""
    rotated = log.with_suffix(".log.1")
    return (rotated.read_text() if rotated.exists() else "") + (log.read_text() if log.exists() else "")


def started_workers(log: Path) -> dict[int, int]:
    """worker index -> pid of its latest start, from the parent's log lines."""
    found: dict[int, int] = {}
    for match in re.finditer(r"worker (\d+) started, pid (\d+)", log_text(log)):
        found[int(match.group(1))] = int(match.group(2))
    return found


def serving_pids(log: Path) -> set[int]:
    """Processes that wrote `proxy started` (the workers, once their listeners run)."""
    return {int(pid) for pid in re.findall(r"proxy\[(\d+)\] INFO palomar\.proxy: proxy started", log_text(log))}


def session_pids(log: Path) -> set[int]:
    """Processes that logged a finished IMAP session."""
    return {int(pid) for pid in re.findall(r"proxy\[(\d+)\] INFO \S+: session=\S+ proto=imap user=", log_text(log))}


def wait_serving(cluster: LocalCluster) -> dict[int, int]:
    log = cluster.proxies[0].log_path
    wait_until(lambda: len(started_workers(log)) == WORKERS
               and set(started_workers(log).values()) <= serving_pids(log), 30, "both workers serving")
    return started_workers(log)


def login_logout(cluster: LocalCluster, number: int) -> None:
    user = cluster.users[number]
    imap = IMAP4From(cluster.proxies[0].host, cluster.proxies[0].imap, timeout=30)
    imap.login(user.name, user.password)
    imap.select("INBOX")
    imap.logout()


def metrics(cluster: LocalCluster) -> str:
    node = cluster.proxies[0]
    return urllib.request.urlopen(f"http://{node.host}:{node.metrics}/metrics", timeout=10).read().decode()


def test_logins_land_on_both_workers_and_metrics_add_up(cluster: LocalCluster) -> None:
    pids = wait_serving(cluster)
    log = cluster.proxies[0].log_path
    # several sessions open at once, so both workers accept some of them (the kernel wakes both)
    sessions = []
    for attempt in range(60):
        user = cluster.users[attempt % 4]
        imap = IMAP4From(cluster.proxies[0].host, cluster.proxies[0].imap, timeout=30)
        imap.login(user.name, user.password)
        sessions.append(imap)
        if len(sessions) == 10:
            for open_one in sessions:
                open_one.logout()
            sessions = []
            wait_until(lambda: session_pids(log), 10, "session lines")
            if set(pids.values()) <= session_pids(log):
                break
    for open_one in sessions:
        open_one.logout()
    assert set(pids.values()) <= session_pids(log)
    text = metrics(cluster)
    successes = re.search(r"^dovecot_auth_successes_total (\S+)$", text, re.MULTILINE)
    assert successes is not None and float(successes.group(1)) >= attempt + 1  # both workers' logins, summed
    assert 'palomar_geodb_available{worker="0"} 1' in text and 'palomar_geodb_available{worker="1"} 1' in text


def counter(text: str, name: str) -> float:
    match = re.search(rf"^{name}(?:_total)? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def failed_login_pids(log: Path, source: str) -> list[int]:
    """The worker of each failed login from `source`, in order."""
    return [int(pid) for pid in re.findall(rf"proxy\[(\d+)\] INFO \S+: session=\S+ proto=imap user=\S+ "
                                           rf"client={re.escape(source)}:\d+ result=AuthFailed", log_text(log))]


def test_the_auth_penalty_is_one_table_for_every_worker(cluster: LocalCluster) -> None:
    """Wrong passwords from one address, one connection each, land on both workers; every attempt
    after the first is held back by the penalty, whichever worker the earlier failures were on (a
    table per worker would let the first attempt on each worker through undelayed)."""
    wait_serving(cluster)
    source, log = "127.0.0.77", cluster.proxies[0].log_path
    delayed_before = counter(metrics(cluster), "palomar_auth_penalty_delayed")
    attempts = 0
    while attempts < 3 or len(set(failed_login_pids(log, source))) < WORKERS:
        assert attempts < 20, "20 connections all landed on one worker"
        imap = IMAP4From(cluster.proxies[0].host, cluster.proxies[0].imap, source=source, timeout=30)
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(cluster.users[0].name, f"wrong-{attempts}")
        imap.logout()
        attempts += 1
        wait_until(lambda n=attempts: len(failed_login_pids(log, source)) == n, 10, "the failed login's log line")
    assert counter(metrics(cluster), "palomar_auth_penalty_delayed") - delayed_before == attempts - 1
    login_logout(cluster, 1)  # other clients are not held back


def test_a_killed_worker_is_replaced_and_logins_keep_working(cluster: LocalCluster) -> None:
    log = cluster.proxies[0].log_path
    before = wait_serving(cluster)
    os.kill(before[1], signal.SIGKILL)
    for number in range(4):  # served by worker 0 meanwhile; the listening socket never closed
        login_logout(cluster, number)
    wait_until(lambda: started_workers(log)[1] != before[1], 30, "worker 1 started again")
    assert f"worker 1 (pid {before[1]}) exited with status -9" in log.read_text()
    after = wait_serving(cluster)
    assert after[0] == before[0] and after[1] != before[1]
    login_logout(cluster, 0)


def test_sighup_reaches_every_worker(cluster: LocalCluster) -> None:
    node = cluster.proxies[0]
    assert node.proc is not None
    pids = wait_serving(cluster)
    node.log_path.rename(node.log_path.with_suffix(".log.1"))  # what logrotate does
    node.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: node.log_path.exists() and all(
        f"proxy[{pid}] INFO palomar: reload (SIGHUP)" in node.log_path.read_text() for pid in pids.values()),
        15, "every worker writing its reload line to the new log")
    assert f"SIGHUP passed to {WORKERS} worker(s)" in node.log_path.read_text()
    login_logout(cluster, 1)


def test_sigterm_drains_every_worker_and_the_parent_exits_0(cluster: LocalCluster) -> None:
    node = cluster.proxies[0]
    assert node.proc is not None
    pids = wait_serving(cluster)
    idle = IMAP4From(node.host, node.imap, timeout=30)
    idle.login(cluster.users[2].name, cluster.users[2].password)
    idle.send(b"i1 IDLE\r\n")
    assert idle.readline().startswith(b"+ ")
    waiting = socket.create_connection((node.host, node.imap), timeout=30)
    assert waiting.recv(4096).startswith(b"* OK")

    node.proc.send_signal(signal.SIGTERM)

    assert node.proc.wait(EXIT_BOUND) == 0
    assert idle.sock.recv(4096).endswith(b"* BYE Server shutting down.\r\n")
    assert waiting.recv(4096) == b"* BYE Server shutting down.\r\n"
    text = node.log_path.read_text()
    for pid in pids.values():
        assert f"proxy[{pid}] INFO palomar.proxy: proxy stopped" in text
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "proxy parent stopped" in text
    with pytest.raises(OSError):
        socket.create_connection((node.host, node.imap), timeout=5)
    cluster.restart_proxy(node)


def test_workers_do_not_outlive_a_killed_parent(cluster: LocalCluster) -> None:
    node = cluster.proxies[0]
    assert node.proc is not None
    pids = wait_serving(cluster)
    node.proc.kill()
    node.proc.wait(10)

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(lambda: all(gone(pid) for pid in pids.values()), EXIT_BOUND, "the workers to stop")
    cluster.restart_proxy(node)
    wait_serving(cluster)
