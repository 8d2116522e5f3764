"""What one LMTP delivery costs the palomar tier, checked where it can regress silently: the writes
of an LMTP leg per transaction, and the GeoDB reads of the backend's ownership check per recipient
(docs/design/login-path-cost.md, "LMTP CPU, profiled").

The leg talks to a real Dovecot CE LMTP; the in-process proxy and backend (tests/inprocess_cluster.py,
real loopback sockets, a real SQLite GeoDB, the backend's move executor on) deliver into it.
"""

from __future__ import annotations

import asyncio
import imaplib
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from inprocess_cluster import PASSWORD, USERS, InProcessCluster, start_cluster
from palomar.backend.moves import MoveExecutor
from palomar.devcluster.dovecot import DovecotInstance
from palomar.geodb.engine import Get
from palomar.net.link import open_link
from palomar.net.lmtp_leg import LmtpLeg
from palomar.protocols.lmtp import LmtpClient

TIMEOUT = 10.0


@pytest.fixture
async def cluster(tmp_path: Path, dovecot_backends: dict[str, DovecotInstance]) -> AsyncIterator[InProcessCluster]:
    dovecot = dovecot_backends["backend1"]
    c = await start_cluster(tmp_path / "inprocess", backend_host=dovecot.params.listen, dovecot=dovecot)
    c.backend.moves = MoveExecutor(c.backend, None)
    yield c
    await c.stop()


def count_subject(address: tuple[str, int], user: str, subject: str) -> int:
    imap = imaplib.IMAP4(*address, timeout=TIMEOUT)
    imap.login(user, PASSWORD)
    imap.select("INBOX")
    _, data = imap.search(None, "SUBJECT", f'"{subject}"')
    imap.logout()
    return len(data[0].split())


def deliver(address: tuple[str, int], recipients: list[str], subject: str) -> list[bytes]:
    """One transaction, pipelined as an MTA sends it; the reply lines after LHLO (MAIL, each RCPT,
    DATA, then one per recipient)."""
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        stream = sock.makefile("rb")
        replies: list[bytes] = []

        def reply() -> bytes:
            while (line := stream.readline()) and line[3:4] == b"-":
                pass
            replies.append(line.rstrip(b"\r\n"))
            return line

        reply()  # greeting
        sock.sendall(b"LHLO mta.example\r\n")
        reply()
        sock.sendall(b"MAIL FROM:<sender@example.org>\r\n" + b"".join(
            f"RCPT TO:<{rcpt}>\r\n".encode() for rcpt in recipients) + b"DATA\r\n")
        for _ in range(len(recipients) + 2):
            reply()
        sock.sendall(f"Subject: {subject}\r\n\r\nbody\r\n.\r\nQUIT\r\n".encode())
        for _ in recipients:
            reply()
    return replies[2:]


class UserReads:
    """Counts the reads of each user's GeoDB row made through a real engine (single reads and
    reads inside a batch)."""

    def __init__(self, engine: Any) -> None:
        self.counts: dict[str, int] = {}
        self.calls: list[list[str]] = []
        """The users whose rows each engine call read (calls that read none left out)."""
        get, read_many = engine.get, engine.read_many

        async def counted_get(table: str, key: Any) -> Any:
            self._note([Get(table, key)])
            return await get(table, key)

        async def counted_read_many(reads: Any) -> Any:
            self._note(reads)
            return await read_many(reads)

        engine.get, engine.read_many = counted_get, counted_read_many

    def _note(self, reads: Any) -> None:
        users = [read.key["username"] for read in reads if isinstance(read, Get) and read.table == "users"]
        for user in users:
            self.counts[user] = self.counts.get(user, 0) + 1
        if users:
            self.calls.append(users)


async def test_the_backend_reads_each_recipients_user_row_once(cluster: InProcessCluster) -> None:
    """Ownership and the move check share one fresh read of the user's row per RCPT."""
    recipients = list(USERS[:3])
    subject = f"reads {uuid.uuid4()}"
    await asyncio.to_thread(deliver, cluster.listeners["lmtp"], recipients, f"warm {uuid.uuid4()}")  # places them
    reads = UserReads(cluster.backend_engine.inner)
    replies = await asyncio.to_thread(deliver, cluster.listeners["lmtp"], recipients, subject)
    assert [line[:3] for line in replies] == [b"250"] * (len(recipients) + 1) + [b"354"] + [b"250"] * len(recipients)
    assert reads.counts == {user: 1 for user in recipients}
    assert reads.calls == [recipients]  # pipelined: the batch's rows in one engine call
    for user in recipients:  # and each got the message exactly once
        assert await asyncio.to_thread(count_subject, cluster.listeners["imap"], user, subject) == 1


async def test_a_failing_geodb_fails_each_pipelined_recipient_alone_and_the_session_goes_on(
        cluster: InProcessCluster) -> None:
    """The batch's ownership read fails: every recipient is checked alone (its own boundary: 451
    4.4.3, nothing stored), and once the GeoDB answers again the same MTA connection delivers."""
    recipients, subject = list(USERS[5:7]), f"geodb down {uuid.uuid4()}"
    await asyncio.to_thread(deliver, cluster.listeners["lmtp"], recipients, f"warm {uuid.uuid4()}")
    reader, writer = await lmtp_session(cluster.listeners["lmtp"])
    try:
        cluster.backend_engine.failing = True
        writer.write(envelope(recipients))
        replies = [await read_reply(reader) for _ in range(len(recipients) + 1)]
        assert replies[0].startswith(b"250 ")
        assert [line[:10] for line in replies[1:]] == [b"451 4.4.3 "] * len(recipients), replies
        assert cluster.backend_engine.failed_calls >= 1 + len(recipients)  # the batch, then each alone
        writer.write(b"RSET\r\n")
        assert (await read_reply(reader)).startswith(b"250 ")
        cluster.backend_engine.failing = False
        writer.write(envelope(recipients) + b"DATA\r\n")
        assert [(await read_reply(reader))[:3] for _ in range(len(recipients) + 2)] == [b"250"] * 3 + [b"354"]
        writer.write(f"Subject: {subject}\r\n\r\nbody\r\n.\r\nQUIT\r\n".encode())
        assert [(await read_reply(reader))[:3] for _ in recipients] == [b"250"] * len(recipients)
    finally:
        writer.close()
    for user in recipients:
        assert await asyncio.to_thread(count_subject, cluster.listeners["imap"], user, subject) == 1


async def test_a_pipelined_batch_holds_each_owned_user_until_its_transaction_ends(cluster: InProcessCluster) -> None:
    """The move fence per recipient, also in a batch: every owned user is held (a move of it waits)
    from its RCPT until the message is stored."""
    moves = cluster.backend.moves
    assert moves is not None
    recipients, subject = list(USERS[:2]), f"held {uuid.uuid4()}"
    await asyncio.to_thread(deliver, cluster.listeners["lmtp"], recipients, f"warm {uuid.uuid4()}")
    reader, writer = await lmtp_session(cluster.listeners["lmtp"])
    try:
        writer.write(envelope(recipients))
        assert [(await read_reply(reader))[:3] for _ in range(len(recipients) + 1)] == [b"250"] * 3
        assert moves.held_users() == set(recipients)
        writer.write(f"DATA\r\nSubject: {subject}\r\n\r\nbody\r\n.\r\n".encode())
        assert [(await read_reply(reader))[:3] for _ in range(len(recipients) + 1)] == [b"354"] + [b"250"] * 2
        assert moves.held_users() == set()  # released before the replies were written
    finally:
        writer.close()


async def lmtp_session(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An MTA's connection, greeted and past LHLO."""
    reader, writer = await asyncio.open_connection(*address)
    await read_reply(reader)
    writer.write(b"LHLO mta.example\r\n")
    await read_reply(reader)
    return reader, writer


def envelope(recipients: list[str]) -> bytes:
    return b"MAIL FROM:<sender@example.org>\r\n" + b"".join(f"RCPT TO:<{rcpt}>\r\n".encode() for rcpt in recipients)


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One reply (its last line), within TIMEOUT."""
    async with asyncio.timeout(TIMEOUT):
        while (line := await reader.readline()) and line[3:4] == b"-":
            pass
    return line


class Writes:
    """What a link was asked to write, call by call."""

    def __init__(self, link: Any) -> None:
        self.calls: list[bytes] = []
        write = link.write

        def recorded(data: bytes) -> None:
            if data:
                self.calls.append(bytes(data))
            write(data)

        link.write = recorded


async def test_a_leg_writes_the_envelope_with_the_first_rcpt_and_the_message_with_its_dot(
        dovecot_backends: dict[str, DovecotInstance], cluster: InProcessCluster) -> None:
    """Against Dovecot CE's LMTP: MAIL FROM waits for the first RCPT (one write), the last chunk
    waits for the final dot (one write), and the message is stored once."""
    params = dovecot_backends["backend1"].params
    link = await open_link(params.listen, params.lmtp_port, timeout=TIMEOUT)
    leg = LmtpLeg("dovecot", link, LmtpClient(lhlo_name="test.example"), timeout=TIMEOUT)
    try:
        assert await leg.handshake()
        writes = Writes(link)
        user, subject = USERS[4], f"leg {uuid.uuid4()}"
        leg.begin("sender@example.org", {})
        assert writes.calls == []
        reply = await leg.rcpt(user)
        assert reply is not None and reply.code == 250
        assert len(writes.calls) == 1 and writes.calls[0].startswith(b"MAIL FROM:<sender@example.org>")
        assert writes.calls[0].endswith(f"RCPT TO:<{user}>\r\n".encode())
        opened = await leg.open_data()
        assert opened is not None and opened.code == 354
        writes.calls.clear()
        leg.write_chunk(f"Subject: {subject}\r\n\r\n.leading dot\r\n".encode(), last=True)
        assert writes.calls == []
        replies = await leg.finish_data()
        assert [r.code for r in replies] == [250]
        assert writes.calls == [f"Subject: {subject}\r\n\r\n..leading dot\r\n.\r\n".encode()]
    finally:
        leg.close()
    assert await asyncio.to_thread(count_subject, cluster.listeners["imap"], user, subject) == 1
