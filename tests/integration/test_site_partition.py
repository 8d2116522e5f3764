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

import json
import os
import re
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns_tools import add_namespace, ip
from site_pair import SitePair, reaches, run_in, timed, wait_for

from palomar.devcluster.certs import hop_certificates
from palomar.devcluster.cluster import LbPorts, LocalCluster
from palomar.devcluster.sites import SITE_PORT, home_demo_users, home_site_of, two_sites

DC1_LB = "127.0.0.51"
DC1_PROXY = "127.0.0.10"
DC2_LB = "127.0.0.101"
DC2_PROXY = "127.0.0.110"
WINDOWS = ("cluster_site_probe_interval = 1 secs", "cluster_site_unreachable_after = 4 secs",
           "cluster_site_reachable_after = 3 secs", "cluster_site_unreachable_quorum = 1")
LATENCY_LOGINS = 15


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

    def remove(self) -> None:
        for ns in (self.a, self.b):  # deleting a namespace deletes its veth end
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@dataclass
class Sites(SitePair):
    link: Link | None = None

    def cut(self) -> Link:
        assert self.link is not None
        return self.link


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
            cluster.controller_settings = ("controller_site_failover_after = 2 secs",)
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
    acked: list[str] = []

    def deliver(entry: str, user: str) -> None:
        message_id = sites.deliver(entry, user)
        assert message_id is not None, (entry, user)
        acked.append(message_id)

    # connected: each user ends in its home site whichever site it enters, mail too
    wait_for(lambda: sites.reachability() == {("DC1", "DC2"): True, ("DC2", "DC1"): True}, 30,
             "both sites' proxies to write their reachability rows")
    for user, home in ((dc1_user, "DC1"), (dc2_user, "DC2")):
        for entry in ("DC1", "DC2"):
            assert sites.lands(entry, user, home), (user, entry)
            deliver(entry, user)
    direct: list[float] = []
    relayed: list[float] = []
    for _ in range(LATENCY_LOGINS):  # interleaved, so both see the same machine load
        direct.append(timed(lambda: sites.imap_login("DC2", dc2_user)))
        relayed.append(timed(lambda: sites.imap_login("DC1", dc2_user)))
    moves_before = sites.moves()

    # partition: each side keeps serving its own users at once
    cut = time.monotonic()
    sites.cut().down()
    assert not run_in(sites.cut().a, lambda: reaches(DC2_LB, SITE_PORT))
    assert sites.lands("DC1", dc1_user, "DC1")
    assert sites.lands("DC2", dc2_user, "DC2")
    deliver("DC1", dc1_user)
    deliver("DC2", dc2_user)
    # the rows flip after the window, in both directions
    wait_for(lambda: sites.reachability() == {("DC1", "DC2"): False, ("DC2", "DC1"): False}, 30,
             "the reachability rows to call the other site unreachable")
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
    deliver("DC1", dc2_user)
    deliver("DC2", dc1_user)
    deliver("DC2", dc2_user)  # split brain: its home site serves it too

    # heal: the rows flip back and each user is served at home again, through either site
    healed = time.monotonic()
    sites.cut().up()
    wait_for(lambda: sites.reachability() == {("DC1", "DC2"): True, ("DC2", "DC1"): True}, 30,
             "the reachability rows to call the other site reachable again")
    back = time.monotonic() - healed
    wait_for(lambda: sites.lands("DC1", dc2_user, "DC2"), 30, "DC2's user to be served at home through DC1")
    wait_for(lambda: sites.lands("DC2", dc1_user, "DC1"), 30, "DC1's user to be served at home through DC2")
    converged = time.monotonic() - healed
    deliver("DC1", dc2_user)
    deliver("DC2", dc1_user)

    # within each site one backend per user; no move was needed; every acknowledged message stored once
    for (site, user), backends in sites.served().items():
        assert len(backends) == 1, (site, user, backends)
    moves = sites.moves() - moves_before
    assert moves == 0
    stored = sites.stored(dc1_user) + sites.stored(dc2_user)
    assert sorted(stored) == sorted(acked)
    print(f"\nmeasured: partition->rows flipped {flipped:.1f}s, partition->failover service {failover:.1f}s, "
          f"heal->rows reachable {back:.1f}s, heal->users home {converged:.1f}s, moves {moves}, "
          f"IMAP login median direct {statistics.median(direct) * 1000:.0f} ms, relayed "
          f"{statistics.median(relayed) * 1000:.0f} ms ({LATENCY_LOGINS} each)")


