"""`cluster_backend_path = direct`: the proxy logs in to the backend's Dovecot itself and Dovecot asks the
backend's palomar service at every login (its dict passdb over a UNIX socket). Real clients, HAProxy,
proxies, Dovecot CE; the backend service is out of the byte path but still decides every login."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import json
import poplib
import re
import smtplib
import socket
import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness.clients import backend_of, tls_context
from test_moves import ImapSession, closed_within, log_text, login_once, make_group, node, user, who
from test_pop3_sieve_path import sieve_connect

from palomar.cli.main import main
from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.net import wait_until
from palomar.protocols.proxyproto import build_v2


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(harness_root / "direct-cluster", backend_path="direct", allow_cleartext=True,
                     users_count=90, auth_failure_delay="200 ms")
    c.start()
    yield c
    c.stop()


def dovecot_conversation(cluster: LocalCluster, backend: str, source: str, lines: list[bytes]) -> bytes:
    """Talk to `backend`'s Dovecot direct IMAP listener from `source` as a proxy would (PROXY v2 header
    with a client address, then TLS checked against the hop CA), one command at a time; everything
    Dovecot said."""
    port = cluster.direct_ports["imap"]
    with socket.create_connection((backend, port), timeout=10, source_address=(source, 0)) as raw:
        raw.sendall(build_v2(("192.0.2.50", 40000), (backend, port)))
        sock = hop_tls_context(cluster).wrap_socket(raw, server_hostname=backend)
        stream = sock.makefile("rb")
        said = stream.readline()
        for line in lines:
            sock.sendall(line)
            tag = line.split(b" ", 1)[0]
            while True:
                reply = stream.readline()
                said += reply
                if not reply or reply.startswith(tag + b" "):
                    break
        return said


def hop_tls_context(cluster: LocalCluster) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cluster.hop_tls_dir / "hop-ca.crt"))
    return context


def master_plain(cluster: LocalCluster, name: str, password: str | None = None) -> bytes:
    secret = cluster.backend_master_password if password is None else password
    return base64.b64encode(f"{name}\0palomar-master\0{secret}".encode())


def test_imap_login_select_fetch_through_haproxy_goes_straight_to_dovecot(cluster: LocalCluster) -> None:
    name = user(1)
    imap = imaplib.IMAP4(cluster.lb_host, cluster.lb_imap, timeout=15)
    assert imap.login(name, "password1")[0] == "OK"
    assert imap.append("INBOX", None, None, b"Subject: direct\r\n\r\nbody\r\n")[0] == "OK"
    assert imap.select("INBOX")[0] == "OK"
    typ, data = imap.fetch("1", "(FLAGS BODY[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and b"Subject: direct" in data[0][1]
    imap.logout()
    host = backend_of(cluster, name)
    owner = node(cluster, host)
    # Dovecot saw the proxy's master login on its haproxy listener, with the client's address
    owner.dovecot.wait_for_log(rf"imap-login: Info: Login: user=<{re.escape(name)}>.*rip=127\.0\.0\.1,")
    # the backend service decided the login (Dovecot's session id in its key) and relayed nothing
    wait_until(lambda: re.search(rf"session=\S+ user={re.escape(name)} login check: served here",
                                 log_text(owner.log_path)) is not None, 10, "the login check line")
    assert not re.search(rf"user={re.escape(name)} proto=imap .* login ok", log_text(owner.log_path))


def test_pop3_login_goes_straight_to_dovecot(cluster: LocalCluster) -> None:
    name = user(2)
    pop = poplib.POP3(cluster.lb_host, cluster.lb_pop3, timeout=15)
    pop.user(name)
    assert pop.pass_("password2").startswith(b"+OK")
    assert pop.noop().startswith(b"+OK")  # the session is Dovecot's and answers
    pop.quit()
    owner = node(cluster, backend_of(cluster, name))
    owner.dovecot.wait_for_log(rf"pop3-login: Info: Login: user=<{re.escape(name)}>")


def test_a_login_at_a_backend_that_does_not_own_the_user_is_referred_and_followed(cluster: LocalCluster) -> None:
    b1, b2 = cluster.backends[0].host, cluster.backends[1].host
    name = user(10)
    make_group(cluster, "direct-ref", b1, b2, [name])
    # Dovecot on b2 refuses with the backend service's referral, as the proxy reads it
    said = dovecot_conversation(cluster, b2, cluster.proxies[0].host,
                                [b"a AUTHENTICATE PLAIN " + master_plain(cluster, name) + b"\r\n"])
    assert re.search(rb"a NO \[CONTACTADMIN\] palomar-referral " + re.escape(b1.encode()), said), said
    assert re.search(rf"user={re.escape(name)} referred to {re.escape(b1)}", log_text(node(cluster, b2).log_path))


def test_a_move_kicks_the_session_and_the_next_login_lands_on_the_new_backend(cluster: LocalCluster) -> None:
    b1, b2 = cluster.backends[0].host, cluster.backends[1].host
    name = user(20)
    make_group(cluster, "direct-mv", b1, b2, [name])
    make_group(cluster, "direct-mv-dst", b2, b1, [])
    proxy = cluster.proxies[1]
    loop = asyncio.new_event_loop()
    try:
        session = loop.run_until_complete(ImapSession.open(proxy.host, proxy.imap, name))
        assert session is not None
        assert name in who(cluster, b1)
        cluster.cluster("user", "move", name, "direct-mv-dst")
        # the next login reaches b1, performs the move there and is referred to b2, where it logs in
        assert loop.run_until_complete(login_once(proxy.host, proxy.imap, name))
        assert closed_within(loop, [session], 15)
        assert re.search(rf"user={re.escape(name)} referred to {re.escape(b2)}", log_text(node(cluster, b1).log_path))
        assert asyncio.run(login_once(cluster.proxies[0].host, cluster.proxies[0].imap, name))
        node(cluster, b2).dovecot.wait_for_log(rf"imap-login: Info: Login: user=<{re.escape(name)}>")
        assert name not in who(cluster, b1)
        status = json.loads(cluster.cluster("--json", "user", "status", name).stdout)
        assert status["group"] == "direct-mv-dst"
    finally:
        loop.close()


def test_dovecot_refuses_a_wrong_master_password_an_untrusted_address_and_user_logins(cluster: LocalCluster) -> None:
    b1 = cluster.backends[0].host
    name = user(30)
    trusted = cluster.proxies[0].host
    wrong = dovecot_conversation(cluster, b1, trusted,
                                 [b"a AUTHENTICATE PLAIN " + master_plain(cluster, name, "guess") + b"\r\n"])
    assert b"a NO [AUTHENTICATIONFAILED]" in wrong
    own = dovecot_conversation(cluster, b1, trusted, [f"a LOGIN {name} password30\r\n".encode()])
    assert b"a NO " in own and b"a OK" not in own
    with pytest.raises((ConnectionError, ssl.SSLError)):  # a PROXY header from outside haproxy_trusted_networks
        dovecot_conversation(cluster, b1, "127.0.0.99",
                             [b"a AUTHENTICATE PLAIN " + master_plain(cluster, name) + b"\r\n"])
    node(cluster, b1).dovecot.wait_for_log(r"haproxy: Client not trusted \(rip=127\.0\.0\.99\)")
    # the listener speaks TLS only: a plaintext command after the header gets no IMAP answer
    port = cluster.direct_ports["imap"]
    with socket.create_connection((b1, port), timeout=10, source_address=(trusted, 0)) as raw:
        raw.sendall(build_v2(("192.0.2.50", 40000), (b1, port)) + b"a LOGIN x y\r\n")
        assert not raw.makefile("rb").read().startswith(b"* OK")


def test_a_broken_dict_client_is_cut_off_and_logins_keep_working(cluster: LocalCluster) -> None:
    b1 = node(cluster, cluster.backends[0].host)
    path = b1.dovecot.params.login_check_socket
    assert path is not None
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        # a handshake, a lookup with a hostile user (escaped TAB, NUL, a \x01 escape, a quote, a
        # referral-looking word) and a lookup with a broken escape
        sock.sendall(b"H3\t2\t0\t\tpalomar\n"
                     b"Lshared/passdb/x\tpalomar-referral\x01t127.0.0.9\x010\"}{@example.test\n"
                     b"Lshared/passdb/x\tbad\x01zescape\n")
        replies = sock.makefile("rb").read()  # until the backend closes the connection
    # one answer (the hostile name decided like any unknown user: its home group's backend), then
    # the bad escape closed the connection; the answer is passdb JSON the name cannot shape
    assert replies.count(b"\n") == 1, replies
    if replies.startswith(b"O"):
        fields = json.loads(replies[1:])
        assert fields["nopassword"] == "y" and set(fields) <= {"nopassword", "nologin", "reason"}
        assert re.fullmatch(r"palomar-referral 127\.0\.0\.\d+ \S.*", fields.get("reason", "palomar-referral 127.0.0.2 x"))
    else:
        assert replies.startswith(b"F"), replies
    wait_until(lambda: "login check socket: bad escape" in log_text(b1.log_path), 10, "the refusal line")
    name = user(40)
    make_group(cluster, "direct-broken", b1.host, cluster.backends[1].host, [name])
    assert asyncio.run(login_once(cluster.proxies[0].host, cluster.proxies[0].imap, name))


def test_a_pop3_login_follows_dovecots_referral_to_the_new_backend(cluster: LocalCluster) -> None:
    b1, b2 = cluster.backends[0].host, cluster.backends[1].host
    name = user(50)
    make_group(cluster, "direct-pop-a", b1, b2, [name])
    make_group(cluster, "direct-pop-b", b2, b1, [])
    cluster.cluster("user", "move", name, "direct-pop-b")
    # the proxy still routes to b1; b1's login check performs the move and refers the login to b2,
    # in the text of Dovecot's POP3 refusal (-ERR [AUTH] palomar-referral ...), which the proxy follows
    pop = poplib.POP3(cluster.proxies[0].host, cluster.proxies[0].pop3, timeout=15)
    pop.user(name)
    assert pop.pass_("password50").startswith(b"+OK")
    pop.quit()
    node(cluster, b2).dovecot.wait_for_log(rf"pop3-login: Info: Login: user=<{re.escape(name)}>")
    assert re.search(rf"user={re.escape(name)} referred to {re.escape(b2)}", log_text(node(cluster, b1).log_path))


def _direct_parts(dovecot_conf: str) -> list[str]:
    """The direct path's part of a dovecot.conf: trusted proxies, TLS files, the haproxy listeners, the login
    check passdb/userdb (paths stripped of their directory, which differs between two writes)."""
    parts = re.findall(r"^haproxy_trusted_networks = [^\n]*|^ssl[^\n]*|  inet_listener \w+_haproxy \{.*?\n  \}",
                       dovecot_conf, flags=re.M | re.S)
    parts += [Path(path).name for path in re.findall(r"args = (\S+login-check\S*)", dovecot_conf)]
    return parts


def test_dovecot_config_from_a_backends_palomar_conf_matches_the_running_dovecot(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """What an operator runs on a real host (`palomar backend dovecot-config` from the backend's palomar.conf)
    writes the same direct path the devcluster's Dovecot runs with."""
    b1 = cluster.backends[0]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["backend", "dovecot-config", "-c", str(b1.config),
                                       "--mail-root", str(cluster.mail_root), "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    written, running = (out / "dovecot.conf").read_text(), b1.dovecot.params.config_path.read_text()
    assert _direct_parts(written) == _direct_parts(running)
    assert len(_direct_parts(written)) >= 6  # networks, TLS, two listeners, passdb and userdb
    assert (out / "palomar-login-check.conf.ext").read_text() == b1.dovecot.params.login_check_dict_path.read_text()


def _submit(cluster: LocalCluster, name: str, password: str, subject: str) -> None:
    with smtplib.SMTP(cluster.lb_host, cluster.lb_submission, timeout=15) as smtp:
        smtp.starttls(context=tls_context())
        smtp.login(name, password)
        refused = smtp.sendmail(name, ["rcpt@example.org"],
                                f"From: {name}\r\nTo: rcpt@example.org\r\nSubject: {subject}\r\n\r\nbody\r\n".encode())
        assert refused == {}
    assert cluster.sink is not None
    cluster.sink.wait_for_match(lambda m: f"Subject: {subject}".encode() in m.data, timeout=20)


def _not_relayed_by_the_backend_service(owner_log: Path, name: str, protocol: str) -> bool:
    """The backend service decided the login (its login check) but did not log in itself and relay."""
    text = log_text(owner_log)
    return (re.search(rf"session=\S+ user={re.escape(name)} login check: served here", text) is not None
            and re.search(rf"user={re.escape(name)} proto={protocol} .* login ok", text) is None)


def test_the_proxies_probes_take_the_direct_path(cluster: LocalCluster) -> None:
    """A probe must fail where a user's IMAP session would: on the direct path that is the backend's
    Dovecot listener and its login check, not the hop (which IMAP sessions no longer take)."""
    for backend in cluster.backends:
        wait_until(lambda b=backend: _not_relayed_by_the_backend_service(b.log_path, f"probe-{b.host}", "imap"),
                   20, f"the start-up probe of {backend.host} through its login check")


def test_submission_goes_straight_to_dovecot(cluster: LocalCluster) -> None:
    name = user(60)
    _submit(cluster, name, "password60", "direct submission")
    owner = node(cluster, backend_of(cluster, name))
    owner.dovecot.wait_for_log(rf"submission-login: Info: Login: user=<{re.escape(name)}>.*rip=127\.0\.0\.1,")
    wait_until(lambda: _not_relayed_by_the_backend_service(owner.log_path, name, "submission"), 10,
               "the login check line")


def test_managesieve_goes_straight_to_dovecot(cluster: LocalCluster, tmp_path: Path) -> None:
    name = user(61)
    script = tmp_path / "keep.sieve"
    script.write_text("keep;\n")
    up = sieve_connect(cluster, cluster.lb_sieve, name, "password61", "--upload", "--localsieve", str(script),
                       "--remotesieve", "direct-test")
    assert up.returncode == 0, up.stderr
    listed = sieve_connect(cluster, cluster.lb_sieve, name, "password61", "--list")
    assert listed.returncode == 0 and "direct-test" in listed.stdout, listed.stderr
    owner = node(cluster, backend_of(cluster, name))
    owner.dovecot.wait_for_log(rf"managesieve-login: Info: Login: user=<{re.escape(name)}>.*rip=127\.0\.0\.1,")
    wait_until(lambda: _not_relayed_by_the_backend_service(owner.log_path, name, "sieve"), 10,
               "the login check line")


@pytest.mark.parametrize("protocol", ["submission", "sieve"])
def test_submission_and_managesieve_follow_dovecots_referral(cluster: LocalCluster, protocol: str,
                                                              tmp_path: Path) -> None:
    b1, b2 = cluster.backends[0].host, cluster.backends[1].host
    number = 62 if protocol == "submission" else 63
    name, password = user(number), f"password{number}"
    make_group(cluster, f"direct-{protocol}-a", b1, b2, [name])
    make_group(cluster, f"direct-{protocol}-b", b2, b1, [])
    cluster.cluster("user", "move", name, f"direct-{protocol}-b")
    # the proxy still routes to b1; b1's login check performs the move and refers the login to b2 in the
    # text of Dovecot's refusal, which the proxy follows
    if protocol == "submission":
        _submit(cluster, name, password, "direct referral")
    else:
        listed = sieve_connect(cluster, cluster.lb_sieve, name, password, "--list")
        assert listed.returncode == 0, listed.stderr
    login = "submission-login" if protocol == "submission" else "managesieve-login"
    node(cluster, b2).dovecot.wait_for_log(rf"{login}: Info: Login: user=<{re.escape(name)}>")
    assert re.search(rf"user={re.escape(name)} referred to {re.escape(b2)}", log_text(node(cluster, b1).log_path))
    wait_until(lambda: _not_relayed_by_the_backend_service(node(cluster, b2).log_path, name, protocol), 10,
               "b2's login check line")
