"""The two-site cluster of `palomar demo --sites 2` as real processes: DC1 (HAProxy on 127.0.0.1)
and DC2 (HAProxy on 127.0.0.101), two Dovecot backends and one proxy each, hop TLS with one CA,
one SQLite GeoDB. Ports are picked at start-up (the demo's fixed ports are not used here).

Every user logs in on every protocol, and gets mail over LMTP, through both sites' HAProxy; the
session must end on a backend of the user's site (odd users DC1, even DC2)."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from palomar.devcluster.cluster import LbPorts, LocalCluster
from palomar.devcluster.login_check import check_logins
from palomar.devcluster.net import free_port
from palomar.devcluster.sites import DC2_LB_HOST, home_demo_users, home_site_of, start_sites, two_sites


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalCluster]]:
    root: Path = tmp_path_factory.mktemp("demo-sites")
    port = free_port(DC2_LB_HOST)
    clusters = two_sites(root, LbPorts(), users=4, site_port=port, ui_port=0)  # 0: a free port per site
    try:
        start_sites(clusters)
        home_demo_users(clusters[0])
        yield clusters
    finally:
        for cluster in reversed(clusters):
            cluster.stop()


def wait_for_line(path: Path, needle: str, timeout: float = 15.0) -> bool:
    """Whether `needle` appears in the log at `path` within `timeout` (the proxy logs asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return True
        time.sleep(0.2)  # polling a log file for a line, bounded by the deadline
    return False


def test_every_user_through_both_sites_ends_in_its_site(sites: list[LocalCluster]) -> None:
    dc1, dc2 = sites
    by_site = {"DC1": dc1, "DC2": dc2}
    for user in dc1.users:
        for entry in sites:
            assert check_logins(entry, [entry.lb_host], user.name, user.password) == [], (user.name, entry.site)
        home = by_site[home_site_of(user.name)]
        other = dc2 if home is dc1 else dc1
        # the other site's proxy relayed it; the home site's proxy logged the relay to its own backend
        assert wait_for_line(home.proxies[0].log_path, f"user={user.name} proto=imap relayed from another site")
        assert wait_for_line(home.proxies[0].log_path, f"user={user.name} proto=lmtp relayed from another site")
        assert f"user={user.name} proto=imap relayed from another site" not in other.proxies[0].log_path.read_text()
    records = {r["user"]: r for r in json.loads(dc1.cluster("--json", "user", "access", "-A").stdout)}
    for user in dc1.users:
        site = home_site_of(user.name)
        assert records[user.name]["site"] == site
        assert records[user.name]["backend"] in {b.host for b in by_site[site].backends}


def test_each_site_has_its_controller_ui_and_api_on_its_load_balancer_address(sites: list[LocalCluster]) -> None:
    """As the demo prints: DC1's controller on 127.0.0.1, DC2's on 127.0.0.101; `GET /api/v1/backends` is
    `backend list --json`, every site's backends, each with its site."""
    expected = sorted((c.site, b.host) for c in sites for b in c.backends)
    for cluster in sites:
        auth = base64.b64encode(f"admin:{cluster.controller_admin_password}".encode()).decode()
        request = urllib.request.Request(f"http://{cluster.lb_host}:{cluster.controller_http_port}/api/v1/backends",
                                         headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            backends = json.loads(response.read())
        assert sorted((b["site"], b["host"]) for b in backends) == expected, cluster.site
