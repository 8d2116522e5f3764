"""Two sites on a two-datacenter Cassandra: each site its own datacenter, one keyspace that only DC1 empties."""

from __future__ import annotations

from pathlib import Path

from palomar.devcluster.cassandra import LocalCassandra
from palomar.devcluster.cluster import LbPorts
from palomar.devcluster.sites import CASSANDRA_BASE, two_sites


def test_each_site_uses_its_own_datacenter_and_one_shared_keyspace(tmp_path: Path) -> None:
    dc1, dc2 = two_sites(tmp_path / "run", LbPorts(), users=2, geodb="cassandra",
                         cassandra_hosts=("127.0.0.11 127.0.0.12", "127.0.0.13"))
    settings = [dict(line.split(" = ", 1) for line in c.geodb_settings()) for c in (dc1, dc2)]
    assert [(s["cassandra_hosts"], s["cassandra_local_dc"]) for s in settings] == [
        ("127.0.0.11 127.0.0.12", "dc1"), ("127.0.0.13", "dc2")]
    assert settings[0]["cassandra_keyspace"] == settings[1]["cassandra_keyspace"] == dc1.keyspace
    assert settings[0]["cassandra_replication"] == settings[1]["cassandra_replication"] == "dc1:1 dc2:1"
    assert (dc1.owns_geodb, dc2.owns_geodb) == (True, False)  # DC2 joins the keyspace DC1 made


def test_sqlite_sites_still_share_one_file(tmp_path: Path) -> None:
    dc1, dc2 = two_sites(tmp_path / "run", LbPorts(), users=2)
    assert dc1.geodb_settings() == dc2.geodb_settings() == [f"cluster_geodb_path = {dc1.geodb_path}"]


def test_the_demo_nodes_sit_away_from_the_sites_addresses(tmp_path: Path) -> None:
    nodes = LocalCassandra(tmp_path, nodes=2, base_address=CASSANDRA_BASE)
    assert nodes.hosts == ["127.0.0.201", "127.0.0.202"]
    dc1, dc2 = two_sites(tmp_path / "run", LbPorts(), users=2)
    taken = {*dc1._backend_hosts(), *dc1._proxy_hosts(), dc1.lb_host, *dc2._backend_hosts(), *dc2._proxy_hosts(),
             dc2.lb_host}
    assert not taken & set(nodes.hosts)
    assert LocalCassandra(tmp_path).hosts == ["127.0.0.1"]  # the single-site demo's node
