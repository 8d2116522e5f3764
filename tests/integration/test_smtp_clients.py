"""The SMTP-family cores against real peers: the client cores log in to and deliver through
real Dovecot backends, and the server cores are driven by Python's smtplib over loopback."""

from __future__ import annotations

import ipaddress
import smtplib
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from palomar.devcluster.certs import self_signed
from palomar.devcluster.dovecot import DovecotInstance
from palomar.devcluster.smtp_sink import SmtpSink
from palomar.protocols import lmtp, submission
from palomar.protocols.smtp_syntax import DotStuffer, Reply, ReplyReader

TIMEOUT = 10.0
CLIENT_NAME = "client.example.test"


def _user() -> str:
    return f"u{uuid.uuid4().hex[:10]}@example.test"


def _session() -> str:
    return uuid.uuid4().hex[:16]


def _ipv6() -> str:
    """A fresh documentation address, in the canonical form Dovecot logs."""
    return str(ipaddress.IPv6Address(f"2001:db8::{uuid.uuid4().hex[:4]}"))


@pytest.fixture
def b1(dovecot_backends: dict[str, DovecotInstance]) -> DovecotInstance:
    return dovecot_backends["backend1"]


@pytest.fixture
def b2(dovecot_backends: dict[str, DovecotInstance]) -> DovecotInstance:
    return dovecot_backends["backend2"]


# --------------------------------------------------------------------------- client cores vs Dovecot


def submission_login(backend: DovecotInstance, client: submission.SubmissionLoginClient,
                     ) -> tuple[submission.LoginResult, socket.socket, bytes]:
    """Run the client core over a real connection; (result, the open socket, leftover bytes)."""
    sock = socket.create_connection((backend.host, backend.params.submission_port), timeout=TIMEOUT)
    result = None
    while result is None:
        data = sock.recv(65536)
        result = client.receive(data) if data else client.connection_lost()
        sock.sendall(client.data_to_send())
    return result, sock, client.leftover()


def read_replies(sock: socket.socket, reader: ReplyReader, count: int) -> list[Reply]:
    replies: list[Reply] = []
    while True:
        while len(replies) < count and (reply := reader.next_reply()) is not None:
            replies.append(reply)
        if len(replies) == count:
            return replies
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed after {replies}")
        reader.feed(data)


def test_submission_client_logs_in_as_master_and_the_message_reaches_the_sink(
        b2: DovecotInstance, smtp_sink: SmtpSink) -> None:
    user, session, marker = _user(), _session(), uuid.uuid4().hex
    client = submission.SubmissionLoginClient(
        user, master_user=b2.params.master_user, master_password=b2.params.master_password,
        helo="proxy.example.test",
        xclient={"ADDR": "203.0.113.25", "PORT": "40025", "HELO": "client.example.test", "SESSION": session,
                 "TTL": "4", "DESTADDR": "192.0.2.1"})
    result, sock, leftover = submission_login(b2, client)
    with sock:
        assert isinstance(result, submission.LoggedIn), result
        assert result.reply.startswith(b"235 ")
        assert client.xclient_sent
        assert "PIPELINING" in result.ehlo_capabilities
        assert any(cap.startswith("SIZE ") and cap[5:].isdigit() for cap in result.ehlo_capabilities)
        before = len(smtp_sink.messages)
        sock.sendall(f"MAIL FROM:<{user}>\r\nRCPT TO:<someone@elsewhere.test>\r\nDATA\r\n".encode())
        reader = ReplyReader()
        reader.feed(leftover)
        replies = read_replies(sock, reader, 3)
        assert [r.code for r in replies] == [250, 250, 354]
        stuffer = DotStuffer()
        sock.sendall(stuffer.stuff(f"Subject: submitted {marker}\r\n\r\n.dotted line\n".encode())
                     + stuffer.finish())
        [done] = read_replies(sock, reader, 1)
        assert done.code == 250
        sock.sendall(b"QUIT\r\n")
        assert read_replies(sock, reader, 1)[0].code == 221
    mine = [m for m in smtp_sink.wait_for(before + 1) if marker.encode() in m.data]
    assert len(mine) == 1
    assert mine[0].mail_from == user and mine[0].rcpt_tos == ("someone@elsewhere.test",)
    assert b"\n.dotted line" in mine[0].data and b"..dotted" not in mine[0].data  # stuffed, then unstuffed
    line = b2.wait_for_log(rf"submission-login: Info: Login: user=<{user}>.*").group(0)
    assert "method=PLAIN" in line and "rip=203.0.113.25" in line and f"session=<{session}>" in line
    b2.wait_for_log(rf"Master user logging in as {user}")


def test_submission_client_wrong_master_password_and_ipv6_xclient(b1: DovecotInstance) -> None:
    session = _session()
    address = _ipv6()
    client = submission.SubmissionLoginClient(
        _user(), master_user=b1.params.master_user, master_password="not-the-password",
        helo="proxy.example.test", xclient={"ADDR": address, "PORT": "40026", "SESSION": session})
    result, sock, _ = submission_login(b1, client)
    with sock:
        assert isinstance(result, submission.LoginFailed)
        assert (result.kind, result.code) == ("auth", 535)
        sock.sendall(b"QUIT\r\n")
        sock.recv(1024)
    line = b1.wait_for_log(rf"submission-login: Info: .*session=<{session}>").group(0)
    assert f"rip={address}" in line


def test_lmtp_client_delivers_to_two_recipients_in_one_transaction(
        b1: DovecotInstance, b2: DovecotInstance) -> None:
    first, second, session, marker = _user(), _user(), _session(), uuid.uuid4().hex
    address = _ipv6()
    client = lmtp.LmtpClient(lhlo_name="backend.example.test",
                             xclient={"ADDR": address, "PORT": "2525", "HELO": "mta.example.test",
                                      "SESSION": session})
    events: list[lmtp.ClientEvent] = []
    with socket.create_connection((b1.host, b1.params.lmtp_port), timeout=TIMEOUT) as sock:

        def exchange(until: Callable[[], bool]) -> None:
            while True:
                sock.sendall(client.data_to_send())
                if until():
                    return
                data = sock.recv(65536)
                events.extend(client.receive(data) if data else client.connection_lost())
                assert not any(isinstance(e, lmtp.LmtpFailure) for e in events), events

        exchange(lambda: client.ready)
        assert events == [lmtp.Ready(client.capabilities, True)]
        client.mail_from("sender@example.org")
        client.rcpt(first)
        client.rcpt(second)
        client.data_start()
        exchange(lambda: len(events) == 5)
        assert [(e.command, e.reply.code) for e in events[1:]] == [
            ("MAIL", 250), ("RCPT", 250), ("RCPT", 250), ("DATA", 354)]
        body = f"From: sender@example.org\r\nSubject: lmtp {marker}\r\n\r\n.starts with a dot\n..two\r\nend"
        encoded = body.encode()
        for index in range(0, len(encoded), 7):  # small chunks: boundaries everywhere
            client.data_chunk(encoded[index : index + 7])
        client.data_end()
        exchange(lambda: len(events) == 7)
        deliveries = events[5:]
        assert [d.recipient for d in deliveries] == [first, second]
        assert all(d.reply.code == 250 and d.reply.text.endswith("Saved") for d in deliveries)
        client.quit()
        exchange(lambda: len(events) == 8)
    for user in (first, second):
        fetched = b2.doveadm("fetch", "-u", user, "text", "mailbox", "INBOX").stdout
        assert f"Subject: lmtp {marker}" in fetched
        assert ".starts with a dot\n..two\nend" in fetched.replace("\r\n", "\n")
    b1.wait_for_log(rf"lmtp\(\d+\): Info: Disconnect from {address}")


# --------------------------------------------------------------------------- server cores vs smtplib


class CoreServer:
    """Accepts one loopback connection in a thread and runs a server core on it.

    `handle(event, conn)` answers an event and returns the events that answer released.
    After `core.state` becomes logged in, bytes go to `relayed` (QUIT is answered there)."""

    def __init__(self, core: object, handle: Callable[[object, CoreServer], list]) -> None:
        self.core = core
        self.handle = handle
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.events: list = []
        self.relayed = bytearray()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.conn, _ = self.listener.accept()
            self.conn.settimeout(TIMEOUT)
            self.conn.sendall(self.core.greeting())
            self._serve()
        except BaseException as exc:  # reported by join()
            self.errors.append(exc)
        finally:
            if self.conn is not None:
                self.conn.close()
            self.listener.close()

    def _serve(self) -> None:
        assert self.conn is not None
        while True:
            data = self.conn.recv(65536)
            if not data:
                return
            if getattr(self.core, "state", None) is submission.ServerState.LOGGED_IN:
                if self._relay(data):
                    return
                continue
            pending = list(self.core.receive(data))
            closing = False
            while pending:
                event = pending.pop(0)
                self.events.append(event)
                closing = closing or type(event).__name__ == "Close"
                pending += self.handle(event, self)
            self.conn.sendall(self.core.data_to_send())
            logged_in = getattr(self.core, "state", None) is submission.ServerState.LOGGED_IN
            if logged_in and self._relay(self.core.leftover()):
                return
            if closing:
                return

    def _relay(self, data: bytes) -> bool:
        assert self.conn is not None
        self.relayed += data
        if self.relayed.upper().endswith(b"QUIT\r\n"):  # smtplib sends `quit`
            self.conn.sendall(b"221 2.0.0 Bye\r\n")
            return True
        return False

    def join(self) -> None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "server thread still running"
        if self.errors:
            raise self.errors[0]


def answer_login(event: object, server: CoreServer) -> list:
    core = server.core
    assert isinstance(core, submission.SubmissionLoginServer)
    if isinstance(event, submission.LoginRequest):
        if (event.username, event.password) == ("alice@example.test", "right password"):
            core.login_succeeded(submission.LOGGED_IN)
            return []
        return core.login_failed(None, submission.AUTH_FAILED)
    return []


def test_submission_server_core_with_smtplib_login() -> None:
    core = submission.SubmissionLoginServer(hostname="proxy.example.test", starttls=False, secured=False,
                                            allow_cleartext=True)
    server = CoreServer(core, answer_login)
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname=CLIENT_NAME, timeout=TIMEOUT) as smtp:
        code, _ = smtp.ehlo()
        assert code == 250
        assert {"8bitmime", "enhancedstatuscodes", "pipelining", "size", "auth"} <= set(smtp.esmtp_features)
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            smtp.sendmail("a@example.test", ["b@example.test"], b"Subject: x\r\n\r\ny\r\n")
        assert refused.value.smtp_code == 530
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            smtp.login("alice@example.test", "wrong password")
        assert failed.value.smtp_code == 535
        smtp.user, smtp.password = "alice@example.test", "right password"
        code, text = smtp.auth("LOGIN", smtp.auth_login)  # with the user name as initial response
        assert (code, text) == (235, b"2.7.0 Logged in.")
        smtp.quit()
    server.join()
    requests = [e for e in server.events if isinstance(e, submission.LoginRequest)]
    # smtplib's login() tries PLAIN, then LOGIN, before giving up
    assert [(r.mechanism, r.ehlo_name) for r in requests] == [
        ("PLAIN", "client.example.test"), ("LOGIN", "client.example.test"), ("LOGIN", "client.example.test")]
    assert requests[2].password == "right password" and "right password" not in repr(requests[2])
    assert bytes(server.relayed) == b"quit\r\n"


def test_submission_server_core_starttls_with_smtplib(tmp_path: Path) -> None:
    pair = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pair.cert, pair.key)
    core = submission.SubmissionLoginServer(hostname="proxy.example.test", starttls=True, secured=False,
                                            allow_cleartext=False)

    def handle(event: object, server: CoreServer) -> list:
        if isinstance(event, submission.StartTlsRequest):
            assert server.conn is not None
            server.conn.sendall(core.data_to_send())
            server.conn = server_tls.wrap_socket(server.conn, server_side=True)
            core.tls_started()
            return []
        return answer_login(event, server)

    server = CoreServer(core, handle)
    client_tls = ssl.create_default_context(cafile=str(pair.cert))
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname=CLIENT_NAME, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        assert "starttls" in smtp.esmtp_features and "auth" not in smtp.esmtp_features
        code, _ = smtp.starttls(context=client_tls)
        assert code == 220
        smtp.ehlo()
        assert "starttls" not in smtp.esmtp_features and "auth" in smtp.esmtp_features
        assert smtp.login("alice@example.test", "right password") == (235, b"2.7.0 Logged in.")
        smtp.quit()
    server.join()
    assert any(isinstance(e, submission.StartTlsRequest) for e in server.events)


def test_lmtp_server_core_with_smtplib_lmtp() -> None:
    core = lmtp.LmtpServer(hostname="proxy.example.test", max_size=2000)
    received: list[bytes] = []
    body = bytearray()

    def handle(event: object, server: CoreServer) -> list:
        if isinstance(event, lmtp.RcptRequest):
            if event.address.startswith("unknown"):
                return core.rcpt_reply(f"550 5.1.1 <{event.address}> User doesn't exist: {event.address}")
            return core.rcpt_reply(lmtp.RCPT_OK)
        if isinstance(event, lmtp.DataChunk):
            body.extend(event.data)
        if isinstance(event, lmtp.DataEnd):
            received.append(bytes(body))
            body.clear()
            quota = event.recipients[0].startswith("full")
            reply = f"452 4.2.2 <{event.recipients[0]}> Quota exceeded" if quota else (
                f"250 2.0.0 <{event.recipients[0]}> s1 Saved")
            return core.data_replies([reply])
        return []

    server = CoreServer(core, handle)
    message = b"Subject: via lmtp\r\n\r\n.leading dot\r\n..two dots\r\nlast\r\n"
    with smtplib.LMTP("127.0.0.1", server.port, local_hostname="mta.example.test", timeout=TIMEOUT) as client:
        code, _ = client.ehlo()  # LMTP sends LHLO
        assert code == 250 and client.does_esmtp
        assert client.esmtp_features["size"] == "2000"
        recipients = ["known@example.test", "unknown@example.test"]
        refused = client.sendmail("sender@example.org", recipients, message)
        assert refused == {"unknown@example.test": (550, b"5.1.1 <unknown@example.test> User doesn't exist: "
                                                         b"unknown@example.test")}
        with pytest.raises(smtplib.SMTPDataError) as quota:
            client.sendmail("sender@example.org", ["full@example.test"], message)
        assert quota.value.smtp_code == 452
        with pytest.raises(smtplib.SMTPSenderRefused) as too_big:
            client.sendmail("sender@example.org", ["known@example.test"], b"x" * 3000)
        assert too_big.value.smtp_code == 552
        client.quit()
    server.join()
    assert received == [message, message]
    envelope = [(type(e).__name__, getattr(e, "address", None)) for e in server.events
                if isinstance(e, (lmtp.MailFrom, lmtp.RcptRequest))]
    assert envelope == [("MailFrom", "sender@example.org"), ("RcptRequest", "known@example.test"),
                        ("RcptRequest", "unknown@example.test"), ("MailFrom", "sender@example.org"),
                        ("RcptRequest", "full@example.test")]
