"""Protocol details where palomar must behave as Dovecot CE 2.3 does, with real clients.

One cluster, three proxies that differ in one setting each: proxy1 has the defaults plus
login_trusted_networks, imap_id_log and imap_id_retain; proxy2 normalises user names with
`auth_username_format = %Ln`, proxy3 with `%Ln@example.test`. Clients talk to the proxies'
own listeners (no HAProxy), from 127.0.0.50 (untrusted) or 127.0.0.77 (trusted).
"""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib
import socket
import uuid
from pathlib import Path

import pytest
from harness.clients import IMAP4From, backend_of, imap_id

from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.net import wait_until

UNTRUSTED = "127.0.0.50"
TRUSTED = "127.0.0.77"


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(
        harness_root / "fidelity-cluster", proxies_count=3, allow_cleartext=True, auth_failure_delay="100 ms",
        extra_passwd_lines=("bare:{PLAIN}barepw",),
        proxy_settings={
            "proxy1": (f"login_trusted_networks = {TRUSTED}/32", "imap_id_log = *", "imap_id_retain = yes"),
            "proxy2": ("auth_username_format = %Ln",),
            "proxy3": ("auth_username_format = %Ln@example.test",),
        },
    )
    c.start()
    yield c
    c.stop()


def proxy(cluster: LocalCluster, name: str):
    return next(p for p in cluster.proxies if p.name == name)


def dovecot_of(cluster: LocalCluster, host: str):
    return next(b.dovecot for b in cluster.backends if b.host == host)


def any_dovecot_log(cluster: LocalCluster, pattern: str) -> re.Match[str]:
    found: list[re.Match[str]] = []

    def seen() -> bool:
        for backend in cluster.backends:
            match = re.search(pattern, backend.dovecot.log_text(), re.MULTILINE)
            if match:
                found.append(match)
                return True
        return False

    wait_until(seen, 10.0, f"{pattern!r} in a Dovecot log")
    return found[0]


# --- 1. LMTP subaddresses ------------------------------------------------------------------------


def test_lmtp_subaddress_is_delivered_once_to_the_user_with_its_detail(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    subject = f"subaddress {uuid.uuid4().hex}"
    message = f"From: a@example.test\r\nTo: user3+tag@example.test\r\nSubject: {subject}\r\n\r\nhello\r\n"
    with smtplib.LMTP(node.host, node.lmtp, source_address=(UNTRUSTED, 0)) as lmtp:
        refused = lmtp.sendmail("a@example.test", ["user3+tag@example.test"], message)
    assert refused == {}
    imap = IMAP4From(node.host, node.imap, source=UNTRUSTED)
    imap.login("user3@example.test", "password3")
    imap.select("INBOX")
    typ, data = imap.search(None, "SUBJECT", f'"{subject}"')
    numbers = data[0].split()
    assert typ == "OK" and len(numbers) == 1
    _, fetched = imap.fetch(numbers[0], "(RFC822.HEADER)")
    imap.logout()
    assert b"<user3+tag@example.test>" in fetched[0][1]  # Dovecot saw the whole address


def test_lmtp_unknown_user_with_detail_is_still_refused(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    with smtplib.LMTP(node.host, node.lmtp, source_address=(UNTRUSTED, 0)) as lmtp:
        lmtp.ehlo("mta.example.test")
        lmtp.mail("a@example.test")
        code, text = lmtp.rcpt("nobody+tag@example.test")
    assert code == 550 and b"5.1.1" in text


# --- 2. auth_username_format ---------------------------------------------------------------------


@pytest.mark.parametrize(("proxy_name", "login", "password", "routed_as"), [
    ("proxy2", "Bare@Some.Test", "barepw", "bare"),
    ("proxy3", "User7@Other.Test", "password7", "user7@example.test"),
    ("proxy1", "USER6@Example.Test", "password6", "user6@example.test"),
])
def test_auth_username_format_applies_to_passdb_and_routing(cluster: LocalCluster, proxy_name: str, login: str,
                                                            password: str, routed_as: str) -> None:
    node = proxy(cluster, proxy_name)
    imap = IMAP4From(node.host, node.imap, source=UNTRUSTED)
    assert imap.login(login, password)[0] == "OK"
    imap.logout()
    host = backend_of(cluster, routed_as)
    dovecot_of(cluster, host).wait_for_log(rf"Login: user=<{re.escape(routed_as)}>")


def test_default_format_does_not_strip_the_domain(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    imap = IMAP4From(node.host, node.imap, source=UNTRUSTED)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap.login("Bare@Some.Test", "barepw")
    imap.logout()


# --- 3. login_trusted_networks -------------------------------------------------------------------


def test_trusted_peer_forwards_the_client_address_by_imap_id(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    imap = IMAP4From(node.host, node.imap, source=TRUSTED)
    typ, _ = imap_id(imap, {"x-originating-ip": "198.51.100.7", "x-originating-port": "4242",
                            "x-connected-ip": "192.0.2.1", "x-session-id": "fwdsession0001"})
    assert typ == "OK"
    imap.login("user8@example.test", "password8")
    imap.logout()
    dovecot_of(cluster, backend_of(cluster, "user8@example.test")).wait_for_log(
        r"Login: user=<user8@example\.test>.*rip=198\.51\.100\.7.*session=<fwdsession0001>")


def test_untrusted_peer_cannot_forward_an_address(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    imap = IMAP4From(node.host, node.imap, source=UNTRUSTED)
    imap_id(imap, {"x-originating-ip": "198.51.100.66", "x-session-id": "forgedsession01"})
    imap.login("user9@example.test", "password9")
    imap.logout()
    dovecot = dovecot_of(cluster, backend_of(cluster, "user9@example.test"))
    dovecot.wait_for_log(r"Login: user=<user9@example\.test>.*rip=127\.0\.0\.50")
    assert "198.51.100.66" not in dovecot.log_text() and "forgedsession01" not in dovecot.log_text()


class POP3From(poplib.POP3):
    def __init__(self, host: str, port: int, source: str) -> None:
        self._source = source
        super().__init__(host, port, timeout=10)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


def test_trusted_pop3_xclient_and_untrusted_one_ignored(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    pop = POP3From(node.host, node.pop3, TRUSTED)
    assert pop.getwelcome().startswith(b"+OK [XCLIENT] ")
    assert pop._shortcmd("XCLIENT ADDR=198.51.100.8 PORT=4343") == b"+OK Updated"
    pop.user("user10@example.test")
    pop.pass_("password10")
    pop.quit()
    dovecot_of(cluster, backend_of(cluster, "user10@example.test")).wait_for_log(
        r"Login: user=<user10@example\.test>.*rip=198\.51\.100\.8")
    other = POP3From(node.host, node.pop3, UNTRUSTED)
    assert not other.getwelcome().startswith(b"+OK [XCLIENT]")
    assert other._shortcmd("XCLIENT ADDR=198.51.100.9") == b"+OK You are not from trusted IP - ignoring"
    other.quit()


def test_trusted_submission_xclient(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    with smtplib.SMTP(node.host, node.submission, source_address=(TRUSTED, 0), timeout=10) as smtp:
        smtp.ehlo("relay.example.test")
        assert smtp.has_extn("xclient")
        code, _ = smtp.docmd("XCLIENT", "ADDR=198.51.100.10 PORT=4444")
        assert code == 220
        smtp.ehlo("relay.example.test")
        smtp.login("user11@example.test", "password11")
    dovecot_of(cluster, backend_of(cluster, "user11@example.test")).wait_for_log(
        r"user=<user11@example\.test>.*rip=198\.51\.100\.10")
    with smtplib.SMTP(node.host, node.submission, source_address=(UNTRUSTED, 0), timeout=10) as smtp:
        smtp.ehlo("client.example.test")
        assert not smtp.has_extn("xclient")
        assert smtp.docmd("XCLIENT", "ADDR=198.51.100.11") == (550, b"5.7.14 You are not from trusted IP")


# --- 4. ID: RFC 2971 sizes, logged and passed on -------------------------------------------------


def test_largest_rfc2971_id_is_accepted_logged_and_passed_on(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    imap = IMAP4From(node.host, node.imap, source=UNTRUSTED)
    fields = {"name": "fidelity-client", "version": "1.0"}
    fields.update({f"x-field-{i:02d}": "v" * 1024 for i in range(28)})
    typ, data = imap_id(imap, fields)
    assert typ == "OK"
    imap.login("user12@example.test", "password12")
    imap.logout()
    log_text = node.log_path.read_text()
    assert "ID sent: name=fidelity-client, version=1.0, x-field-00=" + "v" * 77 + "..." in log_text
    dovecot_of(cluster, backend_of(cluster, "user12@example.test")).wait_for_log(
        r'ID sent: name=fidelity-client, version=1\.0, x-session-id=')


# --- 5. capabilities -----------------------------------------------------------------------------


def test_login_after_capability_sends_untagged_capabilities_as_dovecot(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    with socket.create_connection((node.host, node.imap), timeout=10, source_address=(UNTRUSTED, 0)) as sock:
        stream = sock.makefile("rwb")
        stream.readline()
        stream.write(b"a CAPABILITY\r\nb LOGIN user13@example.test password13\r\n")
        stream.flush()
        lines = []
        while not lines or not lines[-1].startswith(b"b "):
            lines.append(stream.readline())
        assert lines[2].startswith(b"* CAPABILITY IMAP4rev1 ") and b"IDLE" in lines[2]
        assert lines[3] == b"b OK Logged in\r\n"


def test_submission_pre_login_ehlo_lists_chunking_and_burl(cluster: LocalCluster) -> None:
    node = proxy(cluster, "proxy1")
    with smtplib.SMTP(node.host, node.submission, source_address=(UNTRUSTED, 0), timeout=10) as smtp:
        code, text = smtp.ehlo("client.example.test")
    assert code == 250
    assert text.split(b"\n")[1:] == [b"8BITMIME", b"AUTH PLAIN LOGIN", b"BURL imap", b"CHUNKING",
                                     b"ENHANCEDSTATUSCODES", b"SIZE", b"STARTTLS", b"PIPELINING"]
