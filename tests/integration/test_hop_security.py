"""What an attacker on the proxy -> backend network gets (docs/design/backend-hop.md, "Security").

A recording TCP forwarder stands where backend1's hop port is (its `palomar backend` listens
on another loopback address behind it), so a real proxy's hop passes through it. The bytes it
recorded are then replayed as an attacker would: to the same backend, after that backend
restarted, and to the other backend. Run on a plaintext hop (the worst case: the header is
readable on the wire) and on a TLS hop (nothing readable at all).
"""

from __future__ import annotations

import contextlib
import imaplib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.clients import backend_of

from palomar.devcluster.cluster import BackendNode, DemoUser, LocalCluster
from palomar.devcluster.net import wait_until
from palomar.protocols.proxyproto import ProxyHeaderParser

BEHIND = "127.0.0.62"
"""Where backend1's `palomar backend` listens while the recorder stands at its address."""


class Recorder:
    """A TCP forwarder that keeps what each connection's client sent and received."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.sent: list[bytearray] = []
        self.received: list[bytearray] = []
        self.server = socket.create_server(listen)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            sent, received = bytearray(), bytearray()
            self.sent.append(sent)
            self.received.append(received)
            for src, dst, log in ((client, upstream, sent), (upstream, client, received)):
                threading.Thread(target=self._pump, args=(src, dst, log), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, log: bytearray) -> None:
        try:
            while data := src.recv(65536):
                log += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


def start_cluster(root: Path, *, hop_tls: bool) -> LocalCluster:
    return LocalCluster(root, backends_count=2, proxies_count=1, users_count=20, allow_cleartext=True,
                        auth_failure_delay="100 ms", hop_tls=hop_tls).start()


def put_recorder_in_front(cluster: LocalCluster, node: BackendNode) -> Recorder:
    """Move `node`'s palomar backend to BEHIND and forward its hop address there through a Recorder."""
    cluster.kill_backend_service(node)
    node.config.write_text(node.config.read_text().replace(f"listen = {node.host}\n", f"listen = {BEHIND}\n"))
    recorder = Recorder((node.host, cluster.hop_port), (BEHIND, cluster.hop_port))
    restart_behind(cluster, node)
    return recorder


def restart_behind(cluster: LocalCluster, node: BackendNode) -> None:
    before = node.log_path.read_text().count(f"accepting hops on {BEHIND}")
    cluster.restart_backend(node)  # waits on node.host: the recorder; the log line says the backend is up
    wait_until(lambda: node.log_path.read_text().count(f"accepting hops on {BEHIND}") > before, 30,
               "backend1 listening behind the recorder")


def user_on(cluster: LocalCluster, host: str) -> DemoUser:
    """A user whose group lands on `host` (a first login places the user in the GeoDB)."""
    for user in cluster.users:
        session_through_proxy(cluster, user)
        if backend_of(cluster, user.name) == host:
            return user
    raise AssertionError(f"no user on {host}")


def session_through_proxy(cluster: LocalCluster, user: DemoUser) -> None:
    """A real login through the proxy (its hop passes the recorder); SELECT works."""
    proxy = cluster.proxies[0]
    imap = imaplib.IMAP4(proxy.host, proxy.imap, timeout=15)
    imap.login(user.name, user.password)
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()


def replay(host: str, port: int, captured: bytes) -> list[bytes]:
    """Send the captured proxy bytes at once (as an attacker would), then SELECT; every line back.
    A reset is an end too: a TLS backend that rejects the replayed handshake sends its alert and closes
    with the rest of the replay unread, which the kernel answers with a reset."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(captured + b"r1 SELECT INBOX\r\n")
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while data.count(b"\n") < 4 and (chunk := sock.recv(4096)):
                data += chunk
        return data.splitlines(keepends=True)[:4]


def assert_refused(lines: list[bytes]) -> None:
    assert not any(line.startswith(b"OK") for line in lines), lines
    assert not any(b"READ-WRITE" in line for line in lines), lines
    assert b"FAIL denied hop refused\r\n" in lines, lines


# --- plaintext hop ------------------------------------------------------------------------------------


@contextlib.contextmanager
def recorded_session(root: Path, *, hop_tls: bool) -> Iterator[tuple[LocalCluster, Recorder, DemoUser]]:
    """A cluster, a recorder in front of backend1, and one real session of a user of backend1 through it."""
    cluster = start_cluster(root, hop_tls=hop_tls)
    recorder = None
    try:
        node = cluster.backends[0]
        user = user_on(cluster, node.host)
        recorder = put_recorder_in_front(cluster, node)
        session_through_proxy(cluster, user)
        yield cluster, recorder, user
    finally:
        if recorder is not None:
            recorder.close()
        cluster.stop()


@pytest.fixture(scope="module")
def plain(harness_root: Path) -> Iterator[tuple[LocalCluster, Recorder, bytes]]:
    with recorded_session(harness_root / "hop-plain-cluster", hop_tls=False) as (cluster, recorder, user):
        yield cluster, recorder, captured_header(recorder, user.name)


def captured_header(recorder: Recorder, user: str) -> bytes:
    """The PROXY header the proxy wrote on the hop of `user`'s session, as recorded on the wire."""
    for sent in recorder.sent:
        parser = ProxyHeaderParser()
        header = parser.feed(bytes(sent))
        if header is not None and dict(header.tlvs).get(0xE1) == user.encode():
            return bytes(sent)[: len(sent) - len(parser.remaining)]
    raise AssertionError(f"no hop of {user} recorded")


def test_plaintext_hop_header_is_readable_on_the_wire(plain) -> None:
    """The premise of the replay tests: on a plaintext hop an attacker sees the user and the session."""
    cluster, recorder, header = plain
    assert header.startswith(b"\r\n\r\n\x00\r\nQUIT\n")
    assert any(b"SELECT INBOX" in bytes(sent) for sent in recorder.sent)


def test_replay_to_the_same_backend_is_refused_and_logged(plain) -> None:
    cluster, _, header = plain
    node = cluster.backends[0]
    before = node.log_path.read_text().count("refused: hop MAC mismatch")
    assert_refused(replay(BEHIND, cluster.hop_port, header))
    wait_until(lambda: node.log_path.read_text().count("refused: hop MAC mismatch") > before, 10,
               "the refused replay logged")


def test_replay_after_the_backend_restarted_is_refused(plain) -> None:
    """The defect: the replay cache lived in memory, so a restart made a captured header good again."""
    cluster, _, header = plain
    node = cluster.backends[0]
    restart_behind(cluster, node)
    assert_refused(replay(BEHIND, cluster.hop_port, header))
    wait_until(lambda: "refused: hop MAC mismatch" in node.log_path.read_text().rsplit("backend stopped", 1)[-1],
               10, "the refused replay logged by the restarted backend")


def test_replay_to_the_other_backend_is_refused(plain) -> None:
    cluster, _, header = plain
    other = cluster.backends[1]
    assert_refused(replay(other.host, cluster.hop_port, header))
    wait_until(lambda: "refused: hop MAC mismatch" in other.log_path.read_text(), 10, "the refusal logged")


# --- TLS hop ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(harness_root: Path) -> Iterator[tuple[LocalCluster, Recorder, DemoUser]]:
    with recorded_session(harness_root / "hop-tls-cluster", hop_tls=True) as recorded:
        yield recorded


def test_tls_hop_shows_nothing_of_the_session_on_the_wire(tls) -> None:
    cluster, recorder, user = tls
    wire = b"".join(bytes(b) for b in [*recorder.sent, *recorder.received])
    assert wire.startswith(b"\x16\x03")  # a TLS handshake record: TLS from the first byte
    for readable in (user.name.encode(), b"SELECT", b"INBOX", b"HOP 2", b"QUIT\n", b"Logged in"):
        assert readable not in wire


def test_tls_hop_recording_replayed_gets_nothing(tls) -> None:
    cluster, recorder, _ = tls
    node = cluster.backends[0]
    session = max(recorder.sent, key=len)  # the session's hop (not the start-up check's empty connection)
    lines = replay(BEHIND, cluster.hop_port, bytes(session))
    assert not any(line.startswith((b"OK", b"HOP")) for line in lines), lines
    wait_until(lambda: "refused: TLS handshake failed" in node.log_path.read_text(), 10, "the refusal logged")
