"""Cut-over from a real Dovecot 2.3 director ring to palomar: every user lands where the director had it.

A ring of two real directors (Debian 12's dovecot-core) stands in front of the cluster's two backend
Dovecots. Users log in through the directors. The operator then changes the ring (a mail server's
vhost count), so the directors' user directory and their hash ring disagree for some users, and cuts
over: `palomar cluster director transition-config` turns the directors' `doveadm director status` into
the proxies' `cluster_director_transition_config`, and `palomar cluster director import` takes the
directors' `doveadm director map`. Each user's first
palomar login (through HAProxy) must then reach the backend the director had chosen, seen on the
backend Dovecot itself (`who`): the directory's choice for the users the directors had seen, the
ring's (`doveadm director status USER`: Hashed) for those they had not.
"""

from __future__ import annotations

import imaplib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from palomar.cluster.director_hash import DirectorRing, MailHost
from palomar.cluster.director_transition import parse_director_map
from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.director import DirectorRingInstance
from palomar.devcluster.net import wait_until

MAIL_SERVERS = ("127.0.0.2", "127.0.0.3")
DIRECTORS = ("127.0.0.30", "127.0.0.31")
CHANGED_VHOSTS = 20
"""127.0.0.3's vhost count after the operator's change (from the default 100)."""
SEEN = 12
"""user1..user12 log in through the directors; user13..user20 never do."""


@pytest.fixture(scope="module")
def cluster(harness_root: Path) -> Iterator[LocalCluster]:
    root = harness_root / "director-cluster"
    root.mkdir()
    transition = root / "director-transition.conf"
    # The director era's ring; the cut-over rewrites it from the directors' status.
    transition.write_text("".join(f"mail_server {ip} {{\n}}\n" for ip in MAIL_SERVERS))
    c = LocalCluster(root, backends_count=2, proxies_count=2, users_count=20, allow_cleartext=True,
                     password_scheme="PLAIN", shared_backend_imap=True,
                     proxy_settings={"*": (f"cluster_director_transition_config = {transition}",)})
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def ring(cluster: LocalCluster, harness_root: Path) -> Iterator[DirectorRingInstance]:
    root = harness_root / "director-ring"
    root.mkdir()
    passwd = root / "users.passwd"
    shutil.copy(cluster.root / "users.passwd", passwd)
    passwd.chmod(0o644)  # read by the directors' unprivileged auth process
    instance = DirectorRingInstance(root, DIRECTORS, MAIL_SERVERS, cluster.backend_imap_port, passwd,
                                    master_password=cluster.backend_master_password)
    instance.start()
    yield instance
    instance.stop()


def _who(cluster: LocalCluster) -> dict[str, set[str]]:
    """Users with a session on each backend's Dovecot, by backend address."""
    return {b.host: {r["username"] for r in b.dovecot.doveadm_http("who", {}) if "username" in r}
            for b in cluster.backends}


def _login_via_director(ring: DirectorRingInstance, index: int, user: str, password: str) -> None:
    node = ring.nodes[index % len(ring.nodes)]
    with imaplib.IMAP4(node.host, node.imap, timeout=15) as imap:
        imap.login(user, password)
        imap.append("INBOX", None, None, f"Subject: warm {user}\r\n\r\nwarm\r\n".encode())
        imap.select("INBOX")
        imap.logout()


def test_first_palomar_login_lands_where_the_director_had_the_user(cluster: LocalCluster,
                                                                 ring: DirectorRingInstance) -> None:
    users = {u.name: u.password for u in cluster.users}
    names = list(users)
    # 1. The director era: users log in through both directors (proxied to the backend Dovecots).
    for index, name in enumerate(names[:SEEN]):
        _login_via_director(ring, index, name, users[name])
    # The directors share one user directory, and it is what this replica of the ring computes.
    initial = DirectorRing(tuple(MailHost(ip) for ip in MAIL_SERVERS))
    users_file = ring.root / "seen-users.txt"
    users_file.write_text("".join(f"{name}\n" for name in names[:SEEN]))
    map_text = ring.doveadm("director", "map", "-f", str(users_file), node=1)
    directory = {row.user: row.ip for row in parse_director_map(map_text)}
    assert directory == {name: initial.host_for(name) for name in names[:SEEN]}

    # 2. The operator changes the ring: new assignments follow it, users in the directory keep theirs.
    ring.doveadm("director", "update", "127.0.0.3", str(CHANGED_VHOSTS))
    changed = DirectorRing((MailHost("127.0.0.2"), MailHost("127.0.0.3", CHANGED_VHOSTS)))
    hashed = {name: ring.hashed(name, node=1) for name in names}
    assert hashed == {name: changed.host_for(name) for name in names}  # the ring the transition file describes
    differ = [name for name in names[:SEEN] if directory[name] != hashed[name]]
    assert differ, "no seen user whose directory entry differs from the changed ring: the import would be moot"
    expected = {name: directory.get(name, hashed[name]) for name in names}
    assert set(expected.values()) == set(MAIL_SERVERS)

    # 3. Cut-over (docs/director-migration.md): the transition file from the directors' status, the
    #    proxies restarted to read it, the directors' map imported.
    status = ring.root / "director-status.txt"
    status.write_text(ring.doveadm("director", "status"))
    transition = cluster.palomar("cluster", "director", "transition-config", str(status)).stdout
    assert f"mail_server 127.0.0.3 {{\n  backend = 127.0.0.3\n  vhost_count = {CHANGED_VHOSTS}\n" in transition
    (cluster.root / "director-transition.conf").write_text(transition)
    for proxy in cluster.proxies:
        cluster.restart_proxy(proxy)
    map_file = ring.root / "director-map.txt"
    map_file.write_text(ring.doveadm("director", "map", "-f", str(users_file)))
    imported = cluster.cluster("director", "import", str(map_file)).stdout
    assert f"imported {SEEN} users" in imported
    for node in ring.nodes:  # the director era ends
        assert node.proc is not None
    ring.stop()

    # 4. Each user's first palomar login (through HAProxy) lands on the director's choice.
    for name in names:
        with imaplib.IMAP4(cluster.lb_host, cluster.lb_imap, timeout=15) as imap:
            imap.login(name, users[name])
            imap.select("INBOX")
            who = _who(cluster)
            assert name in who[expected[name]], f"{name}: expected on {expected[name]}, sessions: {who}"
            assert all(name not in sessions for host, sessions in who.items() if host != expected[name])
            imap.logout()


LIVE_SERVERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "fd00::a", "fd00:0:0::b")
"""Mail servers of the hash-only ring (nothing needs to listen there to be hashed to)."""


@pytest.fixture(scope="module")
def hash_ring(harness_root: Path) -> Iterator[DirectorRingInstance]:
    root = harness_root / "director-hash-ring"
    root.mkdir()
    passwd = root / "users.passwd"
    passwd.write_text("")
    passwd.chmod(0o644)
    instance = DirectorRingInstance(root, ("127.0.0.32", "127.0.0.33"), LIVE_SERVERS, 143, passwd,
                                    master_password="unused", username_hash="%Ln")
    instance.start()
    yield instance
    instance.stop()


def test_ring_computation_equals_a_live_director_ring(hash_ring: DirectorRingInstance) -> None:
    """The ring, changed the ways an operator changes it, against the director's own `Hashed:` answer."""
    names = [f"{'User' if i % 3 else 'user'}{i}@{'a' if i % 2 else 'B'}.example" for i in range(120)]
    hosts = {ip: MailHost(ip) for ip in LIVE_SERVERS}

    def check() -> None:
        replica = DirectorRing(tuple(hosts.values()), "%Ln")
        for index, name in enumerate(names):
            assert hash_ring.hashed(name, node=index % 2) == replica.host_for(name), name

    check()
    hash_ring.doveadm("director", "update", "127.0.0.3", "7")
    hash_ring.doveadm("director", "update", "fd00::b", "250")
    hash_ring.doveadm("director", "down", "127.0.0.2")
    hosts["127.0.0.3"] = MailHost("127.0.0.3", 7)
    hosts["fd00:0:0::b"] = MailHost("fd00::b", 250)
    hosts["127.0.0.2"] = MailHost("127.0.0.2", down=True)
    wanted = {h.ip: (h.vhost_count, "down" if h.down else "up") for h in hosts.values()}
    wait_until(lambda: all(hash_ring.mail_servers_status(node=n) == wanted for n in (0, 1)), 10,
               "the changes on both directors")
    check()
