"""The IMAP path end to end: real clients → HAProxy → palomar proxy → palomar backend → Dovecot CE."""

from __future__ import annotations

import imaplib
import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from harness.clients import IMAP4From, backend_of, hop_socket, read_lines, tls_context

from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.net import wait_until
from palomar.protocols import hop
from palomar.protocols.proxyproto import build_v1, build_v2

CLIENT_SOURCE = "127.0.0.99"
"""Clients connect from here, so a backend log showing it proves the real address travelled."""
FAILURE_DELAY = 0.4


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    nologin = "blocked@example.test:{PLAIN}blockedpw::::::nologin=y reason=Mailbox_suspended_by_admin"
    pinned = "pinned@example.test:{PLAIN}pinnedpw::::::host=127.0.0.3"
    c = LocalCluster(harness_root / "imap-cluster", auth_failure_delay=f"{int(FAILURE_DELAY * 1000)} ms",
                     extra_passwd_lines=(nologin, pinned), stats_interval="1 secs")
    c.start()
    yield c
    c.stop()


class IMAP4SSLFrom(imaplib.IMAP4_SSL):
    def __init__(self, host: str, port: int, source: str) -> None:
        self._source = source
        super().__init__(host, port, ssl_context=tls_context(), timeout=15)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def dovecot_of(cluster: LocalCluster, host: str):
    return next(b.dovecot for b in cluster.backends if b.host == host)


# --- real clients -------------------------------------------------------------------------------


def test_imaplib_login_over_tls_and_dovecot_logs_the_real_client_address(cluster: LocalCluster) -> None:
    imap = IMAP4SSLFrom(cluster.lb_host, cluster.lb_imaps, CLIENT_SOURCE)
    typ, data = imap.login("user1@example.test", "password1")
    # imaplib asked CAPABILITY before logging in: as from Dovecot, the post-login capabilities
    # come as an untagged line, not as a code in the OK.
    assert typ == "OK" and data == [b"Logged in"]
    assert b"IDLE" in imap.untagged_responses["CAPABILITY"][-1]
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()
    host = backend_of(cluster, "user1@example.test")
    dovecot_of(cluster, host).wait_for_log(r"Login: user=<user1@example\.test>.*rip=127\.0\.0\.99")


def test_imaplib_starttls_then_authenticate_plain(cluster: LocalCluster) -> None:
    imap = IMAP4From(cluster.lb_host, cluster.lb_imap, source=CLIENT_SOURCE)
    assert "STARTTLS" in imap.capabilities and "LOGINDISABLED" in imap.capabilities
    imap.starttls(ssl_context=tls_context())
    typ, _ = imap.authenticate("PLAIN", lambda _: b"\0user2@example.test\0password2")
    assert typ == "OK"
    assert imap.list()[0] == "OK"
    imap.logout()


def test_cleartext_login_is_refused_before_tls(cluster: LocalCluster) -> None:
    imap = IMAP4From(cluster.lb_host, cluster.lb_imap, source=CLIENT_SOURCE)
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        imap.login("user3@example.test", "password3")
    imap.logout()


def test_wrong_password_fails_after_the_delay(cluster: LocalCluster) -> None:
    imap = IMAP4SSLFrom(cluster.lb_host, cluster.lb_imaps, CLIENT_SOURCE)
    started = time.monotonic()
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\] Authentication failed"):
        imap.login("user4@example.test", "not-the-password")
    assert time.monotonic() - started >= FAILURE_DELAY
    # the session stays usable: the right password now works
    assert imap.login("user4@example.test", "password4")[0] == "OK"
    imap.logout()


def test_nologin_user_gets_the_reason(cluster: LocalCluster) -> None:
    imap = IMAP4SSLFrom(cluster.lb_host, cluster.lb_imaps, CLIENT_SOURCE)
    with pytest.raises(imaplib.IMAP4.error, match="Mailbox_suspended_by_admin"):
        imap.login("blocked@example.test", "blockedpw")
    imap.logout()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "-k", "--interface", CLIENT_SOURCE, *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_curl_append_list_and_fetch_over_imap_and_imaps(cluster: LocalCluster, tmp_path: Path) -> None:
    message = tmp_path / "msg.eml"
    body = "From: a@example.test\r\nTo: user5@example.test\r\nSubject: curl append\r\n\r\nhello through palomar\r\n"
    message.write_bytes(body.encode())
    auth = ["-u", "user5@example.test:password5"]
    appended = curl("--ssl-reqd", f"imap://{cluster.lb_host}:{cluster.lb_imap}/INBOX", *auth, "-T", str(message))
    assert appended.returncode == 0, appended.stderr
    listed = curl(f"imaps://{cluster.lb_host}:{cluster.lb_imaps}/", *auth)
    assert listed.returncode == 0 and "INBOX" in listed.stdout
    fetched = curl(f"imaps://{cluster.lb_host}:{cluster.lb_imaps}/INBOX;UID=1", *auth)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.replace("\r\n", "\n") == body.replace("\r\n", "\n")


def test_mbsync_synchronises_both_ways(cluster: LocalCluster, tmp_path: Path) -> None:
    local = tmp_path / "maildir"
    (local / "INBOX" / "new").mkdir(parents=True)
    for sub in ("cur", "tmp"):
        (local / "INBOX" / sub).mkdir()
    (local / "INBOX" / "new" / "1.local:2,").write_bytes(b"Subject: from maildir\r\n\r\nlocal message\r\n")
    config = tmp_path / "mbsyncrc"
    config.write_text(f"""IMAPAccount palomar
Host localhost
Port {cluster.lb_imaps}
User user6@example.test
Pass password6
SSLType IMAPS
CertificateFile {cluster.root / 'tls' / 'localhost.crt'}

IMAPStore remote
Account palomar

MaildirStore local
Path {local}/
Inbox {local}/INBOX

Channel sync
Far :remote:
Near :local:
Patterns INBOX
Create Both
Sync All
SyncState *
""")
    seeded = IMAP4SSLFrom(cluster.lb_host, cluster.lb_imaps, CLIENT_SOURCE)
    seeded.login("user6@example.test", "password6")
    seeded.append("INBOX", None, None, b"Subject: from server\r\n\r\nremote message\r\n")
    seeded.logout()
    run = subprocess.run(["mbsync", "-c", str(config), "sync"], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout + run.stderr
    local_texts = [p.read_bytes() for d in ("new", "cur") for p in (local / "INBOX" / d).iterdir()]
    assert any(b"remote message" in t for t in local_texts)
    check = IMAP4SSLFrom(cluster.lb_host, cluster.lb_imaps, CLIENT_SOURCE)
    check.login("user6@example.test", "password6")
    check.select("INBOX")
    _, found = check.search(None, "SUBJECT", '"from maildir"')
    assert found[0].split(), "the maildir message did not reach the server"
    check.logout()


# --- placement -----------------------------------------------------------------------------------


def held_session(host: str, port: int, user: str, password: str) -> imaplib.IMAP4:
    imap = IMAP4From(host, port, source=CLIENT_SOURCE)
    imap.starttls(ssl_context=tls_context())
    imap.login(user, password)
    return imap


def test_same_user_from_both_proxies_lands_on_one_backend(cluster: LocalCluster) -> None:
    user, password = "user7@example.test", "password7"
    sessions = [held_session(p.host, p.imap, user, password) for p in cluster.proxies]
    try:
        where = {b.host: [r["username"] for r in b.dovecot.doveadm_http("who", {})] for b in cluster.backends}
        holders = [host for host, users in where.items() if user in users]
        assert holders == [backend_of(cluster, user)]
    finally:
        for imap in sessions:
            imap.logout()


def test_users_spread_over_both_backends_by_group(cluster: LocalCluster) -> None:
    for i in range(8, 21):
        imap = IMAP4SSLFrom(cluster.lb_host, cluster.lb_imaps, CLIENT_SOURCE)
        imap.login(f"user{i}@example.test", f"password{i}")
        imap.logout()
    hosts = {backend_of(cluster, f"user{i}@example.test") for i in range(8, 21)}
    assert hosts == {b.host for b in cluster.backends}


def test_user_sent_to_the_wrong_backend_is_referred_to_the_right_one(cluster: LocalCluster) -> None:
    """passdb pins pinned@ to 127.0.0.3; its group lives on 127.0.0.2; that backend refers the proxy."""
    imap = IMAP4SSLFrom(cluster.lb_host, cluster.lb_imaps, CLIENT_SOURCE)
    imap.login("user1@example.test", "password1")  # makes sure user1's group exists
    imap.logout()
    group = json.loads(cluster.cluster("--json", "user", "status", "user1@example.test").stdout)["group"]
    cluster.cluster("group", "move", "--direct", "DC1", group, "127.0.0.2")
    cluster.cluster("user", "move", "--direct", "pinned@example.test", group)
    imap = IMAP4SSLFrom(cluster.lb_host, cluster.lb_imaps, CLIENT_SOURCE)
    assert imap.login("pinned@example.test", "pinnedpw")[0] == "OK"
    imap.logout()
    dovecot_of(cluster, "127.0.0.2").wait_for_log(r"Login: user=<pinned@example\.test>")
    assert "user=<pinned@example.test>" not in dovecot_of(cluster, "127.0.0.3").log_text()
    wrong = next(b for b in cluster.backends if b.host == "127.0.0.3")
    wait_until(lambda: "pinned@example.test referred to 127.0.0.2" in wrong.log_path.read_text(), 10,
               "the referral in the backend log")


# --- refusals ------------------------------------------------------------------------------------


def closed_without_greeting(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_haproxy_listener_drops_untrusted_sources(cluster: LocalCluster) -> None:
    proxy = cluster.proxies[0]
    sock = socket.create_connection((proxy.host, proxy.imap_haproxy), source_address=("127.0.0.50", 0))
    sock.sendall(build_v2(("192.0.2.1", 1234), (proxy.host, proxy.imap_haproxy)))
    assert closed_without_greeting(sock)
    sock.close()
    wait_until(lambda: "127.0.0.50 dropped: not in haproxy_trusted_networks" in proxy.log_path.read_text(), 10,
               "the drop in the proxy log")


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 1.2.3.4\r\n",
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x02ab",
    b"GET / HTTP/1.0\r\n\r\n",
])
def test_malformed_proxy_header_is_dropped(cluster: LocalCluster, header: bytes) -> None:
    proxy = cluster.proxies[0]
    sock = socket.create_connection((proxy.host, proxy.imap_haproxy))
    sock.sendall(header)
    assert closed_without_greeting(sock)
    sock.close()


def test_haproxy_local_health_check_gets_the_greeting(cluster: LocalCluster) -> None:
    proxy = cluster.proxies[0]
    for header in (b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00", build_v1(("127.0.0.1", 1), (proxy.host, 2))):
        sock = socket.create_connection((proxy.host, proxy.imap_haproxy))
        sock.sendall(header)
        sock.settimeout(10)
        assert sock.recv(200).startswith(b"* OK ")
        sock.close()


def send_hop(cluster: LocalCluster, secret: str, user: str) -> bytes:
    """Answer backend1's challenge with a header sealed with `secret`; its reply line."""
    backend = cluster.backends[0]
    request = hop.HopRequest(user=user, protocol="imap", session_id="test-hop", backend_host=backend.host,
                             client=("192.0.2.10", 4000), local=("127.0.0.1", 143))
    with hop_socket(cluster, backend.host) as sock:
        [line] = read_lines(sock, 1)
        challenge = hop.decode_challenge(line)
        sock.sendall(build_v2(request.client, request.local, hop.seal(request, secret.encode(), challenge)))
        [reply] = read_lines(sock, 1)
    return reply


def test_backend_refuses_a_wrong_shared_secret(cluster: LocalCluster) -> None:
    assert send_hop(cluster, "wrong-secret", "user1@example.test") == b"FAIL denied hop refused\r\n"
    wait_until(lambda: "hop MAC mismatch" in cluster.backends[0].log_path.read_text(), 10, "the refusal logged")


def test_backend_accepts_a_header_answering_its_challenge(cluster: LocalCluster) -> None:
    user = next(f"user{i}@example.test" for i in range(1, 21)
                if backend_of(cluster, f"user{i}@example.test") == cluster.backends[0].host)
    assert send_hop(cluster, cluster.hop_secret, user).startswith(b"OK ")


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


def test_large_append_and_fetch_through_the_tls_hop_with_a_stalled_reader(cluster: LocalCluster) -> None:
    """21 MB each way through the proxy and the (TLS) hop; a reader that stops for a while must stop
    the backend's Dovecot, not make the proxy or the backend buffer the message."""
    assert cluster.hop_tls
    user, password = "user5@example.test", "password5"
    line = b"".join(bytes([65 + (i % 26)]) for i in range(76)) + b"\r\n"
    body = b"Subject: large fetch\r\n\r\n" + line * ((21 << 20) // len(line))
    imap = IMAP4SSLFrom(cluster.proxies[0].host, cluster.proxies[0].imaps, CLIENT_SOURCE)
    imap.login(user, password)
    imap.create("LargeFetch")
    assert imap.append("LargeFetch", None, None, body)[0] == "OK"
    imap.logout()
    proxy, backend = cluster.proxies[0], next(b for b in cluster.backends if b.host == backend_of(cluster, user))
    watched = [proxy.proc.pid, backend.proc.pid]
    before = [peak_rss(pid) for pid in watched]
    raw = tls_context().wrap_socket(socket.create_connection((proxy.host, proxy.imaps), timeout=30),
                                    server_hostname=proxy.host)
    raw.sendall(f"a LOGIN {user} {password}\r\nb SELECT LargeFetch\r\nc FETCH 1 BODY[]\r\n".encode())
    time.sleep(2)  # not synchronisation: the stall whose effect (no buffering) is asserted below
    data = bytearray()
    while b"\r\nc " not in data[-300:]:  # until FETCH's tagged reply
        chunk = raw.recv(16384)
        if not chunk:
            break
        data += chunk
    raw.close()
    growth = [peak_rss(pid) - old for pid, old in zip(watched, before, strict=True)]
    assert body in data and b"\r\nc OK" in data[-300:]
    assert all(grown < 12 << 20 for grown in growth), growth


# --- accounting ----------------------------------------------------------------------------------


def test_metrics_count_sessions_per_backend(cluster: LocalCluster) -> None:
    import urllib.request

    imap = IMAP4SSLFrom(cluster.proxies[0].host, cluster.proxies[0].imaps, CLIENT_SOURCE)
    imap.login("user1@example.test", "password1")
    imap.logout()
    host = backend_of(cluster, "user1@example.test")
    text = urllib.request.urlopen(f"http://{cluster.proxies[0].host}:{cluster.proxies[0].metrics}/metrics",
                                  timeout=10).read().decode()
    assert text.endswith("# EOF\n")
    line = next(ln for ln in text.splitlines() if ln.startswith(f'dovecot_proxy_session_success_total{{dest_host="{host}"}}'))
    assert float(line.split()[-1]) >= 1
    session_lines = [ln for ln in cluster.proxies[0].log_path.read_text().splitlines()
                     if "palomar.session" in ln and "user=user1@example.test" in ln and "backend=" in ln]
    assert session_lines and "client=127.0.0.99:" in session_lines[-1] and "password1" not in "\n".join(session_lines)


def geodb_read(cluster: LocalCluster, action):
    import asyncio

    from palomar.geodb.repository import GeoDB

    async def main():
        engine = cluster.geodb_engine()
        await engine.open()
        try:
            return await action(GeoDB(engine))
        finally:
            await engine.close()

    return asyncio.run(main())


def test_sessions_flow_into_proxy_dest_stats(cluster: LocalCluster) -> None:
    imap = IMAP4SSLFrom(cluster.lb_host, cluster.lb_imaps, CLIENT_SOURCE)
    imap.login("user2@example.test", "password2")
    imap.logout()
    host = backend_of(cluster, "user2@example.test")

    def rows():
        async def action(db):
            site = await db.site_get_by_name("DC1")
            return await db.proxy_dest_stats_list(site.id, host)
        return [r for r in geodb_read(cluster, action) if r.key == "session_success" and r.value >= 1]

    wait_until(lambda: bool(rows()), 15, "proxy_dest_stats rows")
    assert {r.proxy_host for r in rows()} <= {p.name for p in cluster.proxies}


def test_backends_report_backend_stats_and_user_counts(cluster: LocalCluster) -> None:
    async def action(db):
        site = await db.site_get_by_name("DC1")
        return await db.backend_stats_list(site.id), await db.backend_list(site.id)

    stats, backends = geodb_read(cluster, action)
    assert {b.id for b in backends} <= set(stats)
    assert all({s.key for s in stats[b.id]} >= {"sessions_active", "logins"} for b in backends)
    assert all(b.user_count_approx is not None for b in backends)


def test_proxy_keeps_serving_while_clients_misbehave(cluster: LocalCluster) -> None:
    proxy = cluster.proxies[0]
    silent = socket.create_connection((proxy.host, proxy.imap))  # never sends anything
    silent.settimeout(10)
    assert silent.recv(200).startswith(b"* OK ")
    flood = socket.create_connection((proxy.host, proxy.imap))
    flood.settimeout(10)
    flood.recv(200)
    flood.sendall(b"a LOGIN " + b"x" * 70000 + b"\r\n")
    data = b""
    while True:
        chunk = flood.recv(4096)
        if not chunk:
            break
        data += chunk
    assert b"BYE" in data
    imap = held_session(proxy.host, proxy.imap, "user3@example.test", "password3")
    assert imap.noop()[0] == "OK"
    imap.logout()
    silent.close()


def _hop_connections(cluster: LocalCluster) -> int:
    """Established TCP connections to the backends' hop ports (the kernel's table)."""
    count = 0
    for backend in cluster.backends:
        out = subprocess.run(["ss", "-tnH", "state", "established", "dst", f"{backend.host}:{cluster.hop_port}"],
                             capture_output=True, text=True, check=True).stdout
        count += len(out.splitlines())
    return count


def test_spare_hops_are_kept_after_a_login_then_closed_without_a_refusal(cluster: LocalCluster) -> None:
    """A login leaves a spare hop to its backend open at the proxy; unused, the proxy closes it
    within seconds, and the backend takes that for a hop that left without a word (no refusal)."""
    proxy = cluster.proxies[0]
    logged = [len(b.log_path.read_text()) for b in cluster.backends]
    for _ in range(2):
        imap = imaplib.IMAP4_SSL(proxy.host, proxy.imaps, ssl_context=tls_context(), timeout=15)
        imap.login("user1@example.test", "password1")
        imap.logout()
        wait_until(lambda: _hop_connections(cluster) >= 1, 10, "a spare hop kept")
    wait_until(lambda: _hop_connections(cluster) == 0, 15, "the spare hops closed")
    for backend, offset in zip(cluster.backends, logged, strict=True):
        assert "refused" not in backend.log_path.read_text()[offset:]
