"""POP3 and ManageSieve through HAProxy and the palomar proxies, with real clients."""

from __future__ import annotations

import base64
import imaplib
import os
import poplib
import smtplib
import socket
import subprocess
from pathlib import Path

import pytest
from harness.clients import backend_of, tls_context

from palomar.devcluster.cluster import LocalCluster

CLIENT_SOURCE = "127.0.0.97"


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(harness_root / "pop3-sieve-cluster", auth_failure_delay="200 ms")
    c.start()
    yield c
    c.stop()


def append_over_imap(cluster: LocalCluster, user: str, password: str, message: bytes) -> None:
    imap = imaplib.IMAP4_SSL(cluster.lb_host, cluster.lb_imaps, ssl_context=tls_context(), timeout=15)
    imap.login(user, password)
    assert imap.append("INBOX", None, None, message)[0] == "OK"
    imap.logout()


class POP3From(poplib.POP3):
    """poplib.POP3 connecting from CLIENT_SOURCE, so the backend log can prove the address travelled."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, timeout=15)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(CLIENT_SOURCE, 0))


MESSAGE = b"From: a@example.test\r\nSubject: pop3 through palomar\r\n\r\nread me over POP3\r\n"


def test_poplib_user_pass_after_stls_reads_a_message_appended_over_imap(cluster: LocalCluster) -> None:
    append_over_imap(cluster, "user1@example.test", "password1", MESSAGE)
    pop = POP3From(cluster.lb_host, cluster.lb_pop3)
    assert "STLS" in pop.capa()
    pop.stls(context=tls_context())
    pop.user("user1@example.test")
    assert pop.pass_("password1").startswith(b"+OK")
    count, _ = pop.stat()
    assert count >= 1
    _, lines, _ = pop.retr(count)
    assert b"read me over POP3" in b"\r\n".join(lines)
    pop.quit()
    dovecot = next(b.dovecot for b in cluster.backends if b.host == backend_of(cluster, "user1@example.test"))
    dovecot.wait_for_log(r"pop3-login: Info: Login: user=<user1@example\.test>.*rip=127\.0\.0\.97")


def test_pop3_ssl_and_auth_plain_with_initial_response(cluster: LocalCluster) -> None:
    pop = poplib.POP3_SSL(cluster.lb_host, cluster.lb_pop3s, context=tls_context(), timeout=15)
    token = base64.b64encode(b"\0user2@example.test\0password2").decode()
    assert pop._shortcmd(f"AUTH PLAIN {token}").startswith(b"+OK")
    assert pop.stat()[0] >= 0
    pop.quit()


def test_pop3_wrong_password_is_an_auth_error_and_cleartext_is_refused(cluster: LocalCluster) -> None:
    pop = POP3From(cluster.lb_host, cluster.lb_pop3)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Plaintext authentication disallowed"):
        pop.user("user3@example.test")  # no TLS yet: refused before the password is even sent
    pop.stls(context=tls_context())
    pop.user("user3@example.test")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
        pop.pass_("wrong")
    pop.quit()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "-k", "--interface", CLIENT_SOURCE, *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_curl_pop3_and_pop3s(cluster: LocalCluster) -> None:
    append_over_imap(cluster, "user4@example.test", "password4", MESSAGE)
    auth = ["-u", "user4@example.test:password4"]
    listed = curl("--ssl-reqd", f"pop3://{cluster.lb_host}:{cluster.lb_pop3}/", *auth)
    assert listed.returncode == 0 and listed.stdout.strip().startswith("1 "), listed.stderr
    fetched = curl(f"pop3s://{cluster.lb_host}:{cluster.lb_pop3s}/1", *auth)
    assert fetched.returncode == 0 and "read me over POP3" in fetched.stdout


def sieve_connect(cluster: LocalCluster, port: int, user: str, password: str, *args: str, server: str = ""):
    read_fd, write_fd = os.pipe()
    os.write(write_fd, password.encode() + b"\n")
    os.close(write_fd)
    try:
        return subprocess.run(
            ["sieve-connect", "--server", server or cluster.lb_host, "--port", str(port), "--user", user,
             "--passwordfd", str(read_fd), "--notlsverify", *args],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, pass_fds=(read_fd,))
    finally:
        os.close(read_fd)


def test_sieve_connect_upload_list_activate_download(cluster: LocalCluster, tmp_path: Path) -> None:
    script = tmp_path / "vacation.sieve"
    script.write_text('require "fileinto";\nif header :contains "subject" "palomar" { fileinto "INBOX"; }\n')
    user, password = "user5@example.test", "password5"
    up = sieve_connect(cluster, cluster.lb_sieve, user, password, "--upload", "--localsieve", str(script),
                       "--remotesieve", "palomar-test")
    assert up.returncode == 0, up.stdout + up.stderr
    act = sieve_connect(cluster, cluster.lb_sieve, user, password, "--activate", "--remotesieve", "palomar-test")
    assert act.returncode == 0, act.stdout + act.stderr
    listed = sieve_connect(cluster, cluster.lb_sieve, user, password, "--list")
    assert "palomar-test" in listed.stdout and "ACTIVE" in listed.stdout.upper(), listed.stdout + listed.stderr
    out = tmp_path / "downloaded.sieve"
    down = sieve_connect(cluster, cluster.lb_sieve, user, password, "--download", "--remotesieve", "palomar-test",
                         "--localsieve", str(out))
    assert down.returncode == 0 and out.read_text() == script.read_text()
    # another proxy, reached directly, sees the same script
    proxy = cluster.proxies[1]
    listed = sieve_connect(cluster, proxy.sieve, user, password, "--list", server=proxy.host)
    assert "palomar-test" in listed.stdout, listed.stdout + listed.stderr
    # the script lives in the user's home on the shared store, written by the user's backend
    host = backend_of(cluster, user)
    dovecot = next(b.dovecot for b in cluster.backends if b.host == host)
    dovecot.wait_for_log(r"managesieve-login: Info: Login: user=<user5@example\.test>")
    other = next(b.dovecot for b in cluster.backends if b.host != host)
    assert "user=<user5@example.test>" not in other.log_text()
    listed = dovecot.doveadm("sieve", "list", "-u", user).stdout
    assert "palomar-test" in listed


def test_one_user_all_protocols_one_backend(cluster: LocalCluster) -> None:
    user, password = "user6@example.test", "password6"
    imap = imaplib.IMAP4_SSL(cluster.lb_host, cluster.lb_imaps, ssl_context=tls_context(), timeout=15)
    imap.login(user, password)
    pop = poplib.POP3_SSL(cluster.lb_host, cluster.lb_pop3s, context=tls_context(), timeout=15)
    pop.user(user)
    pop.pass_(password)
    listed = sieve_connect(cluster, cluster.lb_sieve, user, password, "--list")
    assert listed.returncode == 0, listed.stderr
    smtp = smtplib.SMTP_SSL(cluster.lb_host, cluster.lb_submissions, timeout=15, context=tls_context())
    smtp.login(user, password)
    host = backend_of(cluster, user)
    dovecot = next(b.dovecot for b in cluster.backends if b.host == host)
    who = {(r["username"], r["service"]) for r in dovecot.doveadm_http("who", {"separateConnections": True})}
    assert {(user, "imap"), (user, "pop3"), (user, "submission")} <= who
    dovecot.wait_for_log(r"managesieve-login: Info: Login: user=<user6@example\.test>")
    for other in cluster.backends:
        if other.host != host:
            assert user not in {r["username"] for r in other.dovecot.doveadm_http("who", {})}
    smtp.quit()
    pop.quit()
    imap.logout()
