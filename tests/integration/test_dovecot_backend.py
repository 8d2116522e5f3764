"""The generated Dovecot backend config, exercised on real Dovecot CE instances.

What palomar relies on: only the master user can log in, the client's address forwarded
with ID is believed only from trusted networks, storage is shared between backends, and
doveadm HTTP, OpenMetrics, LMTP and submission all work.
"""

from __future__ import annotations

import base64
import imaplib
import itertools
import poplib
import smtplib
import socket
import subprocess
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness.clients import IMAP4From, imap_id, imap_master_login, sasl_plain_b64

from palomar.backend.dovecot_config import hash_password
from palomar.cli.main import main
from palomar.devcluster.dovecot import DovecotInstance
from palomar.devcluster.net import wait_until
from palomar.devcluster.smtp_sink import SmtpSink


def _user() -> str:
    return f"u{uuid.uuid4().hex[:10]}@example.test"


def _session_id() -> str:
    return uuid.uuid4().hex[:16]


def _open_imap(backend: DovecotInstance, source: str | None = None) -> imaplib.IMAP4:
    return IMAP4From(backend.host, backend.params.imap_port, source=source)


_failing_clients = itertools.count(1)


def _failing_imap(backend: DovecotInstance) -> imaplib.IMAP4:
    """A connection for a login meant to fail, from its own forwarded client address.

    Dovecot delays logins from an address after failures there (auth penalty); a fresh
    address per attempt keeps one test's failures from slowing down the next.
    """
    imap = _open_imap(backend)
    imap_id(imap, {"x-originating-ip": f"198.51.100.{next(_failing_clients)}"})
    return imap


def _master_imap(backend: DovecotInstance, user: str) -> imaplib.IMAP4:
    imap = _open_imap(backend)
    imap_master_login(imap, user, backend.params.master_user, backend.params.master_password)
    return imap


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def b1(dovecot_backends: dict[str, DovecotInstance]) -> DovecotInstance:
    return dovecot_backends["backend1"]


@pytest.fixture
def b2(dovecot_backends: dict[str, DovecotInstance]) -> DovecotInstance:
    return dovecot_backends["backend2"]


def test_every_protocol_listener_greets(dovecot_backends: dict[str, DovecotInstance]) -> None:
    greetings = {"imap": b"* OK", "pop3": b"+OK", "lmtp": b"220 ", "submission": b"220 ", "sieve": b'"IMPLEMENTATION"'}
    for backend in dovecot_backends.values():
        for service, expected in greetings.items():
            port = backend.params.listeners()[service]
            with socket.create_connection((backend.host, port), timeout=10) as sock:
                assert _read_line(sock).startswith(expected), (backend, service)
        for service in ("doveadm_http", "metrics"):
            with socket.create_connection((backend.host, backend.params.listeners()[service]), timeout=10):
                pass


def test_master_login_logs_forwarded_client_address(b1: DovecotInstance) -> None:
    user, session = _user(), _session_id()
    imap = _open_imap(b1)
    typ, _ = imap_id(imap, {"x-originating-ip": "203.0.113.7", "x-originating-port": "40001",
                            "x-connected-ip": "192.0.2.10", "x-connected-port": "143",
                            "x-session-id": session})
    assert typ == "OK"
    imap_master_login(imap, user, b1.params.master_user, b1.params.master_password)
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()
    line = b1.wait_for_log(rf"imap-login: Info: Login: user=<{user}>.*session=<{session}>").group(0)
    assert "rip=203.0.113.7" in line
    assert "lip=192.0.2.10" in line
    b1.wait_for_log(rf"Master user logging in as {user}")
    b1.wait_for_log(rf"ID sent: .*x-originating-ip=203\.0\.113\.7.*session=<{session}>")


def test_forwarded_address_ignored_from_untrusted_source(b1: DovecotInstance) -> None:
    user, session = _user(), _session_id()
    imap = _open_imap(b1, source="127.0.0.99")
    imap_id(imap, {"x-originating-ip": "203.0.113.8", "x-session-id": session})
    imap_master_login(imap, user, b1.params.master_user, b1.params.master_password)
    imap.logout()
    line = b1.wait_for_log(rf"imap-login: Info: Login: user=<{user}>.*").group(0)
    assert "rip=127.0.0.99" in line
    assert "203.0.113.8" not in line


def test_wrong_master_password_is_refused(b1: DovecotInstance) -> None:
    imap = _failing_imap(b1)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_master_login(imap, _user(), b1.params.master_user, b1.params.master_password + "x")
    imap.logout()


def test_only_the_master_user_can_log_in(b1: DovecotInstance) -> None:
    user = _user()
    imap = _failing_imap(b1)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap.login(user, "any-password")
    imap.logout()
    imap = _failing_imap(b1)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_master_login(imap, "", user, "any-password")
    imap.logout()
    # The master password is no good under another user name either.
    imap = _failing_imap(b1)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap.login(user, b1.params.master_password)
    imap.logout()
    b1.wait_for_log(r"User found from deny passdb")


def test_master_login_over_pop3_and_managesieve(b1: DovecotInstance) -> None:
    user = _user()
    pop = poplib.POP3(b1.host, b1.params.pop3_port, timeout=10)
    pop._shortcmd("AUTH PLAIN " + sasl_plain_b64(user, b1.params.master_user, b1.params.master_password))
    assert pop.stat() == (0, 0)
    pop.quit()
    with socket.create_connection((b1.host, b1.params.sieve_port), timeout=10) as sock:
        while not _read_line(sock).startswith(b"OK"):
            pass
        token = sasl_plain_b64(user, b1.params.master_user, b1.params.master_password)
        sock.sendall(f'AUTHENTICATE "PLAIN" "{token}"\r\n'.encode())
        assert _read_line(sock).startswith(b"OK")
        sock.sendall(b"LISTSCRIPTS\r\n")
        assert _read_line(sock).startswith(b"OK")


def test_lmtp_delivery_is_read_on_the_other_backend(b1: DovecotInstance, b2: DovecotInstance) -> None:
    user, subject = _user(), f"shared storage {uuid.uuid4().hex}"
    message = EmailMessage()
    message["From"] = "sender@example.test"
    message["To"] = user
    message["Subject"] = subject
    message.set_content("delivered on backend1, read on backend2\n")
    with smtplib.LMTP(b1.host, b1.params.lmtp_port, timeout=10) as lmtp:
        refused = lmtp.send_message(message, from_addr="sender@example.test", to_addrs=[user])
    assert refused == {}
    imap = _master_imap(b2, user)
    typ, count = imap.select("INBOX")
    assert (typ, count) == ("OK", [b"1"])
    typ, found = imap.search(None, "SUBJECT", f'"{subject}"')
    assert found == [b"1"]
    typ, fetched = imap.fetch(b"1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert subject.encode() in fetched[0][1]
    imap.logout()
    assert any((Path(b1.params.mail_root) / "example.test" / user.split("@")[0] / "mail").iterdir())


def test_doveadm_http_who_and_kick(b1: DovecotInstance) -> None:
    user = _user()
    held = _master_imap(b1, user)
    held.select("INBOX")
    who = b1.doveadm_http("who", {"mask": [user], "separateConnections": True})
    assert [entry["username"] for entry in who] == [user]
    assert who[0]["service"] == "imap"
    kicked = b1.doveadm_http("kick", {"mask": [user]})
    assert kicked == [{"result": user}]

    def closed() -> bool:  # the kick reaches the imap process asynchronously
        try:
            held.noop()
        except (imaplib.IMAP4.abort, OSError):
            return True
        return False

    wait_until(closed, 10, "the kicked session to close")
    wait_until(lambda: b1.doveadm_http("who", {"mask": [user]}) == [], 10, "the kicked session to end")


def test_doveadm_http_rejects_a_wrong_key(b1: DovecotInstance) -> None:
    bad = "X-Dovecot-API " + base64.b64encode(b"not-the-key").decode()
    status, _ = b1.doveadm_http_raw([["who", {}, "w"]], authorization=bad)
    assert status == 401
    token = base64.b64encode(f"doveadm:{b1.params.doveadm_password}".encode()).decode()
    status, body = b1.doveadm_http_raw([["who", {}, "w"]], authorization="Basic " + token)
    assert status == 200 and body[0][0] == "doveadmResponse"


def test_doveadm_cli_talks_to_the_instance(b2: DovecotInstance) -> None:
    user = _user()
    imap = _master_imap(b2, user)
    result = b2.doveadm("who", "-1")
    assert user in result.stdout
    imap.logout()


def test_openmetrics_endpoint(b1: DovecotInstance) -> None:
    imap = _master_imap(b1, _user())
    imap.logout()
    wait_until(lambda: "dovecot_auth_success_total" in b1.metrics()[1], 10, "auth_success in /metrics")
    content_type, body = b1.metrics()
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")
    successes = [line for line in body.splitlines() if line.startswith("dovecot_auth_success_total ")]
    assert successes and int(successes[0].split()[1]) >= 1


def test_submission_relays_to_the_smtp_sink(b2: DovecotInstance, smtp_sink: SmtpSink) -> None:
    user, marker = _user(), uuid.uuid4().hex
    before = len(smtp_sink.messages)
    with smtplib.SMTP(b2.host, b2.params.submission_port, timeout=10) as smtp:
        smtp.ehlo("client.example.test")
        code, _ = smtp.docmd("AUTH", "PLAIN " + sasl_plain_b64(user, b2.params.master_user,
                                                              b2.params.master_password))
        assert code == 235
        smtp.sendmail(user, ["someone@elsewhere.test"], f"Subject: relay {marker}\r\n\r\nbody\r\n")
    received = smtp_sink.wait_for(before + 1)
    mine = [m for m in received if marker.encode() in m.data]
    assert len(mine) == 1
    assert mine[0].mail_from == user and mine[0].rcpt_tos == ("someone@elsewhere.test",)


def test_master_passdb_hash_is_what_dovecot_verifies(b1: DovecotInstance) -> None:
    line = b1.params.master_passdb_path.read_text()
    assert b1.params.master_password not in line
    assert b1.params.master_password not in b1.params.config_path.read_text()
    stored = line.split(":")[1].strip()
    ok = subprocess.run(["doveadm", "pw", "-t", stored, "-p", "secret-under-test"], capture_output=True, text=True)
    assert ok.returncode != 0
    fresh = hash_password("secret-under-test")
    ok = subprocess.run(["doveadm", "pw", "-t", fresh, "-p", "secret-under-test"], capture_output=True, text=True)
    assert ok.returncode == 0 and "(verified)" in ok.stdout


# --- `palomar backend dovecot-config` --------------------------------------------------------------

BACKEND_CONF = """\
@cluster_defaults = backend
cluster_local_site = dc1
cluster_backend_name = be7
cluster_hop_secret = hop-secret-1
cluster_hop_ssl = no
base_dir = {base}/run
doveadm_password = doveadm-pw-1
cluster_backend_dovecot_host = 127.0.0.7
cluster_backend_dovecot_master_password = master-secret-1
cluster_backend_dovecot_imap_port = 20143
"""


def test_cli_writes_a_config_dovecot_accepts(tmp_path: Path, harness_root: Path) -> None:
    conf = tmp_path / "palomar.conf"
    conf.write_text(BACKEND_CONF.format(base=tmp_path))
    out = harness_root / "cli-out"
    result = CliRunner().invoke(main, ["backend", "dovecot-config", "-c", str(conf), "--mail-root",
                                       str(harness_root / "mail"), "--out-dir", str(out),
                                       "--relay", "127.0.0.1:2525"])
    assert result.exit_code == 0, result.output
    assert f"dovecot -c {out / 'dovecot.conf'}" in result.output
    assert (out / "dovecot.conf").stat().st_mode & 0o077 == 0
    assert "master-secret-1" not in (out / "dovecot.conf").read_text()
    assert "master-secret-1" not in (out / "master-users.passwd").read_text()
    checked = subprocess.run(["dovecot", "-n", "-c", str(out / "dovecot.conf")], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert "listen = 127.0.0.7" in checked.stdout
    assert "port = 20143" in checked.stdout
    assert "submission_relay_port = 2525" in checked.stdout
    assert "instance_name = palomar-be7" in checked.stdout
    assert "login_trusted_networks = 127.0.0.1/32 127.0.0.7/32" in checked.stdout


DIRECT_CONF = BACKEND_CONF + """\
cluster_backend_path = direct
cluster_backend_login_check_socket = {base}/run/palomar-login-check
cluster_backend_direct_imap_port = 20993
cluster_backend_direct_pop3_port = 20995
cluster_backend_direct_submission_port = 20465
cluster_backend_direct_sieve_port = 24190
cluster_backend_direct_listen = 192.0.2.7
haproxy_trusted_networks = 192.0.2.10/32 192.0.2.11
"""


def test_cli_writes_the_direct_path_config_dovecot_accepts(tmp_path: Path, harness_root: Path) -> None:
    conf = tmp_path / "palomar.conf"
    conf.write_text(DIRECT_CONF.format(base=tmp_path))
    out = harness_root / "cli-direct-out"
    result = CliRunner().invoke(main, ["backend", "dovecot-config", "-c", str(conf), "--mail-root",
                                       str(harness_root / "mail"), "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert ("direct-path listeners (imap 20993, pop3 20995, submission 20465, sieve 24190; plaintext, PROXY header) "
            "bind to 192.0.2.7\n") in result.output
    checked = subprocess.run(["doveconf", "-n", "-c", str(out / "dovecot.conf")], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert "haproxy_trusted_networks = 192.0.2.10/32 192.0.2.11/32\n" in checked.stdout
    assert "listen = 127.0.0.7\n" in checked.stdout
    for name, port in (("imap_haproxy", 20993), ("pop3_haproxy", 20995), ("submission_haproxy", 20465),
                       ("sieve_haproxy", 24190)):
        assert (f"inet_listener {name} {{\n    address = 192.0.2.7\n    haproxy = yes\n    port = {port}\n"
                f"    ssl = no\n  }}") in checked.stdout
    assert checked.stdout.count(f"args = {out / 'palomar-login-check.conf.ext'}") == 2  # passdb and userdb
    lookup = (out / "palomar-login-check.conf.ext").read_text()
    assert f"proxy:idle_msecs=60000:{tmp_path}/run/palomar-login-check:palomar" in lookup


def test_cli_says_an_empty_direct_listen_binds_the_loopback_dovecot_host(tmp_path: Path, harness_root: Path) -> None:
    """The documented default of cluster_backend_direct_listen (cluster_backend_dovecot_host) is a loopback
    address: the command says where the direct listeners went, and that only proxies on this host reach them."""
    conf = tmp_path / "palomar.conf"
    conf.write_text(DIRECT_CONF.replace("cluster_backend_direct_listen = 192.0.2.7\n", "").format(base=tmp_path))
    out = harness_root / "cli-direct-loopback-out"
    result = CliRunner().invoke(main, ["backend", "dovecot-config", "-c", str(conf), "--mail-root",
                                       str(harness_root / "mail"), "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "bind to 127.0.0.7: cluster_backend_direct_listen is empty" in result.output
    assert "only proxies on this host reach them" in result.output
    checked = subprocess.run(["doveconf", "-n", "-c", str(out / "dovecot.conf")], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert "inet_listener imap_haproxy {\n    haproxy = yes\n    port = 20993\n" in checked.stdout  # on `listen`


@pytest.mark.parametrize(
    ("extra_args", "conf_text", "message"),
    [
        ([], None, "palomar.conf"),
        ([], DIRECT_CONF.replace("192.0.2.10/32 192.0.2.11", "0.0.0.0/0"), "trusts every address"),
        ([], DIRECT_CONF.replace("cluster_backend_direct_pop3_port = 20995\n", ""),
         "cluster_backend_direct_pop3_port is not set"),
        ([], DIRECT_CONF.replace("cluster_backend_path = direct", "cluster_backend_path = hop").replace(
            "cluster_backend_login_check_socket", "#"), "cluster_backend_direct_listen: only used with"),
        (["--relay", "nohostport"], BACKEND_CONF, "--relay"),
        ([], BACKEND_CONF.replace("127.0.0.7", "192.0.2.7"), "not a loopback address"),
        ([], BACKEND_CONF + "no_such_setting = 1\n", "no_such_setting"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, extra_args: list[str], conf_text: str | None,
                                 message: str) -> None:
    conf = tmp_path / "palomar.conf"
    if conf_text is not None:
        conf.write_text(conf_text.format(base=tmp_path))
    result = CliRunner().invoke(main, ["backend", "dovecot-config", "-c", str(conf), "--mail-root",
                                       str(tmp_path / "mail"), "--out-dir", str(tmp_path / "out"), *extra_args])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.output
