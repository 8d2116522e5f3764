"""A backend that stalls (SIGSTOP of its `palomar backend`, or of its whole Dovecot) and resumes.

Real processes: two `palomar proxy`, two `palomar backend`, two Dovecot CE. Two of the stalled
backend's users have sessions open: one IDLEs through proxy1, one sends NOOPs through proxy2.
During the stall the IDLE client ends its IDLE and both keep sending commands, which reach the
stalled side and wait there. Required (docs/design/health.md, "Fencing"):

* a new login of the stalled backend's user succeeds on the alternate backend (with the default
  hop timeouts: within `cluster_hop_answer_timeout` + `cluster_proxy_probe_timeout`);
* both open sessions are cut by their proxies while the backend is still stalled (proxy1 when it
  sets the backend offline, proxy2 when it sees the status), so not one byte the old backend or
  its Dovecot sends after resuming reaches those clients;
* the users' new sessions land on the alternate, and once the resumed backend has noticed the
  cut, `doveadm who` never lists a user on both backends.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from palomar.backend.doveadm_client import DoveadmClient
from palomar.devcluster.cluster import BackendNode, LocalCluster
from palomar.devcluster.net import wait_until
from palomar.devcluster.procs import snapshot_tree

BOUND = 20.0
"""Seconds any one condition may take (the failover itself is designed to take under 10 s)."""
WHO_SAMPLES = 20


class RawImap:
    """An IMAP client on a plain socket that records every byte it receives, with a reader thread."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=BOUND)
        self.sock.settimeout(None)
        self.received = bytearray()
        self.changed = threading.Condition()
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            while data := self.sock.recv(65536):
                with self.changed:
                    self.received += data
                    self.changed.notify_all()
        except OSError:
            pass
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def send(self, line: str) -> None:
        with contextlib.suppress(OSError):  # a cut connection may refuse the write
            self.sock.sendall(line.encode() + b"\r\n")

    def wait_for(self, predicate: Callable[[bytes], bool], what: str, timeout: float = BOUND) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(bytes(self.received)) or self.closed, timeout):
                raise TimeoutError(f"timed out waiting for {what}")
            if not predicate(bytes(self.received)):
                raise AssertionError(f"closed while waiting for {what}: {bytes(self.received)[-200:]!r}")

    def wait_closed(self, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.closed, timeout)

    def login(self, user: str, password: str) -> None:
        self.wait_for(lambda b: b"* OK" in b, "the greeting")
        self.send(f"a LOGIN {user} {password}")
        self.wait_for(lambda b: b"\r\na OK" in b or b.startswith(b"a OK"), f"{user}'s login")
        self.send("b SELECT INBOX")
        self.wait_for(lambda b: b"\r\nb OK" in b, "SELECT")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class NoopSender(threading.Thread):
    """Sends a NOOP every 0.2 s until the connection is closed; `pause()` waits for the answers."""

    def __init__(self, client: RawImap) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.sent = 0
        self.running = threading.Event()
        self.running.set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and not self.client.closed:
            self.running.wait()
            self.sent += 1
            self.client.send(f"n{self.sent} NOOP")
            self.done.wait(0.2)  # the client's pace, not a synchronisation

    def pause(self) -> None:
        """Stop sending and wait until every NOOP sent so far is answered."""
        self.running.clear()
        sent = self.sent
        self.client.wait_for(lambda b: f"n{sent} OK".encode() in b, "the NOOPs to be answered")


def who(node: BackendNode) -> set[str]:
    p = node.dovecot.params
    client = DoveadmClient(p.listen, p.doveadm_http_port, p.doveadm_password)
    try:
        return {r["username"] for r in client.call("who", {}) if "username" in r}
    finally:
        client.close()


def stop_palomar_backend(node: BackendNode) -> Callable[[], None]:
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGSTOP)
    return lambda: os.kill(node.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]


def stop_dovecot(node: BackendNode) -> Callable[[], None]:
    """SIGSTOP Dovecot's master first (no new children), then every process of its tree."""
    master = node.dovecot.pid
    assert master is not None
    os.kill(master, signal.SIGSTOP)
    tree = [p.pid for p in snapshot_tree(master)]
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)

    def resume() -> None:
        for pid in reversed(tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    return resume


@pytest.fixture(params=[stop_palomar_backend, stop_dovecot], ids=["palomar-backend", "dovecot"])
def stall(request: pytest.FixtureRequest, harness_root: Path) -> Iterator[tuple[LocalCluster, Callable]]:
    name = request.param.__name__.replace("_", "-")
    c = LocalCluster(harness_root / f"stall-{name}", proxies_count=2, users_count=16, allow_cleartext=True,
                     password_scheme="PLAIN", auth_failure_delay="100 ms", stats_interval="1 secs")
    c.start()
    yield c, request.param
    c.stop()


def placement(cluster: LocalCluster) -> dict[str, str]:
    """user -> backend host, from where each user's first login was served."""
    found: dict[str, str] = {}
    for user in cluster.users:
        imap = imaplib.IMAP4(cluster.proxies[0].host, cluster.proxies[0].imap, timeout=BOUND)
        imap.login(user.name, user.password)
        imap.logout()
    for node in cluster.backends:
        text = node.log_path.read_text(errors="replace")
        for user in cluster.users:
            if f"user={user.name} proto=imap" in text and " login ok" in text:
                found.setdefault(user.name, node.host)
    return found


def test_stalled_backend_is_fenced_and_its_users_fail_over(stall: tuple[LocalCluster, Callable]) -> None:
    cluster, stop = stall
    where = placement(cluster)
    victim = max(cluster.backends, key=lambda b: sum(1 for h in where.values() if h == b.host))
    other = next(b for b in cluster.backends if b is not victim)
    users = [u for u in cluster.users if where.get(u.name) == victim.host]
    assert len(users) >= 2, f"the victim serves {len(users)} user(s)"
    idler, nooper = users[0], users[1]
    proxy1, proxy2 = cluster.proxies

    idle = RawImap(proxy1.host, proxy1.imap)
    idle.login(idler.name, idler.password)
    idle.send("c IDLE")
    idle.wait_for(lambda b: b"\r\n+ " in b, "IDLE")
    noop = RawImap(proxy2.host, proxy2.imap)
    noop.login(nooper.name, nooper.password)
    sender = NoopSender(noop)
    sender.start()
    sender.pause()
    assert {idler.name, nooper.name} <= who(victim)

    marks = (len(idle.received), len(noop.received))
    resume = stop(victim)
    try:
        # commands that reach the stalled side and would be answered when it resumes
        idle.send("DONE")
        idle.send("d NOOP")
        sender.running.set()
        started = time.monotonic()
        again = imaplib.IMAP4(proxy1.host, proxy1.imap, timeout=60)
        again.login(idler.name, idler.password)  # raises on NO [UNAVAILABLE]
        failover_s = time.monotonic() - started
        assert idle.wait_closed(BOUND), "proxy1 did not cut the IDLE session of the stalled backend"
        assert noop.wait_closed(BOUND), "proxy2 did not cut the NOOP session of the stalled backend"
        second = imaplib.IMAP4(proxy2.host, proxy2.imap, timeout=60)
        second.login(nooper.name, nooper.password)
        print(f"\n{stop.__name__}: re-login on the alternate after {failover_s:.1f}s")
        wait_until(lambda: {idler.name, nooper.name} <= who(other), BOUND, "the new sessions on the alternate")
    finally:
        resume()
        sender.done.set()
    try:
        # the resumed side sees its hops closed and ends the old sessions at its Dovecot
        wait_until(lambda: not {idler.name, nooper.name} & who(victim), BOUND,
                   "the resumed backend to end the cut sessions")
        for _ in range(WHO_SAMPLES):
            on_victim, on_other = who(victim), who(other)
            assert not (on_victim & on_other), f"on both backends: {on_victim & on_other}"
        assert {idler.name, nooper.name} <= who(other)
    finally:
        again.logout()
        second.logout()
    assert bytes(idle.received[marks[0]:]) == b"", "the IDLE client got bytes after the stall"
    assert bytes(noop.received[marks[1]:]) == b"", "the NOOP client got bytes after the stall"
    idle.close()
    noop.close()
    for proxy in (proxy1, proxy2):
        assert f"event=proxy_sessions_cut backend_host={victim.host} " in proxy.log_path.read_text()
    assert f"backend {victim.host} is offline, routing again" in proxy1.log_path.read_text()


class LmtpPinger(threading.Thread):
    """LMTP sessions to a proxy, one after another: LHLO, MAIL, RCPT of `recipient`, close after
    `wait` seconds without an answer (the RCPT of a user on a stalled Dovecot never gets one)."""

    def __init__(self, host: str, port: int, recipient: str, wait: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.address = (host, port)
        self.recipient = recipient
        self.wait = wait
        self.done = threading.Event()
        self.sessions = 0

    def run(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(OSError), socket.create_connection(self.address, timeout=BOUND) as sock:
                reader = sock.makefile("rb")
                reader.readline()  # greeting
                sock.sendall(b"LHLO pinger.example.test\r\n")
                while (line := reader.readline()) and line[3:4] == b"-":
                    pass
                sock.sendall(b"MAIL FROM:<pinger@example.test>\r\n")
                reader.readline()
                sock.sendall(f"RCPT TO:<{self.recipient}>\r\n".encode())
                sock.settimeout(self.wait)
                with contextlib.suppress(TimeoutError):
                    reader.readline()
                self.sessions += 1


@pytest.fixture
def one_proxy(harness_root: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(harness_root / "stall-lmtp", proxies_count=1, users_count=16, allow_cleartext=True,
                     password_scheme="PLAIN", auth_failure_delay="100 ms", stats_interval="1 secs")
    c.start()
    yield c
    c.stop()


def test_lmtp_hops_to_a_stalled_dovecot_do_not_keep_it_online(one_proxy: LocalCluster) -> None:
    """A stalled Dovecot's `palomar backend` still accepts LMTP hops (its gateway answers LHLO
    itself); such a hop is no sign of health, so deliveries flowing towards the backend must not
    clear the failure streak that the login and its confirmation probe build up."""
    cluster = one_proxy
    where = placement(cluster)
    victim = max(cluster.backends, key=lambda b: sum(1 for h in where.values() if h == b.host))
    users = [u for u in cluster.users if where.get(u.name) == victim.host]
    assert len(users) >= 2, f"the victim serves {len(users)} user(s)"
    proxy = cluster.proxies[0]
    pinger = LmtpPinger(proxy.host, proxy.lmtp, users[1].name)
    resume = stop_dovecot(victim)
    try:
        pinger.start()
        imap = imaplib.IMAP4(proxy.host, proxy.imap, timeout=60)
        imap.login(users[0].name, users[0].password)  # raises on NO [UNAVAILABLE]: the backend stayed online
        imap.logout()
        assert pinger.sessions >= 2, "the LMTP sessions did not run during the failover"
    finally:
        pinger.done.set()
        resume()
    pinger.join(BOUND)
    assert "status=offline" in proxy.log_path.read_text()
