"""A WAN partition between two sites, each in a network namespace of its own joined by one veth link.

    namespace A (site DC1)                              namespace B (site DC2)
    HAProxy 127.0.0.51, proxy 127.0.0.10,   ==veth==    HAProxy 127.0.0.101, proxy 127.0.0.110,
    backends 127.0.0.2-3 (Dovecot)                      backends 127.0.0.102-103 (Dovecot)

Loopback addresses normally never leave `lo`: `route_localnet` lets them cross the veth, and /32
routes in the `local` table send the other site's load balancer and proxy over the link. Bringing
the link down removes those routes, so each side then finds the other's addresses unanswered (a
connection refused rather than a silent drop: the probes see the failure at once, the windows do
the waiting). Both sites share one SQLite GeoDB file on the host filesystem (reachable from both
namespaces), so what the partition cuts is the data path, not the GeoDB: the case of a Cassandra
GeoDB whose datacenters still replicate, or one side's GeoDB serving its stale-but-safe view.

The test drives the real reachability windows through the settings (`cluster_site_probe_interval`
1 s, `cluster_site_unreachable_after` 4 s, `cluster_site_reachable_after` 3 s, quorum 1: one proxy
per site) and prints the measured figures (docs/design/multi-site.md, "Measured"; run with -s).
"""

from __future__ import annotations

import base64
import imaplib
import json
import os
import re
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from netns_tools import add_namespace, ip, wait_for
from site_pair import SitePair, reaches, run_in, timed, timed_value

from palomar.cluster import codec
from palomar.cluster.model import Group
from palomar.devcluster.certs import hop_certificates
from palomar.devcluster.cluster import LbPorts, LocalCluster
from palomar.devcluster.sites import SITE_PORT, home_demo_users, home_site_of, two_sites
from palomar.geodb.repository import GeoDB
from palomar.localdb import LocalDB

DC1_LB = "127.0.0.51"
DC1_PROXY = "127.0.0.10"
DC2_LB = "127.0.0.101"
DC2_PROXY = "127.0.0.110"
WINDOWS = ("cluster_site_probe_interval = 1 secs", "cluster_site_unreachable_after = 4 secs",
           "cluster_site_reachable_after = 3 secs", "cluster_site_unreachable_quorum = 1")
CONTROLLER = ("controller_site_failover_after = 2 secs", "controller_site_recover_after = 8 secs",
              "controller_site_ramp_step = 50", "controller_site_ramp_interval = 1 secs")
"""Site-failover ramps in two steps of 50 %; recover_after is long enough for the test to see the users
held in the failover site after the heal (the controller's tick is 2 s)."""
RAMP = ["force-move 50%", "force-move 100%", "recover 50%", "recover 100%", "clear 0%"]
"""What one controller does for the site it takes over, start to end, with the settings above."""
LATENCY_LOGINS = 15
CLIENT_PATIENCE = 60.0
"""Seconds a test client waits for an answer during a silent partition: far above the proxy's own bounds
(`cluster_hop_connect_timeout` 2 s + `cluster_hop_answer_timeout` 4 s), so only a hang reaches it."""


SILENT_TABLE = "palomar_partition"


def nft(namespace: str, *args: str) -> None:
    result = subprocess.run(["ip", "netns", "exec", namespace, "nft", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)} in {namespace}: {result.stderr.strip()}")


@dataclass
class Link:
    a: str
    b: str
    dev_a: str
    dev_b: str

    @classmethod
    def create(cls) -> Link:
        tag = f"{os.getpid() % 100000}"
        link = cls(f"pal-part{tag}-a", f"pal-part{tag}-b", f"ppa{tag}", f"ppb{tag}")
        try:
            for ns in (link.a, link.b):
                add_namespace(ns)
            ip("link", "add", link.dev_a, "netns", link.a, "type", "veth", "peer", "name", link.dev_b, "netns", link.b)
            link.up()
        except BaseException:
            link.remove()
            raise
        return link

    def up(self) -> None:
        """Both ends up and the routes over them (a device going down loses its routes)."""
        ip("-n", self.a, "link", "set", self.dev_a, "up")
        ip("-n", self.b, "link", "set", self.dev_b, "up")
        for far in (DC2_LB, DC2_PROXY):
            ip("-n", self.a, "route", "replace", "table", "local", f"{far}/32", "dev", self.dev_a, "src", DC1_PROXY)
        for far in (DC1_LB, DC1_PROXY):
            ip("-n", self.b, "route", "replace", "table", "local", f"{far}/32", "dev", self.dev_b, "src", DC2_PROXY)

    def down(self) -> None:
        ip("-n", self.a, "link", "set", self.dev_a, "down")
        ip("-n", self.b, "link", "set", self.dev_b, "down")

    def silence(self) -> None:
        """Drop every packet arriving over the link, in both namespaces, without a word back: the link
        and its routes stay up, so connections and established sessions hang instead of failing."""
        for ns, dev in ((self.a, self.dev_a), (self.b, self.dev_b)):
            nft(ns, "add", "table", "inet", SILENT_TABLE)
            nft(ns, "add", "chain", "inet", SILENT_TABLE, "in", "{ type filter hook prerouting priority -300 ; }")
            nft(ns, "add", "rule", "inet", SILENT_TABLE, "in", "iifname", dev, "drop")

    def unsilence(self) -> None:
        for ns in (self.a, self.b):
            nft(ns, "delete", "table", "inet", SILENT_TABLE)

    def remove(self) -> None:
        for ns in (self.a, self.b):  # deleting a namespace deletes its veth end
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@dataclass
class Sites(SitePair):
    link: Link = field(kw_only=True)

    def login_answer(self, entry: str, user: str) -> str:
        """What an IMAP LOGIN through `entry`'s HAProxy is answered: `OK`, the NO text, or `hung` when
        nothing came back for CLIENT_PATIENCE seconds (far above every documented timeout)."""
        cluster = self.site(entry)

        def login() -> str:
            try:
                client = imaplib.IMAP4(cluster.lb_host, cluster.lb_imap, timeout=CLIENT_PATIENCE)
            except TimeoutError:
                return "hung"
            try:
                client.login(user, self.password(user))
                client.logout()
                return "OK"
            except imaplib.IMAP4.error as exc:
                return str(exc)
            except TimeoutError:
                return "hung"
            finally:
                client.shutdown()
        return run_in(self.namespace(entry), login)

    def deliver_across(self, dc1_user: str, dc2_user: str) -> None:
        """One message to each user through the other site's HAProxy."""
        self.deliver_acked("DC1", dc2_user)
        self.deliver_acked("DC2", dc1_user)

    def wait_rows(self, reachable: bool, what: str) -> float:
        """Wait until both sites' rows about each other say `reachable`; the seconds it took."""
        return wait_for(lambda: self.reachability() == {("DC1", "DC2"): reachable, ("DC2", "DC1"): reachable}, 30,
                        what)

    def heal(self, restore: Callable[[], None], dc1_user: str, dc2_user: str) -> tuple[float, float]:
        """`restore` the link; seconds until both rows are reachable, and until each user is served at
        home through the other site's HAProxy."""
        healed = time.monotonic()
        restore()
        self.wait_rows(True, "the reachability rows to call the other site reachable again")
        back = time.monotonic() - healed
        wait_for(lambda: self.lands("DC1", dc2_user, "DC2"), 60, "DC2's user to be served at home through DC1")
        wait_for(lambda: self.lands("DC2", dc1_user, "DC1"), 60, "DC1's user to be served at home through DC2")
        return back, time.monotonic() - healed


def site_rows(sites: Sites) -> dict[str, tuple[int | None, tuple[str, ...], int | None]]:
    """Site -> (force-move percentage, its destination site names, recover percentage), from the GeoDB."""
    async def read(db: GeoDB, names: dict[uuid.UUID, str]) -> dict[str, tuple[int | None, tuple[str, ...], int | None]]:
        rows = {}
        by_id = {str(site_id): name for site_id, name in names.items()}
        for site in await db.site_list():
            fm = site.force_move
            dest = tuple(by_id.get(d, d) for d in fm.dest) if fm else ()
            rows[site.name] = (fm.percentage if fm else None, dest, site.recover_percentage)
        return rows
    return sites.on_geodb(read)


def ramps(sites: Sites, site: str, since: int) -> list[tuple[str, str]]:
    """(target site, action) of every `controller_site_ramp` line of `site`'s controller after byte `since`."""
    text = (sites.site(site).root / "controller" / "palomar.log").read_bytes()[since:].decode(errors="replace")
    return re.findall(r"event=controller_site_ramp .*?target_site=(\S+) action=\"([^\"]+)\"", text)


def controller_log_size(sites: Sites, site: str) -> int:
    return (sites.site(site).root / "controller" / "palomar.log").stat().st_size


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    root: Path = tmp_path_factory.mktemp("partition")
    link = Link.create()
    clusters: list[LocalCluster] = []
    try:
        dc1, dc2 = two_sites(root, LbPorts(), users=4, site_port=SITE_PORT)
        dc1.lb_host, dc1.lb_ipv6 = DC1_LB, ""
        for cluster in (dc1, dc2):
            cluster.proxy_settings = {"*": WINDOWS}
            cluster.controller_settings = CONTROLLER
        assert dc1.shared_hop_tls is not None
        hop_certificates(dc1.shared_hop_tls, [*dc1._backend_hosts(), DC1_LB, *dc2._backend_hosts(), DC2_LB])
        clusters.append(dc1)
        run_in(link.a, dc1.start)
        clusters.append(dc2)
        run_in(link.b, dc2.start)
        home_demo_users(dc1)
        for cluster in (dc1, dc2):  # the controllers say what they would do; the proxies' routing fails over
            cluster.cluster("feature", "set", cluster.site, "site-failover", "dryrun")
        yield Sites({"DC1": link.a, "DC2": link.b}, dc1, dc2, link=link)
    finally:
        for cluster in reversed(clusters):
            cluster.stop()
        link.remove()


def test_a_partition_keeps_both_sites_serving_fails_over_and_heals(sites: Sites) -> None:
    dc1_user, dc2_user = "user1@example.test", "user2@example.test"
    assert (home_site_of(dc1_user), home_site_of(dc2_user)) == ("DC1", "DC2")
    # connected: each user ends in its home site whichever site it enters, mail too
    sites.wait_rows(True, "both sites' proxies to write their reachability rows")
    for user, home in ((dc1_user, "DC1"), (dc2_user, "DC2")):
        for entry in ("DC1", "DC2"):
            assert sites.lands(entry, user, home), (user, entry)
            sites.deliver_acked(entry, user)
    direct: list[float] = []
    relayed: list[float] = []
    for _ in range(LATENCY_LOGINS):  # interleaved, so both see the same machine load
        direct.append(timed(lambda: sites.imap_login("DC2", dc2_user)))
        relayed.append(timed(lambda: sites.imap_login("DC1", dc2_user)))
    moves_before = sites.moves()

    # partition: each side keeps serving its own users at once
    cut = time.monotonic()
    sites.link.down()
    assert not run_in(sites.link.a, lambda: reaches(DC2_LB, SITE_PORT))
    assert sites.lands("DC1", dc1_user, "DC1")
    assert sites.lands("DC2", dc2_user, "DC2")
    sites.deliver_acked("DC1", dc1_user)
    sites.deliver_acked("DC2", dc2_user)
    # the rows flip after the window, in both directions
    sites.wait_rows(False, "the reachability rows to call the other site unreachable")
    flipped = time.monotonic() - cut
    # DC2's user entering through DC1 is served in DC1 by its failover group (and DC1's in DC2)
    wait_for(lambda: sites.lands("DC1", dc2_user, "DC1"), 30, "DC1 to serve DC2's user")
    failover = time.monotonic() - cut
    wait_for(lambda: sites.lands("DC2", dc1_user, "DC2"), 30, "DC2 to serve DC1's user")
    # the GeoDB records where the user was served in each site: a backend of that site
    where = sites.user_sites(dc2_user)
    assert where.keys() == {"DC1", "DC2"}
    assert where["DC1"] in sites.dc1._backend_hosts() and where["DC2"] in sites.dc2._backend_hosts(), where
    # `site reachability list` shows the rows
    listed = json.loads(sites.dc1.cluster("--json", "site", "reachability", "list").stdout)
    assert sorted((r["src"], r["dest"], r["reachable"]) for r in listed) == [("DC1", "DC2", False),
                                                                              ("DC2", "DC1", False)]
    # each site's controller reads the same rows: its site-failover feature would take the other site over
    for site, lost in (("DC1", "DC2"), ("DC2", "DC1")):
        log = sites.site(site).root / "controller" / "palomar.log"
        line = re.compile(rf"event=controller_dryrun feature=site-failover site={site} .*{lost} unreachable")
        wait_for(lambda log=log, line=line: line.search(log.read_text(errors="replace")), 30,
                 f"{site}'s controller to plan the failover of {lost}")
    sites.deliver_across(dc1_user, dc2_user)
    sites.deliver_acked("DC2", dc2_user)  # split brain: its home site serves it too

    # heal: the rows flip back and each user is served at home again, through either site
    back, converged = sites.heal(sites.link.up, dc1_user, dc2_user)
    sites.deliver_across(dc1_user, dc2_user)

    # within each site one backend per user; no move was needed; every acknowledged message stored once
    sites.check_consistent(moves_before)
    print(f"\nmeasured: partition->rows flipped {flipped:.1f}s, partition->failover service {failover:.1f}s, "
          f"heal->rows reachable {back:.1f}s, heal->users home {converged:.1f}s, moves 0, "
          f"IMAP login median direct {statistics.median(direct) * 1000:.0f} ms, relayed "
          f"{statistics.median(relayed) * 1000:.0f} ms ({LATENCY_LOGINS} each)")


def noop_answer(client: imaplib.IMAP4) -> str:
    """`OK`, `closed` (the connection ended) or `hung` (no answer within the client's timeout)."""
    try:
        client.noop()
    except TimeoutError:
        return "hung"
    except (imaplib.IMAP4.abort, OSError, EOFError) as exc:
        return "hung" if "timed out" in str(exc) else "closed"
    return "OK"


def test_site_failover_on_force_moves_the_lost_site_and_recovers_it_in_steps(sites: Sites) -> None:
    """The controllers' `site-failover` feature `on`: each side takes the other over after the window
    (a force-move ramp towards itself, written to the GeoDB both share), the users are served in the
    failover site, and after the heal they stay there until the recover window has passed, then the
    recover ramp brings them home and both sites' force-move and recover state is cleared."""
    dc1_user, dc2_user = "user1@example.test", "user2@example.test"
    sites.wait_rows(True, "connected sites")
    clean = {"DC1": (None, (), None), "DC2": (None, (), None)}
    assert site_rows(sites) == clean
    marks = {site: controller_log_size(sites, site) for site in ("DC1", "DC2")}
    moves_before = sites.moves()
    for site in ("DC1", "DC2"):
        sites.site(site).cluster("feature", "set", site, "site-failover", "on")
    for user, home in ((dc1_user, "DC1"), (dc2_user, "DC2")):
        for entry in ("DC1", "DC2"):
            assert sites.lands(entry, user, home), (user, entry)

    cut = time.monotonic()
    sites.link.down()
    # each controller takes the other site over: its force-move ramps to 100 % towards itself
    taken_over = {"DC1": (100, ("DC2",), None), "DC2": (100, ("DC1",), None)}
    wait_for(lambda: site_rows(sites) == taken_over, 60, "both controllers to force-move the other site to 100%")
    ramped = time.monotonic() - cut
    # the users are served in the failover site (and at home on their own side: split brain)
    assert sites.lands("DC1", dc2_user, "DC1")
    assert sites.lands("DC2", dc1_user, "DC2")
    assert sites.lands("DC2", dc2_user, "DC2")
    sites.deliver_across(dc1_user, dc2_user)

    healed = time.monotonic()
    sites.link.up()
    sites.wait_rows(True, "the reachability rows to call the other site reachable again")
    # inside the recover window the force-move holds the users in the failover site, whichever site
    # they enter: no flapping back on the first good probe
    assert site_rows(sites) == taken_over
    assert sites.lands("DC2", dc2_user, "DC1")
    assert sites.lands("DC1", dc1_user, "DC2")
    sites.deliver_acked("DC2", dc2_user)
    # then the recover ramp brings them home and the state is cleared
    wait_for(lambda: site_rows(sites) == clean, 60, "both controllers to recover the other site and clear")
    cleared = time.monotonic() - healed
    for user, home in ((dc1_user, "DC1"), (dc2_user, "DC2")):
        for entry in ("DC1", "DC2"):
            wait_for(lambda user=user, home=home, entry=entry: sites.lands(entry, user, home), 30,
                     f"{user} to be served in {home} through {entry}")
    converged = time.monotonic() - healed
    sites.deliver_across(dc1_user, dc2_user)

    # each controller ramped the other site exactly once up and once down; no group moved; one backend
    # per user in each site; every acknowledged message stored once
    for site, lost in (("DC1", "DC2"), ("DC2", "DC1")):
        assert ramps(sites, site, marks[site]) == [(lost, step) for step in RAMP], site
    sites.check_consistent(moves_before)
    print(f"\nmeasured (site-failover on): partition->force-move 100% {ramped:.1f}s, "
          f"heal->force-move and recover cleared {cleared:.1f}s, heal->users home {converged:.1f}s, "
          f"ramp steps {len(RAMP)} per site, group moves 0")


def test_a_silent_partition_hangs_no_login_and_fails_over_and_heals(sites: Sites) -> None:
    """The link stays up but drops every packet (nft, both namespaces): connections to the other site
    hang instead of being refused. The probes still decide within the window (each waits at most
    `min(5 s, probe interval)`), a login or delivery relayed into the silence is answered a temporary
    failure within the hop's timeouts, a session relayed before the partition is cut when the row
    flips (not left to TCP's retransmission limit), and failover and healing work as with the link
    down."""
    dc1_user, dc2_user = "user1@example.test", "user2@example.test"
    sites.wait_rows(True, "connected sites")
    for site in ("DC1", "DC2"):  # the proxies' routing alone, as in the link-down test
        sites.site(site).cluster("feature", "set", site, "site-failover", "dryrun")
    wait_for(lambda: site_rows(sites) == {"DC1": (None, (), None), "DC2": (None, (), None)}, 60,
             "no site force-move or recover left")
    moves_before = sites.moves()
    assert sites.lands("DC1", dc2_user, "DC2")
    idle = run_in(sites.link.a, lambda: imaplib.IMAP4(sites.dc1.lb_host, sites.dc1.lb_imap, timeout=CLIENT_PATIENCE))
    run_in(sites.link.a, lambda: idle.login(dc2_user, sites.password(dc2_user)))

    cut = time.monotonic()
    sites.link.silence()
    # inside the window a login and a delivery are still relayed into the silence: a temporary failure
    # each, not a hang (started together, so all of them are routed long before the row can flip)
    with ThreadPoolExecutor(3) as pool:
        connects = pool.submit(run_in, sites.link.a, lambda: reaches(DC2_LB, SITE_PORT))
        login = pool.submit(timed_value, lambda: sites.login_answer("DC1", dc2_user))
        delivery = pool.submit(sites.deliver, "DC1", dc2_user)
        into_silence, answer = login.result()
        assert not connects.result()
        assert "[UNAVAILABLE]" in answer, answer
        assert delivery.result() is None  # 451 for the recipient, nothing stored (checked below)
    # each site keeps serving its own users
    assert sites.lands("DC1", dc1_user, "DC1")
    assert sites.lands("DC2", dc2_user, "DC2")
    sites.wait_rows(False, "the reachability rows to call the silent site unreachable")
    flipped = time.monotonic() - cut
    # the relayed session opened before is cut once the row says unreachable: its client is not left
    # waiting for TCP to give up, and can log in again (served in DC1 below)
    assert run_in(sites.link.a, lambda: noop_answer(idle)) == "closed"
    # and DC2's proxy, which relayed it on to its backend, cuts its side too (its row says DC1 is gone)
    dc2_proxy_log = sites.dc2.proxies[0].log_path
    wait_for(lambda: "event=proxy_sessions_cut from_site=" in dc2_proxy_log.read_text(errors="replace"), 30,
             "DC2's proxy to cut the session relayed from DC1")
    wait_for(lambda: sites.lands("DC1", dc2_user, "DC1"), 30, "DC1 to serve DC2's user")
    failover = time.monotonic() - cut
    wait_for(lambda: sites.lands("DC2", dc1_user, "DC2"), 30, "DC2 to serve DC1's user")
    sites.deliver_across(dc1_user, dc2_user)

    back, converged = sites.heal(sites.link.unsilence, dc1_user, dc2_user)
    sites.deliver_across(dc1_user, dc2_user)

    sites.check_consistent(moves_before)
    print(f"\nmeasured (silent drop): login into the silence answered in {into_silence:.1f}s, "
          f"partition->rows flipped {flipped:.1f}s, partition->failover service {failover:.1f}s, "
          f"heal->rows reachable {back:.1f}s, heal->users home {converged:.1f}s, group moves 0")


def test_an_lmtp_referral_from_the_other_sites_backend_is_followed_through_its_load_balancer(
        sites: Sites) -> None:
    """DC2's proxy routes user2 from a stale cache entry to the wrong DC2 backend, which refers the
    recipient to the right one. DC1's proxy, which relayed the recipient from DC1's HAProxy, cannot
    reach DC2's backends (other namespace): it asks DC2's load balancer again, naming the referred
    backend, and the message is stored once, on the backend that owns the user."""
    dc2_user = "user2@example.test"
    sites.wait_rows(True, "connected sites")
    assert sites.lands("DC2", dc2_user, "DC2")  # the user's group exists and is assigned
    moves_before = sites.moves()

    async def placement(db: GeoDB, names: dict[uuid.UUID, str]) -> tuple[uuid.UUID, Group, dict[str, uuid.UUID]]:
        dc2 = next(i for i, n in names.items() if n == "DC2")
        user = await db.user_get(dc2_user)
        assert user is not None and user.group_name
        group = await db.group_get(dc2, user.group_name)
        assert group is not None and group.backend_id is not None
        return dc2, group, {b.host: b.id for b in await db.backend_list(dc2)}
    dc2_id, group, backends = sites.on_geodb(placement)
    owner = next(host for host, backend_id in backends.items() if backend_id == group.backend_id)
    wrong = next(host for host in backends if host != owner)
    key = f"group/{dc2_id}/{group.name}"
    with LocalDB(str(sites.dc2.proxies[0].config.parent / "localdb.sqlite")) as cache:
        cache.cache_put(key, codec.dumps(Group(site_id=dc2_id, name=group.name, backend_id=backends[wrong])), 3600)
    try:
        sites.deliver_acked("DC1", dc2_user)
    finally:
        with LocalDB(str(sites.dc2.proxies[0].config.parent / "localdb.sqlite")) as cache:
            cache.cache_delete(key)
    wrong_log = next(n for n in sites.dc2.backends if n.host == wrong).log_path.read_text(errors="replace")
    assert re.search(rf"rcpt={re.escape(dc2_user)} referred to {re.escape(owner)}", wrong_log)
    dc1_log = sites.dc1.proxies[0].log_path.read_text(errors="replace")
    assert re.search(rf"rcpt={re.escape(dc2_user)} referred within site DC2 to {re.escape(owner)}", dc1_log)
    sites.check_consistent(moves_before)


def test_doveadm_for_a_user_of_the_other_site_is_forwarded_there(sites: Sites) -> None:
    """`doveadm -S <DC1 proxy> -u user2` (the real Dovecot 2.3 client) and the HTTP API through DC1's
    HAProxy (curl) run on user2's backend in DC2, as a login would: the same Message-IDs as DC2's own
    store shows, including a message delivered only there."""
    dc2_user = "user2@example.test"
    sites.wait_rows(True, "connected sites")
    sites.deliver_acked("DC2", dc2_user)
    newest = sites.acked[-1]
    dc2_store = set(re.findall(r"<[0-9a-f]+@partition\.test>", sites.dc2.backends[0].dovecot.doveadm(
        "fetch", "-u", dc2_user, "hdr.message-id", "mailbox", "INBOX", "ALL").stdout))
    assert newest in dc2_store
    dc1 = sites.dc1

    def tcp() -> subprocess.CompletedProcess[str]:
        proxy = dc1.proxies[0]
        return subprocess.run(["doveadm", "-o", f"doveadm_password={dc1.doveadm_password}", "fetch",
                               "-S", f"{proxy.host}:{proxy.doveadm}", "-u", dc2_user, "hdr.message-id",
                               "mailbox", "INBOX", "ALL"], capture_output=True, text=True, timeout=60, check=False)
    listed = run_in(sites.link.a, tcp)
    assert listed.returncode == 0, listed.stderr
    assert set(re.findall(r"<[0-9a-f]+@partition\.test>", listed.stdout)) == dc2_store

    def http() -> subprocess.CompletedProcess[str]:
        body = [["fetch", {"user": dc2_user, "field": ["hdr.message-id"], "query": ["mailbox", "INBOX", "all"]},
                 "t1"]]
        key = base64.b64encode(dc1.doveadm_api_key.encode()).decode()
        return subprocess.run(["curl", "-s", "--max-time", "60", "-X", "POST", "-H", "Content-Type: application/json",
                               "-H", f"Authorization: X-Dovecot-API {key}", "-d", json.dumps(body),
                               f"http://{dc1.lb_host}:{dc1.lb_doveadm_http}/doveadm/v1"],
                              capture_output=True, text=True, timeout=90, check=False)
    answer = run_in(sites.link.a, http)
    [[kind, rows, tag]] = json.loads(answer.stdout)
    assert (kind, tag) == ("doveadmResponse", "t1"), answer.stdout
    assert {row["hdr.message-id"] for row in rows} == dc2_store
    dc2_backend_logs = "".join(n.log_path.read_text(errors="replace") for n in sites.dc2.backends)
    assert len(re.findall(rf"user={re.escape(dc2_user)} proto=doveadm client=\S+ login ok", dc2_backend_logs)) >= 2
