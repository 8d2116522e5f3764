"""Hostile client text must never forge a log line: CR, LF and NUL sent through every protocol of a
real `palomar proxy` (and on to its backends) end up as '?' in one log line, never as a new line."""

from __future__ import annotations

import base64
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from palomar.devcluster.cluster import LocalCluster

FORGED_PREFIX = "2030-01-01 00:00:00,000"


def forged(tag: str) -> str:
    """A complete log line as the proxy would write it for a successful login."""
    return f"{FORGED_PREFIX} proxy[1] INFO palomar.session: session={tag} proto=imap user=admin result=Established"


def hostile_user(tag: str) -> str:
    return "x\r\n" + forged(tag)


SANITISED = "x??" + FORGED_PREFIX
"""What the hostile user name looks like once sanitised: proof that it did reach the log."""


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    # Every hostile login fails from one address: the escalating penalty (tested on its own) would
    # only make this module wait, so it is off here.
    c = LocalCluster(harness_root / "log-injection-cluster", auth_failure_delay="50 ms", allow_cleartext=True,
                     users_count=2, proxies_count=1, proxy_settings={"*": ("auth_penalty_max_delay = 0",)})
    c.start()
    yield c
    c.stop()


class RawClient:
    """A line protocol client that sends exactly the bytes it is given."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=15)
        self.buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def expect(self, pattern: bytes) -> bytes:
        """Read until `pattern` (a regex) matches a complete line; return everything up to it."""
        regex = re.compile(pattern, re.MULTILINE)
        while True:
            match = regex.search(self.buffer)
            if match is not None and self.buffer.find(b"\n", match.end() - 1) >= 0:
                end = self.buffer.index(b"\n", match.end() - 1) + 1
                text, self.buffer = self.buffer[:end], self.buffer[end:]
                return text
            data = self.sock.recv(65536)
            assert data, f"connection closed before {pattern!r}; got {self.buffer!r}"
            self.buffer += data

    def send(self, data: bytes, reply: bytes) -> bytes:
        self.sock.sendall(data)
        return self.expect(reply)


def plain(user: str, password: str = "wrong") -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def log_end(log: Path) -> int:
    return log.stat().st_size


def assert_no_forged_line(log: Path, start: int, *, reached: bool) -> str:
    """No line `log` got after offset `start` was forged, no raw CR or NUL is in it; `reached`: the
    hostile text is there, sanitised."""
    with log.open("rb") as file:  # bytes: text mode would turn CRLF into LF
        file.seek(start)
        text = file.read().decode("utf-8", "replace")
    assert "\r" not in text and "\x00" not in text
    lines = text.split("\n")
    assert not [line for line in lines if line.startswith(FORGED_PREFIX)], text[-3000:]
    if reached:
        assert SANITISED in text, text[-3000:]
    return text


def imap_login_literal_and_authenticate_plain(imap: RawClient) -> None:
    user = hostile_user("imap-literal").encode()
    imap.expect(rb"^\* OK")
    imap.send(b"a LOGIN {%d}\r\n" % len(user), rb"^\+")
    assert imap.send(user + b' "wrong"\r\n', rb"^a ").startswith(b"a NO")
    imap.send(b"b AUTHENTICATE PLAIN\r\n", rb"^\+")
    assert imap.send(plain(hostile_user("imap-plain")) + b"\r\n", rb"^b ").startswith(b"b NO")


def pop3_user_and_auth_plain(pop3: RawClient) -> None:
    pop3.expect(rb"^\+OK")
    pop3.send(b"USER x\x00\r" + forged("pop3-user").encode() + b"\r\n", rb"^[+-]")
    pop3.send(b"PASS wrong\r\n", rb"^-ERR")
    assert pop3.send(b"AUTH PLAIN " + plain(hostile_user("pop3-plain")) + b"\r\n", rb"^[+-]").startswith(b"-ERR")


def submission_ehlo_mail_from_and_auth_plain(smtp: RawClient) -> None:
    smtp.expect(rb"^220 ")
    smtp.send(b"EHLO he\x00lo\r" + forged("ehlo").encode() + b"\r\n", rb"^\d\d\d ")
    smtp.send(b"MAIL FROM:<a\x00\r" + forged("mail-from").encode() + b"@example.test>\r\n", rb"^\d\d\d ")
    smtp.send(b"EHLO client.example.test\r\n", rb"^250 ")
    reply = smtp.send(b"AUTH PLAIN " + plain(hostile_user("submission-plain")) + b"\r\n", rb"^\d\d\d ")
    assert reply.startswith(b"535")


def managesieve_authenticate_plain(sieve: RawClient) -> None:
    sieve.expect(rb"^OK")
    reply = sieve.send(b'AUTHENTICATE "PLAIN" "' + plain(hostile_user("sieve-plain")) + b'"\r\n', rb"^(OK|NO|BYE)")
    assert reply.startswith(b"NO")


@pytest.mark.parametrize("port,conversation,last_tag", [
    ("imap", imap_login_literal_and_authenticate_plain, "imap-plain"),
    ("pop3", pop3_user_and_auth_plain, "pop3-plain"),
    ("submission", submission_ehlo_mail_from_and_auth_plain, "submission-plain"),
    ("sieve", managesieve_authenticate_plain, "sieve-plain"),
])
def test_hostile_user_names_reach_the_log_sanitised(cluster: LocalCluster, port: str,
                                                   conversation: Callable[[RawClient], None], last_tag: str) -> None:
    node = cluster.proxies[0]
    start = log_end(node.log_path)
    with RawClient(node.host, getattr(node, port)) as client:
        conversation(client)
    text = assert_no_forged_line(node.log_path, start, reached=True)
    assert f"session={last_tag}" in text  # the SASL PLAIN user reached the log too (sanitised)


def test_lmtp_lhlo_mail_from_and_rcpt_to(cluster: LocalCluster) -> None:
    node = cluster.proxies[0]
    start = log_end(node.log_path)
    known = cluster.users[0].name
    backend_starts = [log_end(backend.log_path) for backend in cluster.backends]
    with RawClient(node.host, node.lmtp) as lmtp:
        lmtp.expect(rb"^220 ")
        lmtp.send(b"LHLO he\x00lo\r" + forged("lhlo").encode() + b"\r\n", rb"^\d\d\d ")
        lmtp.send(b"MAIL FROM:<a\x00\r" + forged("lmtp-from").encode() + b"@example.test>\r\n", rb"^\d\d\d ")
        lmtp.send(b"LHLO client.example.test\r\n", rb"^250 ")
        assert lmtp.send(b"MAIL FROM:<sender@example.test>\r\n", rb"^\d\d\d ").startswith(b"250")
        lmtp.send(b"RCPT TO:<x\x00\r" + forged("rcpt").encode() + b"@example.test>\r\n", rb"^\d\d\d ")
        lmtp.send(b'RCPT TO:<"x\\\r' + forged("rcpt-quoted").encode() + b'"@example.test>\r\n', rb"^\d\d\d ")
        assert lmtp.send(f"RCPT TO:<{known}>\r\n".encode(), rb"^\d\d\d ").startswith(b"250")
        lmtp.send(b"QUIT\r\n", rb"^221")
    assert_no_forged_line(node.log_path, start, reached=False)
    for backend, backend_start in zip(cluster.backends, backend_starts, strict=True):
        assert_no_forged_line(backend.log_path, backend_start, reached=False)
