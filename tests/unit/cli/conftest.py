"""Fixtures for the `palomar cluster` tests: a temp config naming a fresh SQLite GeoDB, and a runner.

Backend names must resolve. Only `localhost` is guaranteed by this machine's hosts file, so the
tests that need several backends add names through `hosts`, a hosts file of their own consulted
before the system resolver (which still decides for every other name).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster_harness import Cluster, write_config
from palomar.cli import cluster_context


@pytest.fixture
def hosts(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Extra host names for this test (name -> loopback address), resolved before the system's."""
    table: dict[str, str] = {}
    system = cluster_context.resolve_host

    def resolve(host: str) -> object:
        if host in table:
            return [(None, None, None, "", (table[host], 0))]
        return system(host)

    monkeypatch.setattr(cluster_context, "resolve_host", resolve)
    return table


@pytest.fixture
def cluster(tmp_path: Path, hosts: dict[str, str]) -> Cluster:
    config = tmp_path / "palomar.conf"
    geodb, localdb = tmp_path / "geodb.sqlite", tmp_path / "localdb.sqlite"
    write_config(config, geodb, localdb)
    hosts.update({"b1.test": "127.0.0.11", "b2.test": "127.0.0.12", "b3.test": "127.0.0.13"})
    return Cluster(config, geodb, localdb)


@pytest.fixture
def two_sites(cluster: Cluster) -> Cluster:
    """Sites east (the local site) and west, backends b1/b2 in east and b3 in west."""
    cluster.ok("site", "add", "east")
    cluster.ok("site", "add", "--load-balancer", "lb.west.test:143", "west")
    cluster.ok("backend", "add", "b1.test")
    cluster.ok("backend", "add", "--site", "east", "b2.test")
    cluster.ok("backend", "add", "--site", "west", "b3.test")
    return cluster
