"""Two sites of `palomar demo --sites 2` on the two-datacenter Cassandra of this package (conftest.py).

Site DC1 runs in namespace dc1 and uses Cassandra datacenter dc1 (nodes 127.0.0.11-12) as its local
one, site DC2 runs in namespace dc2 on datacenter dc2 (node 127.0.0.13); the keyspace has one
replica per datacenter and the GeoDB's default consistencies are all LOCAL_* (LOCAL_QUORUM writes,
LOCAL_ONE reads, LOCAL_SERIAL conditional writes), so each site only needs its own datacenter. Each site has a real HAProxy, a proxy, two
palomar backends with real Dovecot and a controller:

    namespace dc1                                       namespace dc2
    HAProxy 127.0.0.51, proxy 127.0.0.40,    ==dc link== HAProxy 127.0.0.101, proxy 127.0.0.110,
    backends 127.0.0.32-33, Cassandra dc1                backends 127.0.0.102-103, Cassandra dc2

The dc link carries both Cassandra's inter-datacenter traffic and the site hops (each site's load
balancer and proxy addresses), so cutting it is a WAN cut between the two sites. The reachability
windows are shortened through the settings as in test_site_partition.py; run with -s for the
measured figures (docs/design/multi-site.md, "On a two-datacenter Cassandra").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cassandra_outage.conftest import DC1_NODES, DC2_NODE, Outage
from netns_tools import wait_for
from site_pair import SitePair, run_in

from palomar.cluster.hashing import force_move_bucket
from palomar.cluster.model import ForceMove
from palomar.devcluster.certs import hop_certificates
from palomar.devcluster.cluster import LbPorts, LocalCluster
from palomar.devcluster.sites import home_demo_users, home_site_of, two_sites
from palomar.geodb.repository import GeoDB

pytestmark = pytest.mark.cassandra_outage

DC1_LB, DC1_PROXY, DC1_OFFSET = "127.0.0.51", "127.0.0.40", 30
"""DC1's addresses moved off those of the outage tests' site in the same namespace (127.0.0.1-2)."""
DC2_LB, DC2_PROXY = "127.0.0.101", "127.0.0.110"
KEYSPACE = "two_dc_sites"
USERS = 12
WINDOWS = ("cluster_site_probe_interval = 1 secs", "cluster_site_unreachable_after = 4 secs",
           "cluster_site_reachable_after = 3 secs", "cluster_site_unreachable_quorum = 1")
SETTLE = 60
"""Seconds a routing change may take to show in logins: a GeoDB write in one datacenter, its
replication to the other, and the proxies' cache lifetime (3 s)."""
DC1_USER, DC2_USER = "user1@example.test", "user2@example.test"
CONFLICTED = "user11@example.test"
"""A user no test logs in: both sides write its row during the partition."""

@pytest.fixture(scope="module")
def sites(outage: Outage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SitePair]:
    root: Path = tmp_path_factory.mktemp("two-dc-sites")
    net = outage.net
    dc1, dc2 = two_sites(root, LbPorts(), users=USERS, cassandra_hosts=(" ".join(DC1_NODES), DC2_NODE),
                         geodb="cassandra")
    dc1.lb_host, dc1.lb_ipv6, dc1.host_offset = DC1_LB, "", DC1_OFFSET
    dc1.cassandra_keyspace = dc2.cassandra_keyspace = KEYSPACE
    for cluster in (dc1, dc2):
        cluster.proxy_settings = {"*": WINDOWS}
        cluster.controller_settings = ("controller_site_failover_after = 2 secs",)
    assert dc1.shared_hop_tls is not None
    hop_certificates(dc1.shared_hop_tls, [*dc1._backend_hosts(), DC1_LB, *dc2._backend_hosts(), DC2_LB])
    net.carry([(net.dc1, far, DC1_PROXY) for far in (DC2_LB, DC2_PROXY)]
              + [(net.dc2, far, DC2_PROXY) for far in (DC1_LB, DC1_PROXY)])
    started: list[LocalCluster] = []
    try:
        started.append(dc1)
        run_in(net.dc1, dc1.start)
        started.append(dc2)
        run_in(net.dc2, dc2.start)
        home_demo_users(dc1)
        for cluster in (dc1, dc2):
            cluster.cluster("feature", "set", cluster.site, "site-failover", "dryrun")
        yield SitePair({"DC1": net.dc1, "DC2": net.dc2}, dc1, dc2, domain="two-dc.test")
    finally:
        for cluster in reversed(started):
            cluster.stop()


def both_views(sites: SitePair, read: str, *args: str) -> tuple[object, object]:
    """What `SitePair.<read>(*args)` answers in DC1's datacenter and in DC2's."""
    return tuple(getattr(sites, read)(*args, site=site) for site in ("DC1", "DC2"))  # type: ignore[return-value]


def write_in(sites: SitePair, site: str, user: str, **fields: object) -> None:
    """`user_put` through `site`'s own datacenter (from its namespace)."""
    async def write(db: GeoDB, _: dict[uuid.UUID, str]) -> None:
        await db.user_put(user, **fields)
    sites.on_geodb(write, site)


def failover_group(sites: SitePair, user: str, site: str) -> object:
    async def read(db: GeoDB, _: dict[uuid.UUID, str]) -> object:
        row = await db.user_get(user)
        return row and row.failover_site_group_name
    return sites.on_geodb(read, site)


def site_ids(sites: SitePair) -> dict[str, uuid.UUID]:
    async def read(_: GeoDB, names: dict[uuid.UUID, str]) -> dict[str, uuid.UUID]:
        return {name: site_id for site_id, name in names.items()}
    return sites.on_geodb(read)


def admin(sites: SitePair, change: str, *args: object) -> None:
    """A GeoDB admin change (a `GeoDB` method) made in DC1's datacenter."""
    async def write(db: GeoDB, _: dict[uuid.UUID, str]) -> None:
        await getattr(db, change)(*args)
    sites.on_geodb(write)


def settles(sites: SitePair, observed: object, expected: object, what: str) -> None:
    """Wait (bounded) until `observed()` from real logins equals `expected`."""
    wait_for(lambda: observed() == expected, SETTLE, what)  # type: ignore[operator]


def test_every_user_lands_in_its_site_through_either_load_balancer(sites: SitePair) -> None:
    assert (home_site_of(DC1_USER), home_site_of(DC2_USER)) == ("DC1", "DC2")
    for site in ("DC1", "DC2"):  # each datacenter sees both sites' rows
        wait_for(lambda site=site: sites.reachability(site) == {("DC1", "DC2"): True, ("DC2", "DC1"): True},
                 SETTLE, f"both reachability rows in {site}'s datacenter")
    for user in (u.name for u in sites.dc1.users):
        for entry in ("DC1", "DC2"):
            assert sites.lands(entry, user, home_site_of(user)), (user, entry)
            sites.deliver_acked(entry, user)
    for user in (u.name for u in sites.dc1.users):  # the mail of each user through both sites: in its site's store
        assert len(sites.stored_in(home_site_of(user), user)) == 2, user


def test_site_status_force_move_and_recover_seen_from_real_logins(sites: SitePair) -> None:
    ids = site_ids(sites)
    dc2_users = [u.name for u in sites.dc1.users if home_site_of(u.name) == "DC2"]
    for status in ("standby", "offline", "evacuate"):
        admin(sites, "site_set_status", ids["DC2"], status)
        for entry in ("DC1", "DC2"):
            settles(sites, lambda entry=entry: sites.served_in(entry, DC2_USER), "DC1",
                    f"DC2's user served in DC1 through {entry} with DC2 {status}")
    admin(sites, "site_set_status", ids["DC2"], "online")
    settles(sites, lambda: sites.served_in("DC1", DC2_USER), "DC2", "DC2's user home again")

    move_id = uuid.uuid4()
    for pct in (10, 50, 100):
        admin(sites, "site_force_move_set", ids["DC2"], ForceMove(move_id, pct, (str(ids["DC1"]),)))
        expected = {u: "DC1" if force_move_bucket(move_id, u) < pct else "DC2" for u in dc2_users}
        settles(sites, lambda: {u: sites.served_in("DC2", u) for u in dc2_users}, expected,
                f"force-move {pct}% of DC2's users to DC1")
    # recovery: a status change ends the force-move; the recover ramp brings users home in steps
    recover_id = uuid.uuid4()
    admin(sites, "site_set_status", ids["DC2"], "offline")
    admin(sites, "site_recover_set", ids["DC2"], recover_id, 0)
    admin(sites, "site_set_status", ids["DC2"], "online")
    for pct in (0, 50):
        admin(sites, "site_recover_set", ids["DC2"], recover_id, pct)
        expected = {u: "DC2" if force_move_bucket(recover_id, u) < pct else "DC1" for u in dc2_users}
        settles(sites, lambda: {u: sites.served_in("DC1", u) for u in dc2_users}, expected,
                f"site recover {pct}% of DC2's users")
    admin(sites, "site_recover_clear", ids["DC2"])
    settles(sites, lambda: {u: sites.served_in("DC1", u) for u in dc2_users}, dict.fromkeys(dc2_users, "DC2"),
            "every DC2 user home after the recovery")


def test_a_cut_between_the_datacenters_keeps_both_sites_serving_and_converges(sites: SitePair,
                                                                               outage: Outage) -> None:
    net = outage.net
    moves_before = sites.moves()

    cut = time.monotonic()
    net.link_down(net.dc_link)
    # each side keeps serving its own users at once, logins and mail
    assert sites.lands("DC1", DC1_USER, "DC1")
    assert sites.lands("DC2", DC2_USER, "DC2")
    sites.deliver_acked("DC1", DC1_USER)
    sites.deliver_acked("DC2", DC2_USER)
    # each datacenter's row (written by its own site's proxy) flips after the window
    wait_for(lambda: sites.reachability("DC1")[("DC1", "DC2")] is False, 30, "DC1 to call DC2 unreachable")
    wait_for(lambda: sites.reachability("DC2")[("DC2", "DC1")] is False, 30, "DC2 to call DC1 unreachable")
    wait_for(lambda: sites.lands("DC1", DC2_USER, "DC1"), 30, "DC1 to serve DC2's user")
    failover = time.monotonic() - cut
    wait_for(lambda: sites.lands("DC2", DC1_USER, "DC2"), 30, "DC2 to serve DC1's user")
    sites.deliver_acked("DC1", DC2_USER)
    sites.deliver_acked("DC2", DC1_USER)
    sites.deliver_acked("DC2", DC2_USER)  # split brain: its home site serves it too
    # the same row written on both sides: the later write must win everywhere once healed
    write_in(sites, "DC1", CONFLICTED, failover_site_group_name="written-in-dc1")
    write_in(sites, "DC2", CONFLICTED, failover_site_group_name="written-in-dc2")
    assert (failover_group(sites, CONFLICTED, "DC1"), failover_group(sites, CONFLICTED, "DC2")) == (
        "written-in-dc1", "written-in-dc2")  # the datacenters disagree while cut apart

    healed = time.monotonic()
    net.link_up(net.dc_link)
    wait_for(lambda: sites.lands("DC1", DC2_USER, "DC2"), 60, "DC2's user served at home through DC1")
    wait_for(lambda: sites.lands("DC2", DC1_USER, "DC1"), 60, "DC1's user served at home through DC2")
    home = time.monotonic() - healed
    sites.deliver_acked("DC1", DC2_USER)
    sites.deliver_acked("DC2", DC1_USER)

    # the GeoDB converges: both datacenters answer the same rows, the later conflicting write won
    def converged() -> bool:
        views = [both_views(sites, "reachability"), both_views(sites, "user_sites", DC1_USER),
                 both_views(sites, "user_sites", DC2_USER)]
        return (all(a == b for a, b in views)
                and [failover_group(sites, CONFLICTED, s) for s in ("DC1", "DC2")] == ["written-in-dc2"] * 2)
    wait_for(converged, 120, "both datacenters to answer the same rows")
    geodb = time.monotonic() - healed
    assert both_views(sites, "reachability")[0] == {("DC1", "DC2"): True, ("DC2", "DC1"): True}
    user_sites = both_views(sites, "user_sites", DC2_USER)[0]
    assert user_sites.keys() == {"DC1", "DC2"}, user_sites  # type: ignore[union-attr]

    # one backend per user within each site over the whole module; no move; every acked message stored once
    sites.check_consistent(moves_before)
    print(f"\nmeasured on Cassandra: cut->failover service {failover:.1f}s, heal->users home {home:.1f}s, "
          f"heal->GeoDB converged {geodb:.1f}s, moves {sites.moves() - moves_before}, "
          f"acknowledged messages {len(sites.acked)}")

