"""Two sites on one machine for `palomar demo --sites 2`: DC1 as the single-site demo (HAProxy on
127.0.0.1), DC2 with its own HAProxy on 127.0.0.101 (the same ports), backends on 127.0.0.102..
and proxies on 127.0.0.110.., one hop CA and secret, and one GeoDB: a SQLite file, or a Cassandra
keyspace with one replica in each of two datacenters, site DCi's servers using datacenter dci as
their local one. Odd-numbered demo users prefer DC1, even-numbered DC2."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path

from palomar.devcluster.certs import hop_certificates
from palomar.devcluster.cluster import LbPorts, LocalCluster, shared_dir_for
from palomar.geodb.repository import GeoDB

DC2_LB_HOST = "127.0.0.101"
DC2_OFFSET = 100
SITE_PORT = 7426
"""The load balancers' site-hop port (other sites' proxies relay logins there)."""
CASSANDRA_BASE = "127.0.0.200"
"""`scripts/cassandra --base-address` for the demo's two nodes: node N (datacenter dcN) on
127.0.0.20N, away from the backends, the proxies and a single-site demo's node on 127.0.0.1."""
CASSANDRA_REPLICATION = "dc1:1 dc2:1"
"""One replica per datacenter: each site's LOCAL_QUORUM writes and LOCAL_ONE reads need only its own node."""


def datacenter_of(site_index: int) -> str:
    """Site DCi uses Cassandra datacenter dci as its local datacenter."""
    return f"dc{site_index}"


def two_sites(path: Path, lb_ports: LbPorts, users: int, site_port: int = SITE_PORT,
              ui_port: int | None = None, geodb: str = "sqlite",
              cassandra_hosts: tuple[str, str] = ("127.0.0.201", "127.0.0.202")) -> list[LocalCluster]:
    """DC1 in `path` and DC2 in `path/dc2`, configured to find each other (not started).

    With `geodb = "cassandra"`, site DCi reaches Cassandra at `cassandra_hosts[i-1]` (nodes of
    datacenter dci, space-separated) with dci as its local datacenter; DC1 empties the shared
    keyspace when it starts fresh, DC2 only joins it."""
    dc1 = LocalCluster(path, users_count=users, lb_ports=lb_ports, controller=True, allow_cleartext=True,
                       shared_dir=shared_dir_for(path), proxies_count=1, site="DC1", site_port=site_port,
                       shared_hop_tls=path / "tls" / "hop-sites", controller_http_port=ui_port, geodb=geodb,
                       cassandra_hosts=cassandra_hosts[0], cassandra_local_dc=datacenter_of(1),
                       cassandra_replication=CASSANDRA_REPLICATION)
    dc2_root = path / "dc2"
    dc2 = LocalCluster(dc2_root, users_count=users, lb_ports=replace(lb_ports), controller=True,
                       allow_cleartext=True, shared_dir=shared_dir_for(dc2_root), proxies_count=1, site="DC2",
                       site_port=site_port, shared_hop_tls=dc1.shared_hop_tls, lb_host=DC2_LB_HOST, lb_ipv6="",
                       host_offset=DC2_OFFSET, geodb_file=dc1.geodb_path, hop_secret=dc1.hop_secret,
                       controller_http_port=ui_port, geodb=geodb, cassandra_hosts=cassandra_hosts[1],
                       cassandra_keyspace=dc1.keyspace, cassandra_local_dc=datacenter_of(2),
                       cassandra_replication=CASSANDRA_REPLICATION, owns_geodb=False)
    return [dc1, dc2]


def start_sites(clusters: list[LocalCluster]) -> None:
    """One hop CA for every site's backends and load balancers, then each site in turn."""
    assert all(c.shared_hop_tls == clusters[0].shared_hop_tls for c in clusters)
    hosts = [h for c in clusters for h in (*c._backend_hosts(), c.lb_host)]
    assert clusters[0].shared_hop_tls is not None
    hop_certificates(clusters[0].shared_hop_tls, hosts)
    for cluster in clusters:
        cluster.root.mkdir(parents=True, exist_ok=True)
        cluster.start()


def home_site_of(username: str) -> str:
    """Odd-numbered demo users prefer DC1, even-numbered DC2."""
    number = int(re.sub(r"\D", "", username.partition("@")[0]) or 0)
    return "DC1" if number % 2 else "DC2"


async def _home_users(cluster: LocalCluster) -> None:
    engine = cluster.geodb_engine()
    await engine.open()
    geodb = GeoDB(engine)
    try:
        ids = {s.name: s.id for s in await geodb.site_list()}
        for user in cluster.users:
            await geodb.user_put(user.name, preferred_site_id=ids[home_site_of(user.name)])
    finally:
        await geodb.close()


def home_demo_users(cluster: LocalCluster) -> None:
    asyncio.run(_home_users(cluster))
