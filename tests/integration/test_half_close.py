"""Clients that send everything and then shut down their sending half (`nc -N`, some MTAs) get an
answer to everything they sent before the FIN, as from Dovecot itself, before and after login;
an MTA that leaves in the middle of a message gets nothing stored.

Real cluster: HAProxy, two palomar proxies and backends, Dovecot CE. Cleartext logins are
allowed here, since a TLS session cannot stay half-open.
"""

from __future__ import annotations

import base64
import imaplib
import re
import socket
import uuid
from pathlib import Path

import pytest

from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.net import wait_until

TIMEOUT = 30
USER, PASSWORD = "user1@example.test", "password1"


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(harness_root / "half-close-cluster", auth_failure_delay="100 ms", users_count=4,
                     allow_cleartext=True)
    c.start()
    yield c
    c.stop()


def half_closed(cluster: LocalCluster, port: int, payload: bytes) -> str:
    """Send `payload` at once, shut down the sending half, read until the server closes."""
    with socket.create_connection((cluster.lb_host, port), timeout=TIMEOUT) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode(errors="replace")


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_imap_half_closed_before_login_gets_every_reply(cluster: LocalCluster) -> None:
    out = half_closed(cluster, cluster.lb_imap, b"a CAPABILITY\r\nb LOGIN user1@example.test wrong\r\nc LOGOUT\r\n")
    assert re.search(r"^a OK", out, re.M) and re.search(r"^b NO \[AUTHENTICATIONFAILED\]", out, re.M), out
    assert re.search(r"^\* BYE", out, re.M) and re.search(r"^c OK", out, re.M), out


def test_imap_half_closed_commands_after_login_reach_the_backend(cluster: LocalCluster) -> None:
    out = half_closed(cluster, cluster.lb_imap,
                      f"a LOGIN {USER} {PASSWORD}\r\nb SELECT INBOX\r\nc LOGOUT\r\n".encode())
    assert re.search(r"^a OK .*Logged in", out, re.M), out
    assert re.search(r"^b OK \[READ-WRITE\]", out, re.M), out
    assert re.search(r"^\* BYE", out, re.M) and re.search(r"^c OK", out, re.M), out


def test_pop3_half_closed_gets_every_reply(cluster: LocalCluster) -> None:
    out = half_closed(cluster, cluster.lb_pop3, f"USER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\nQUIT\r\n".encode())
    lines = out.splitlines()
    assert len(lines) == 5 and all(line.startswith("+OK") for line in lines), out  # greeting + 4 commands


def test_submission_half_closed_gets_every_reply(cluster: LocalCluster) -> None:
    out = half_closed(cluster, cluster.lb_submission,
                      f"EHLO client.example.test\r\nAUTH PLAIN {plain(USER, PASSWORD)}\r\nNOOP\r\nQUIT\r\n".encode())
    codes = [line[:4] for line in out.splitlines() if line[3:4] == " "]
    assert codes == ["220 ", "250 ", "235 ", "250 ", "221 "], out


def test_managesieve_half_closed_gets_every_reply(cluster: LocalCluster) -> None:
    out = half_closed(cluster, cluster.lb_sieve,
                      f'AUTHENTICATE "PLAIN" "{plain(USER, PASSWORD)}"\r\nLISTSCRIPTS\r\nLOGOUT\r\n'.encode())
    statuses = [line for line in out.splitlines() if re.match(r"(OK|NO|BYE)\b", line)]
    assert len(statuses) == 4 and all(s.startswith("OK") for s in statuses), out  # greeting + 3 commands


def count_subject(cluster: LocalCluster, subject: str) -> int:
    with imaplib.IMAP4(cluster.lb_host, cluster.lb_imap, timeout=TIMEOUT) as imap:
        imap.login(USER, PASSWORD)
        imap.select("INBOX", readonly=True)
        _, data = imap.search(None, "HEADER", "Subject", f'"{subject}"')
        return len(data[0].split())


def lmtp_message(subject: str) -> bytes:
    return f"From: mta@example.org\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def test_lmtp_half_closed_pipelined_delivery_gets_all_replies_and_one_copy(cluster: LocalCluster) -> None:
    subject = f"half-closed {uuid.uuid4().hex}"
    payload = (f"LHLO mta.example.test\r\nMAIL FROM:<mta@example.org>\r\nRCPT TO:<{USER}>\r\nDATA\r\n".encode()
               + lmtp_message(subject) + b".\r\nQUIT\r\n")
    out = half_closed(cluster, cluster.lb_lmtp, payload)
    codes = [line[:3] for line in out.splitlines() if line[3:4] == " "]
    assert codes == ["220", "250", "250", "250", "354", "250", "221"], out
    assert count_subject(cluster, subject) == 1


def test_lmtp_client_leaving_in_the_middle_of_data_stores_nothing(cluster: LocalCluster) -> None:
    subject = f"left midway {uuid.uuid4().hex}"
    with socket.create_connection((cluster.lb_host, cluster.lb_lmtp), timeout=TIMEOUT) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(f"LHLO mta.example.test\r\nMAIL FROM:<mta@example.org>\r\nRCPT TO:<{USER}>\r\nDATA\r\n".encode())
        replies = []
        while not replies or not replies[-1].startswith(b"354"):
            line = reader.readline()
            assert line, replies
            if line[3:4] == b" ":
                replies.append(line)
        sock.sendall(lmtp_message(subject)[:-2])  # the message without its final line end and dot
        reader.close()
    # Dovecot saw the LMTP session end inside DATA (a message completed on the MTA's behalf would
    # be saved and its session would end in another state); only then look at the mailbox. No
    # other test here leaves inside DATA.
    wait_until(lambda: any(re.search(r"lmtp\(.*Disconnect.*state=DATA", b.dovecot.log_text())
                           for b in cluster.backends), TIMEOUT, "Dovecot logging an LMTP session ended inside DATA")
    assert count_subject(cluster, subject) == 0
