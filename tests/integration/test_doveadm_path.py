"""doveadm through a proxy: the real `doveadm -S proxy:port` client of Dovecot 2.3 against palomar
proxies, which run each command on the user's backend (its Dovecot's doveadm TCP listener).

The same command run directly against the backend's Dovecot gives the same output; a user whose
group moves between two commands gets the second one on the new backend; a wrong doveadm_password
is refused, logged and counted by the auth penalty.
"""

from __future__ import annotations

import base64
import imaplib
import json
import os
import pwd
import re
import socket
import subprocess
from pathlib import Path

import pytest
from harness.clients import append_through_proxy as deliver
from harness.clients import backend_of

from palomar.devcluster.cluster import LocalCluster, ProxyNode
from palomar.devcluster.net import free_port, wait_until
from palomar.protocols import doveadm as core

USER = "user5@example.test"


TLS_PORT = free_port("127.0.0.10")
"""The proxy's implicit-TLS doveadm listener (`inet_listener tcps { ssl = yes }`)."""


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    tls_listener = ("service doveadm {", "  inet_listener tcps {", f"    port = {TLS_PORT}", "    ssl = yes", "  }",
                    "}")
    c = LocalCluster(harness_root / "doveadm-cluster", proxies_count=1, users_count=8, allow_cleartext=True,
                     password_scheme="PLAIN", auth_failure_delay="100 ms", proxy_settings={"*": tls_listener})
    c.start()
    yield c
    c.stop()


NAMES = {"mailbox": 2}
"""Words of the command name (the options -S and -u follow the name)."""


def run_doveadm(server: str, password: str, user: str, *command: str, options: tuple[str, ...] = ()
                ) -> subprocess.CompletedProcess[str]:
    words = NAMES.get(command[0], 1)
    settings = [arg for option in (f"doveadm_password={password}", *options) for arg in ("-o", option)]
    return subprocess.run(["doveadm", *settings, *command[:words], "-S", server, "-u", user, *command[words:]],
                          capture_output=True, text=True, timeout=60, check=False)


def via_proxy(cluster: LocalCluster, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    proxy = cluster.proxies[0]
    return run_doveadm(f"{proxy.host}:{proxy.doveadm}", password or cluster.doveadm_password, *args)


def on_backend(cluster: LocalCluster, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The same command against the backend's own Dovecot doveadm listener, not through palomar."""
    params = next(b for b in cluster.backends if b.host == host).dovecot.params
    return run_doveadm(f"{params.listen}:{params.doveadm_tcp_port}", params.doveadm_password, *args)


def backend_log_count(cluster: LocalCluster, host: str, user: str) -> int:
    node = next(b for b in cluster.backends if b.host == host)
    return len(re.findall(rf"user={re.escape(user)} proto=doveadm client=\S+ login ok", node.log_path.read_text()))


def test_mail_commands_give_the_backends_own_output(cluster: LocalCluster) -> None:
    deliver(cluster, USER, "password5", "first")
    deliver(cluster, USER, "password5", "second")
    host = backend_of(cluster, USER)
    for command in (["mailbox", "status", "-t", "all", "INBOX"],
                    ["fetch", "uid flags hdr.subject", "mailbox", "INBOX", "all"],
                    ["search", "mailbox", "INBOX", "subject", "second"]):
        through = via_proxy(cluster, USER, *command)
        direct = on_backend(cluster, host, USER, *command)
        assert (through.returncode, through.stdout) == (0, direct.stdout), through.stderr
        assert through.stdout.strip()
    status = via_proxy(cluster, USER, "mailbox", "status", "messages", "INBOX")
    assert status.stdout == "INBOX messages=2\n"
    assert backend_log_count(cluster, host, USER) >= 4


def test_expunge_runs_on_the_backend(cluster: LocalCluster) -> None:
    user = "user6@example.test"
    deliver(cluster, user, "password6", "keep")
    deliver(cluster, user, "password6", "drop")
    expunged = via_proxy(cluster, user, "expunge", "mailbox", "INBOX", "subject", "drop")
    assert expunged.returncode == 0, expunged.stderr
    left = via_proxy(cluster, user, "fetch", "hdr.subject", "mailbox", "INBOX", "all")
    assert left.stdout == on_backend(cluster, backend_of(cluster, user), user, "fetch", "hdr.subject",
                                     "mailbox", "INBOX", "all").stdout
    assert "keep" in left.stdout and "drop" not in left.stdout


def test_a_user_moved_between_two_commands_gets_the_second_on_the_new_backend(cluster: LocalCluster) -> None:
    user = "user7@example.test"
    deliver(cluster, user, "password7", "moving")
    first_host = backend_of(cluster, user)
    assert via_proxy(cluster, user, "mailbox", "status", "messages", "INBOX").stdout == "INBOX messages=1\n"
    assert backend_log_count(cluster, first_host, user) == 1
    other = next(b.host for b in cluster.backends if b.host != first_host)
    group = json.loads(cluster.cluster("--json", "user", "status", user).stdout)["group"]
    cluster.cluster("group", "move", "--direct", "DC1", group, other)
    assert via_proxy(cluster, user, "mailbox", "status", "messages", "INBOX").stdout == "INBOX messages=1\n"
    assert backend_log_count(cluster, other, user) == 1
    assert backend_log_count(cluster, first_host, user) == 1


@pytest.mark.parametrize(("mode", "port"), [("ssl", "tls"), ("starttls", "plain")])
def test_doveadm_ssl_clients(cluster: LocalCluster, mode: str, port: str) -> None:
    """`doveadm -o doveadm_ssl=ssl` on the `ssl = yes` listener, `=starttls` on the plain one: Dovecot's
    client verifies the proxy's certificate (ssl_client_ca_file) and gets the backend's answer."""
    proxy = cluster.proxies[0]
    number = TLS_PORT if port == "tls" else proxy.doveadm
    # doveadm_ssl applies once doveadm_port is set, which makes the client look the user up in a passdb
    # first (to see if it is proxied): a backend Dovecot's auth socket answers that it is not
    auth_socket = cluster.backends[0].dovecot.params.base_dir / "auth-userdb"
    options = (f"doveadm_ssl={mode}", f"doveadm_port={number}", f"auth_socket_path={auth_socket}",
               f"ssl_client_ca_file={cluster.root / 'tls' / 'localhost.crt'}")
    command = ("mailbox", "status", "-t", "all", "INBOX")
    through = run_doveadm(f"{proxy.host}:{number}", cluster.doveadm_password, USER, *command, options=options)
    plain = via_proxy(cluster, USER, *command)
    assert (through.returncode, through.stdout) == (0, plain.stdout), through.stderr
    assert plain.stdout.startswith("messages=")
    # the same client without TLS on the implicit-TLS port gets no doveadm handshake
    refused = run_doveadm(f"{proxy.host}:{TLS_PORT}", cluster.doveadm_password, USER, *command)
    assert refused.returncode != 0


def test_a_user_file_fans_out_to_each_users_backend(cluster: LocalCluster, tmp_path: Path) -> None:
    """`doveadm -F FILE -S proxy`: Dovecot's client reads the users itself and sends one command per
    user; each runs on that user's backend and the client merges the answers (with a username column)."""
    users = ["user1@example.test", "user2@example.test", "user3@example.test"]
    for index, user in enumerate(users, start=1):
        deliver(cluster, user, f"password{index}", "fan-out")
    listing = tmp_path / "users"
    listing.write_text("".join(f"{user}\n" for user in users))
    proxy = cluster.proxies[0]
    # the client opens a userdb listing even with -F, and panics at exit without an auth socket
    auth_socket = cluster.backends[0].dovecot.params.base_dir / "auth-userdb"
    fanned = subprocess.run(["doveadm", "-o", f"doveadm_password={cluster.doveadm_password}", "-o",
                             f"auth_socket_path={auth_socket}", "mailbox", "status",
                             "-S", f"{proxy.host}:{proxy.doveadm}", "-F", str(listing), "messages", "INBOX"],
                            capture_output=True, text=True, timeout=60, check=False)
    # Dovecot 2.3's own doveadm server fails the same request (it tries to read the file "" itself)
    backend = next(b for b in cluster.backends if b.host == backend_of(cluster, users[0])).dovecot.params
    direct_file = subprocess.run(["doveadm", "-o", f"doveadm_password={backend.doveadm_password}", "mailbox",
                                  "status", "-S", f"{backend.listen}:{backend.doveadm_tcp_port}", "-F", str(listing),
                                  "messages", "INBOX"], capture_output=True, text=True, timeout=60, check=False)
    assert "open() failed" in direct_file.stderr
    assert fanned.returncode == 0, fanned.stderr
    expected = set()
    for user in users:
        direct = on_backend(cluster, backend_of(cluster, user), user, "mailbox", "status", "messages", "INBOX")
        expected.add(f"{user} {direct.stdout.strip()}")
    assert set(fanned.stdout.splitlines()) == expected, fanned.stdout
    for user in users:
        assert backend_log_count(cluster, backend_of(cluster, user), user) >= 1


def test_dsync_backup_through_the_proxy(cluster: LocalCluster) -> None:
    """`doveadm backup -R tcp:proxy:port` (dsync-server on the user's backend, then the dsync stream
    relayed both ways) copies the user's mail into a local Maildir."""
    user = "user4@example.test"
    deliver(cluster, user, "password4", "dsync one")
    deliver(cluster, user, "password4", "dsync two")
    params = cluster.backends[0].dovecot.params
    owner = pwd.getpwnam(params.mail_uid)
    home = (cluster.shared_dir or cluster.root) / "dsync-home"  # a place the mail user can reach
    home.mkdir()
    os.chown(home, owner.pw_uid, owner.pw_gid)
    proxy = cluster.proxies[0]
    # no -u: the local side is the process's own user (HOME, USER, the mail user's uid), no userdb lookup
    local = ("-o", f"mail_uid={params.mail_uid}", "-o", f"mail_gid={params.mail_gid}", "-o",
             "mail_location=maildir:~/Maildir")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "USER": user}
    pulled = subprocess.run(["doveadm", "-o", f"doveadm_password={cluster.doveadm_password}", *local, "backup", "-R",
                             f"tcp:{proxy.host}:{proxy.doveadm}"], capture_output=True, text=True, timeout=120,
                            check=False, env=env, user=owner.pw_uid, group=owner.pw_gid)
    assert pulled.returncode == 0, pulled.stderr
    copied = subprocess.run(["doveadm", *local, "fetch", "hdr.subject", "mailbox", "INBOX", "all"],
                            capture_output=True, text=True, timeout=60, check=False, env=env, user=owner.pw_uid,
                            group=owner.pw_gid)
    direct = on_backend(cluster, backend_of(cluster, user), user, "fetch", "hdr.subject", "mailbox", "INBOX", "all")
    assert copied.stdout == direct.stdout and "dsync two" in copied.stdout, copied.stderr
    wait_until(lambda: re.search(rf"user={re.escape(user)} proto=doveadm dsync on \S+ ended",
                                 proxy.log_path.read_text()) is not None, 10, "the dsync session's end in the log")

    # import: the user's backend reads that Maildir (shared storage here) into a new mailbox. Dovecot
    # 2.3.19's doveadm server creates the new mailbox's directory as root (mode 0700), whether reached
    # through palomar or directly, so only the import's own answer and the listing are compared.
    source = f"maildir:{home / 'Maildir'}"
    other = "user3@example.test"
    deliver(cluster, other, "password3", "before the import")
    imported = via_proxy(cluster, user, "import", source, "Imported", "all")
    direct = on_backend(cluster, backend_of(cluster, other), other, "import", source, "Imported", "all")
    assert (imported.returncode, imported.stdout) == (direct.returncode, direct.stdout) == (0, ""), imported.stderr
    listing = via_proxy(cluster, user, "mailbox", "list")
    assert listing.stdout == on_backend(cluster, backend_of(cluster, user), user, "mailbox", "list").stdout
    assert "Imported" in listing.stdout.split()


def test_wrong_password_is_refused_logged_and_penalised(cluster: LocalCluster) -> None:
    proxy: ProxyNode = cluster.proxies[0]
    refused = via_proxy(cluster, USER, "mailbox", "status", "messages", "INBOX", password="wrong-password")
    assert refused.returncode != 0
    assert "doveadm authentication failed" in refused.stderr
    wait_until(lambda: "doveadm client authenticated with wrong password" in proxy.log_path.read_text(), 10,
               "the refusal in the proxy log")
    assert "wrong-password" not in proxy.log_path.read_text()
    metrics = subprocess.run(["curl", "-s", f"http://{proxy.host}:{proxy.metrics}/metrics"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    assert re.search(r"^\w*auth_failures_total [1-9]", metrics, re.M), metrics


def raw_session(cluster: LocalCluster, line: bytes) -> bytes:
    """One command over a raw doveadm connection (minor 0: no multiplexing), all the server sent."""
    proxy = cluster.proxies[0]
    with socket.create_connection((proxy.host, proxy.doveadm), timeout=30) as sock:
        plain = base64.b64encode(b"\0doveadm\0" + cluster.doveadm_password.encode())
        sock.sendall(b"VERSION\tdoveadm-server\t1\t0\nPLAIN\t" + plain + b"\n" + line)
        received, handshake = b"", b"-\n+\n"
        while True:
            data = sock.recv(65536)
            assert data, received
            received += data
            body = received[len(handshake):] if received.startswith(handshake) else b""
            if body and core.ReplyTracker(0).feed(body) is not None:
                return body


def test_kick_acts_where_the_user_is(cluster: LocalCluster) -> None:
    """`doveadm kick USER` (sent raw: Dovecot 2.3's doveadm sends only mail commands with -S) runs on
    the user's backend: the user's IMAP session there ends."""
    user = "user8@example.test"
    proxy = cluster.proxies[0]
    imap = imaplib.IMAP4(proxy.host, proxy.imap)
    imap.login(user, "password8")
    imap.select("INBOX")
    reply = raw_session(cluster, core.encode_command("", "", "kick", (user,)))
    assert reply == user.encode() + b"\t\n+\n"  # Dovecot 2.3 lists the users it kicked
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        imap.noop()
        imap.noop()


def test_commands_for_no_single_user_are_refused(cluster: LocalCluster) -> None:
    masked = raw_session(cluster, core.encode_command("", "user*", "mailbox status", ("messages", "INBOX")))
    assert masked == b"\n-USAGE\n"
    whole_server = raw_session(cluster, core.encode_command("", "", "who", ()))
    assert whole_server == b"\n-USAGE\n"
    proxy = cluster.proxies[0]
    wait_until(lambda: "command who refused" in proxy.log_path.read_text(), 10, "the refusal in the log")
