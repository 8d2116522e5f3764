"""Mail delivery through the cluster: LMTP via HAProxy and the palomar proxies, fanned out per
recipient to the palomar backends and their Dovecot LMTP, read back over IMAP through the cluster.

Real processes throughout: HAProxy, two `palomar proxy`, two `palomar backend`, two Dovecot CE
sharing one mail root. Backends are killed with SIGKILL (their Dovecot, or the palomar service)
before and during DATA; no mail may be lost or stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import json
import re
import smtplib
import socket
import subprocess
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.clients import tls_context

from palomar.devcluster.cluster import SITE, BackendNode, LocalCluster
from palomar.devcluster.net import wait_until
from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB

CLIENT_SOURCE = "127.0.0.97"
MAX_SIZE = 1 << 20
PINNED = "pinned@example.test"
TIMEOUT = 30


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(
        harness_root / "lmtp-cluster", auth_failure_delay="100 ms", users_count=12, stats_interval="1 secs",
        extra_passwd_lines=(f"{PINNED}:{{PLAIN}}unused::::::host=127.0.0.3",),
        # Backends are killed on purpose here: keep them online so the failures stay 4xx (no failover).
        proxy_settings={"*": ("cluster_proxy_check_backends = no",), "proxy1": ("cluster_lmtp_max_mail_size = 1M",),
                        "proxy2": ("cluster_lmtp_max_mail_size = 64M",)},
    )
    c.start()
    placed = [u.name for u in c.users]
    with RawLmtp(c.lb_host, c.lb_lmtp) as lmtp:  # every user gets a group and a backend
        replies = lmtp.transaction("placement@example.test", placed, message("placement"))
        assert [code for code, _ in replies] == [250] * len(placed)
    yield c
    c.stop()


# --------------------------------------------------------------------------- helpers


def message(subject: str, body: bytes = b"body\r\n") -> bytes:
    return (f"From: sender@example.org\r\nTo: someone@example.test\r\nSubject: {subject}\r\n"
            "Message-ID: <" + uuid.uuid4().hex + "@example.org>\r\n\r\n").encode() + body


def dot_stuff(data: bytes) -> bytes:
    return re.sub(rb"(?m)^\.", b"..", data)


class RawLmtp:
    """A plain LMTP client: one reply per accepted recipient after DATA; the envelope is sent one
    command at a time, or pipelined (MAIL and every RCPT in one write)."""

    def __init__(self, host: str, port: int, *, lhlo: str = "mta.example.test") -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT, source_address=(CLIENT_SOURCE, 0))
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()
        self.capabilities = self.cmd(f"LHLO {lhlo}")

    def __enter__(self) -> RawLmtp:
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(OSError):
            self.cmd("QUIT")
        self.sock.close()

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(lines[-1][:3]), "\n".join(text[4:] for text in lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str) -> tuple[int, str]:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def envelope(self, sender: str, recipients: list[str], *, pipelined: bool = False) -> list[tuple[int, str]]:
        if not pipelined:
            assert self.cmd(f"MAIL FROM:<{sender}>")[0] == 250
            return [self.cmd(f"RCPT TO:<{rcpt}>") for rcpt in recipients]
        self.send(f"MAIL FROM:<{sender}>\r\n".encode() + b"".join(f"RCPT TO:<{rcpt}>\r\n".encode()
                                                                  for rcpt in recipients))
        assert self.reply()[0] == 250
        return [self.reply() for _ in recipients]

    def data(self, body: bytes, count: int, *, midway: Callable[[], None] | None = None) -> list[tuple[int, str]]:
        """DATA; with `midway`, half of the message is sent, then midway() runs, then the rest."""
        code, text = self.cmd("DATA")
        assert code == 354, text
        payload = dot_stuff(body) + b".\r\n"
        half = len(payload) // 2 if midway else len(payload)
        self.send(payload[:half])
        if midway is not None:
            midway()
        self.send(payload[half:])
        return [self.reply() for _ in range(count)]

    def transaction(self, sender: str, recipients: list[str], body: bytes, *, pipelined: bool = False
                    ) -> list[tuple[int, str]]:
        accepted = [code for code, _ in self.envelope(sender, recipients, pipelined=pipelined) if code == 250]
        return self.data(body, len(accepted))


def password(cluster: LocalCluster, user: str) -> str:
    return next(u.password for u in cluster.users if u.name == user)


def mailbox(cluster: LocalCluster, user: str, subject: str) -> list[bytes]:
    """The messages in `user`'s INBOX with `subject`, read over IMAP through HAProxy and a proxy."""
    with imaplib.IMAP4_SSL(cluster.lb_host, cluster.lb_imaps, ssl_context=tls_context(), timeout=TIMEOUT) as imap:
        imap.login(user, password(cluster, user))
        imap.select("INBOX", readonly=True)
        _, data = imap.search(None, "HEADER", "Subject", f'"{subject}"')
        messages = []
        for number in data[0].split():
            _, fetched = imap.fetch(number, "(BODY.PEEK[])")
            messages.append(fetched[0][1])
        return messages


_PLACEMENT: dict[int, dict[str, list[str]]] = {}


def users_by_backend(cluster: LocalCluster) -> dict[str, list[str]]:
    """Backend host -> its demo users (placement does not change here: backends never go offline)."""
    if id(cluster) not in _PLACEMENT:
        _PLACEMENT[id(cluster)] = _users_by_backend(cluster)
    return _PLACEMENT[id(cluster)]


def _users_by_backend(cluster: LocalCluster) -> dict[str, list[str]]:
    groups = {g["name"]: g["backend"] for g in json.loads(cluster.cluster("--json", "group", "list").stdout)}
    placed: dict[str, list[str]] = {}
    for user in cluster.users:
        group = json.loads(cluster.cluster("--json", "user", "status", user.name).stdout)["group"]
        placed.setdefault(groups[group], []).append(user.name)
    assert len(placed) == 2, f"the demo users should live on both backends: {placed}"
    return placed


def assert_delivered_as_sent(stored: bytes, sent: bytes) -> None:
    """Dovecot only prepends its trace headers; everything the MTA sent is there byte for byte."""
    assert stored.endswith(sent)
    trace = stored[: len(stored) - len(sent)].decode()
    assert all(re.match(r"(Return-Path|Delivered-To|Received):|[ \t]", line)
               for line in trace.split("\r\n") if line), trace


# --------------------------------------------------------------------------- delivery


def test_smtplib_lmtp_through_haproxy_delivers_byte_for_byte(cluster: LocalCluster) -> None:
    user = cluster.users[0].name
    subject = f"smtplib {uuid.uuid4().hex}"
    body = (b"Line one\r\n.starts with a dot\r\n..two dots\r\n.\r\n"
            b"8bit: \xc3\xa4\xc3\xb6\xc3\xbc \xe2\x82\xac\r\n" + b"x" * 998 + b"\r\nend\r\n")
    sent = message(subject, body)
    with smtplib.LMTP(cluster.lb_host, cluster.lb_lmtp, local_hostname="mta.example.test", timeout=TIMEOUT,
                      source_address=(CLIENT_SOURCE, 0)) as lmtp:
        code, _ = lmtp.ehlo()
        assert code == 250
        for extension in ("pipelining", "enhancedstatuscodes", "8bitmime", "chunking"):
            assert lmtp.has_extn(extension), extension
        assert lmtp.esmtp_features["size"] in (str(MAX_SIZE), str(64 << 20))
        refused = lmtp.sendmail("sender@example.org", [user], sent, mail_options=["BODY=8BITMIME"])
        assert refused == {}
    [stored] = mailbox(cluster, user, subject)
    assert_delivered_as_sent(stored, sent)
    # The MTA's address and LHLO name reached Dovecot (XCLIENT at the backend): its Received header.
    received = stored.split(b"\r\n\r\n", 1)[0].decode()
    assert re.search(r"Received: from mta\.example\.test \(\[127\.0\.0\.97\]\)", received), received


def test_swaks_lmtp_through_haproxy(cluster: LocalCluster, tmp_path: Path) -> None:
    users = [cluster.users[1].name, cluster.users[2].name]
    subject = f"swaks {uuid.uuid4().hex}"
    sent = message(subject, b"sent by swaks\r\n.dot line\r\n")
    path = tmp_path / "message.eml"
    path.write_bytes(sent.removesuffix(b"\r\n"))  # swaks ends the data with CRLF . CRLF itself
    result = subprocess.run(
        ["swaks", "--protocol", "LMTP", "--server", f"{cluster.lb_host}:{cluster.lb_lmtp}",
         "--local-interface", CLIENT_SOURCE, "--helo", "swaks.example.test", "--from", "swaks@example.org",
         "--to", ",".join(users), "--data", f"@{path}", "--timeout", "30"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(re.findall(r"<-  250 2\.0\.0 <", result.stdout)) == 2, result.stdout
    for user in users:
        [stored] = mailbox(cluster, user, subject)
        assert_delivered_as_sent(stored, sent)


def test_one_transaction_fans_out_to_both_backends_exactly_once(cluster: LocalCluster) -> None:
    placed = users_by_backend(cluster)
    first, second = sorted(placed)
    a, b = placed[first][:2], placed[second][:2]
    recipients = [a[0], b[0], "nobody@example.test", a[-1], b[-1]]
    subject = f"fanout {uuid.uuid4().hex}"
    with RawLmtp(cluster.lb_host, cluster.lb_lmtp) as lmtp:
        rcpt = lmtp.envelope("fanout@example.org", recipients)
        assert [code for code, _ in rcpt] == [250, 250, 550, 250, 250]
        assert rcpt[2][1] == "5.1.1 <nobody@example.test> User doesn't exist: nobody@example.test"
        replies = lmtp.data(message(subject), 4)
    accepted = [r for r in recipients if r != "nobody@example.test"]
    assert [code for code, _ in replies] == [250] * 4
    assert [re.match(r"2\.0\.0 <([^>]+)>", text).group(1) for _, text in replies] == accepted
    for user in set(accepted):
        expected = accepted.count(user)
        assert len(mailbox(cluster, user, subject)) == expected, user


@pytest.mark.parametrize("pipelined", [False, True])
def test_referred_recipient_is_followed_to_its_backend(cluster: LocalCluster, pipelined: bool) -> None:
    """The passdb pins PINNED to 127.0.0.3, its group lives on 127.0.0.2: that backend refers the RCPT.
    Pipelined, the referred RCPT goes to 127.0.0.2 behind the owner's RCPT already on that hop: each
    reply still reaches its own recipient, in RCPT order."""
    placed = users_by_backend(cluster)
    owner = placed["127.0.0.2"][0]
    group = json.loads(cluster.cluster("--json", "user", "status", owner).stdout)["group"]
    cluster.cluster("user", "move", "--direct", PINNED, group)
    subject = f"referral {uuid.uuid4().hex}"
    with RawLmtp(cluster.lb_host, cluster.lb_lmtp) as lmtp:
        envelope = lmtp.envelope("referral@example.org", [PINNED, owner], pipelined=pipelined)
        assert [code for code, _ in envelope] == [250, 250]
        replies = lmtp.data(message(subject), 2)
    assert [code for code, _ in replies] == [250, 250]
    assert f"<{PINNED}>" in replies[0][1] and f"<{owner}>" in replies[1][1]
    log = (cluster.backends[1].log_path).read_text()
    assert re.search(rf"rcpt={re.escape(PINNED)} referred to 127\.0\.0\.2", log)
    assert len(mailbox(cluster, owner, subject)) == 1
    cluster.backends[0].dovecot.wait_for_log(r"lmtp\(pinned@example\.test\).*saved mail to INBOX")


# --------------------------------------------------------------------------- refusals


def test_unknown_recipient_malformed_commands_and_oversized_data(cluster: LocalCluster) -> None:
    user = cluster.users[3].name
    subject = f"refusals {uuid.uuid4().hex}"
    proxy = cluster.proxies[0]  # the plain listener of the proxy with the 1M limit
    with RawLmtp(proxy.host, proxy.lmtp) as lmtp:
        assert "SIZE 1048576" in lmtp.capabilities[1]
        assert lmtp.cmd("HELLO there")[0] == 500
        assert lmtp.cmd("MAIL FROM:no-brackets")[0] == 501
        assert lmtp.cmd("RCPT TO:<a@example.test>")[0] == 503
        assert lmtp.cmd(f"MAIL FROM:<big@example.org> SIZE={MAX_SIZE + 1}")[0] == 552
        assert lmtp.cmd("MAIL FROM:<x@example.org> SMTPUTF8")[0] == 555
        assert lmtp.cmd("MAIL FROM:<big@example.org>")[0] == 250
        assert lmtp.cmd("RCPT TO:<unknown@example.test>") == (
            550, "5.1.1 <unknown@example.test> User doesn't exist: unknown@example.test")
        assert lmtp.cmd("RCPT TO:<bad address>")[0] == 501
        assert lmtp.cmd(f"RCPT TO:<{user}>")[0] == 250
        too_big = message(subject, b"y" * 1000 + b"\r\n") + (b"z" * 998 + b"\r\n") * (MAX_SIZE // 1000)
        [(code, text)] = lmtp.data(too_big, 1)
        assert (code, text) == (552, f"5.3.4 <{user}> Message size exceeds fixed maximum message size")
        assert lmtp.cmd("NOOP")[0] == 250
        # Still serving: the next transaction on the same connection is delivered.
        assert [c for c, _ in lmtp.transaction("ok@example.org", [user], message(subject))] == [250]
    assert len(mailbox(cluster, user, subject)) == 1


def test_bdat_chunks_are_delivered_as_one_message(cluster: LocalCluster) -> None:
    user = cluster.users[4].name
    subject = f"bdat {uuid.uuid4().hex}"
    sent = message(subject, b".leading dot stays single\r\nlast\r\n")
    with RawLmtp(cluster.lb_host, cluster.lb_lmtp) as lmtp:
        lmtp.envelope("bdat@example.org", [user])
        lmtp.send(b"BDAT 20\r\n" + sent[:20])
        assert lmtp.reply()[0] == 250
        rest = sent[20:]
        lmtp.send(f"BDAT {len(rest)} LAST\r\n".encode() + rest)
        assert lmtp.reply()[0] == 250
    [stored] = mailbox(cluster, user, subject)
    assert_delivered_as_sent(stored, sent)


def test_pipelined_envelope_gets_replies_in_order(cluster: LocalCluster) -> None:
    placed = users_by_backend(cluster)
    a, b = (users[-1] for users in placed.values())
    subject = f"pipelined {uuid.uuid4().hex}"
    sent = message(subject)
    with RawLmtp(cluster.lb_host, cluster.lb_lmtp) as lmtp:
        lmtp.send(f"MAIL FROM:<p@example.org>\r\nRCPT TO:<{a}>\r\nRCPT TO:<nobody@example.test>\r\n"
                  f"RCPT TO:<{b}>\r\nDATA\r\n".encode() + dot_stuff(sent) + b".\r\nNOOP\r\n")
        replies = [lmtp.reply() for _ in range(8)]
    assert [code for code, _ in replies] == [250, 250, 550, 250, 354, 250, 250, 250]
    assert f"<{a}>" in replies[5][1] and f"<{b}>" in replies[6][1]
    for user in (a, b):
        assert len(mailbox(cluster, user, subject)) == 1


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


def test_large_message_is_streamed_not_held_per_backend(cluster: LocalCluster) -> None:
    """30 MB to two backends: the proxy's and the backends' peak memory grow by far less than a copy."""
    placed = users_by_backend(cluster)
    recipients = [users[0] for users in placed.values()]
    subject = f"large {uuid.uuid4().hex}"
    line = b"".join(bytes([65 + (i % 26)]) for i in range(76)) + b"\r\n"
    sent = message(subject, line * ((30 << 20) // len(line)))
    proxy = cluster.proxies[1]  # the proxy with the 64M limit
    watched = [proxy.proc.pid, *(node.proc.pid for node in cluster.backends)]
    before = [peak_rss(pid) for pid in watched]
    with RawLmtp(proxy.host, proxy.lmtp) as lmtp:
        assert [code for code, _ in lmtp.transaction("large@example.org", recipients, sent)] == [250, 250]
    growth = [peak_rss(pid) - old for pid, old in zip(watched, before, strict=True)]
    assert all(grown < 12 << 20 for grown in growth), growth
    for user in recipients:
        [stored] = mailbox(cluster, user, subject)
        assert_delivered_as_sent(stored, sent)


# --------------------------------------------------------------------------- failures


def kill_and_restart(cluster: LocalCluster, what: str) -> tuple[Callable[[BackendNode], None],
                                                                 Callable[[BackendNode], None]]:
    if what == "dovecot":
        return cluster.kill_dovecot, lambda node: node.dovecot.start()
    return cluster.kill_backend_service, cluster.restart_backend


@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("when", ["before-data", "during-data"])
@pytest.mark.parametrize("what", ["dovecot", "backend-service"])
def test_killed_backend_gets_4xx_and_a_retry_delivers_exactly_once(cluster: LocalCluster, what: str,
                                                                   when: str, pipelined: bool) -> None:
    placed = users_by_backend(cluster)
    victim = cluster.backends[0]
    doomed, safe = placed[victim.host][:2], next(users for host, users in placed.items() if host != victim.host)[:2]
    recipients = [doomed[0], safe[0], doomed[1], safe[1]]
    subject = f"kill {what} {when} {uuid.uuid4().hex}"
    sent = message(subject, (b"0123456789" * 99 + b"\r\n") * 300)  # ~300 kB, streamed
    kill, restart = kill_and_restart(cluster, what)
    with RawLmtp(cluster.lb_host, cluster.lb_lmtp) as lmtp:
        try:
            assert [code for code, _ in lmtp.envelope("kill@example.org", recipients, pipelined=pipelined)] == [250] * 4
            if when == "before-data":
                kill(victim)
                replies = lmtp.data(sent, 4)
            else:
                replies = lmtp.data(sent, 4, midway=lambda: kill(victim))
        finally:
            restart(victim)
        codes = dict(zip(recipients, (code for code, _ in replies), strict=True))
        assert {user: codes[user] // 100 for user in recipients} == {
            doomed[0]: 4, safe[0]: 2, doomed[1]: 4, safe[1]: 2}, replies
        for (code, text), user in zip(replies, recipients, strict=True):
            if code != 250:  # the proxy's 4.4.0, or what the dying Dovecot said (421 4.3.2 Shutting down)
                assert re.match(rf"4\.\d\.\d <{re.escape(user)}> ", text), text
        for user in doomed:
            assert mailbox(cluster, user, subject) == [], f"{user} got a copy although the MTA got a 4xx"
        # The MTA retries the 4xx recipients on the same connection: the proxy replaces its dead hop.
        assert [code for code, _ in lmtp.transaction("kill@example.org", doomed, sent, pipelined=pipelined)] == [250, 250]
    for user in recipients:
        [stored] = mailbox(cluster, user, subject)
        assert_delivered_as_sent(stored, sent)


def test_dovecot_lost_between_recipients_fails_the_whole_transaction(cluster: LocalCluster) -> None:
    """The gateway's Dovecot session dies after it accepted a recipient: a fresh session for the next
    recipient would not know the first one, and the replies after DATA would be attributed to the
    wrong recipients. So the rest of the transaction is refused (4xx) and the MTA retries it."""
    placed = users_by_backend(cluster)
    victim = cluster.backends[0]
    first, second = placed[victim.host][:2]
    subject = f"lost between rcpts {uuid.uuid4().hex}"
    sent = message(subject)
    with RawLmtp(cluster.lb_host, cluster.lb_lmtp) as lmtp:
        assert [code for code, _ in lmtp.envelope("lost@example.org", [first])] == [250]
        try:
            cluster.kill_dovecot(victim)
        finally:
            victim.dovecot.start()  # up again: a new session to it would work
        code, text = lmtp.cmd(f"RCPT TO:<{second}>")
        assert code == 451 and re.match(rf"4\.4\.0 <{re.escape(second)}> Proxy failed", text), text
        [(code, text)] = lmtp.data(sent, 1)
        assert code == 451 and re.match(rf"4\.4\.0 <{re.escape(first)}> Proxy failed", text), text
        for user in (first, second):
            assert mailbox(cluster, user, subject) == [], f"{user} got a copy although the MTA got a 4xx"
        assert [code for code, _ in lmtp.transaction("lost@example.org", [first, second], sent)] == [250, 250]
    for user in (first, second):
        [stored] = mailbox(cluster, user, subject)
        assert_delivered_as_sent(stored, sent)


def proxy_dest_stats(cluster: LocalCluster) -> dict[tuple[str, str], float]:
    """(dest_host, key) -> value summed over the proxies, straight from the GeoDB."""
    async def main() -> dict[tuple[str, str], float]:
        engine = open_engine("sqlite", path=str(cluster.geodb_path))
        await engine.open()
        try:
            db = GeoDB(engine)
            site = await db.site_get_by_name(SITE)
            assert site is not None
            totals: dict[tuple[str, str], float] = {}
            for row in await db.proxy_dest_stats_list(site.id):
                totals[(row.dest_host, row.key)] = totals.get((row.dest_host, row.key), 0.0) + row.value
            return totals
        finally:
            await engine.close()

    return asyncio.run(main())


def metrics_text(cluster: LocalCluster) -> str:
    text = ""
    for proxy in cluster.proxies:
        with urllib.request.urlopen(f"http://{proxy.host}:{proxy.metrics}/metrics", timeout=TIMEOUT) as response:
            text += response.read().decode()
    return text


def test_metrics_and_log_lines_count_recipients_by_destination(cluster: LocalCluster) -> None:
    placed = users_by_backend(cluster)
    recipients = [users[0] for users in placed.values()]
    with RawLmtp(cluster.lb_host, cluster.lb_lmtp) as lmtp:
        assert lmtp.envelope("metrics@example.org", ["unknown-metrics@example.test"])[0][0] == 550
        assert lmtp.cmd("RSET")[0] == 250
        assert [code for code, _ in lmtp.transaction("metrics@example.org", recipients, message("metrics"))] == [
            250, 250]
    success = re.findall(r'dovecot_lmtp_rcpt_finished_success_total\{dest_host="(127\.0\.0\.\d)"\} (\d+)',
                         metrics_text(cluster))
    assert {host for host, _ in success} == {"127.0.0.2", "127.0.0.3"}
    assert sum(int(count) for _, count in success) >= len(cluster.users) + 2
    logs = "".join(p.log_path.read_text() for p in cluster.proxies)
    assert re.search(r"event=smtp_server_transaction_rcpt_finished session=\S+ rcpt=unknown-metrics@example\.test "
                     r"dest_host=- status_code=550 enhanced_code=5\.1\.1", logs)
    for host, users in placed.items():
        assert re.search(rf"rcpt={re.escape(users[0])} dest_host={re.escape(host)} status_code=250 "
                         r"enhanced_code=2\.0\.0", logs)
    wait_until(lambda: all(proxy_dest_stats(cluster).get((host, "lmtp_rcpt_success"), 0) >= 1 for host in placed),
               15, "lmtp_rcpt_success in proxy_dest_stats")
