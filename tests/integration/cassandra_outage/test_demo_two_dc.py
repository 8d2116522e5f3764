"""`palomar demo --sites 2 --geodb cassandra` as a person runs it, inside a network namespace of its own.

The demo binds fixed ports (its load balancers, Cassandra's 9042/7000/7199 on 127.0.0.201-202); in
a private namespace they never meet another run's. It must start two Cassandra nodes, one per
datacenter, serve a login on every protocol through both sites' HAProxy (relayed between the
sites) before it says it runs, give each site its own datacenter, and stop Cassandra on SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_tools import add_namespace, wait_for
from site_pair import run_in
from test_demo import Demo

from palomar.devcluster.cluster import shared_dir_for

pytestmark = pytest.mark.cassandra_outage


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"pal-demo2dc-{os.getpid() % 100000}"
    add_namespace(name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_the_two_site_demo_runs_on_a_cassandra_datacenter_per_site(namespace: str) -> None:
    parent = Path(tempfile.mkdtemp(prefix="palomar-demo-2dc-"))
    directory = parent / "demo-run"
    pids: list[int] = []
    demo: Demo = run_in(namespace, lambda: Demo(directory, {}, ("--sites", "2", "--geodb", "cassandra")))
    try:
        demo.wait_for(r"palomar demo: Cassandra started")
        demo.wait_for(r"palomar demo is running .*GeoDB Cassandra 127\.0\.0\.201 and 127\.0\.0\.202")
        demo.wait_for(r"127\.0\.0\.201, DC2: dc2 on 127\.0\.0\.202")
        for config, dc, host in ((directory / "proxy1", "dc1", "127.0.0.201"),
                                 (directory / "dc2" / "proxy1", "dc2", "127.0.0.202")):
            text = (config / "palomar.conf").read_text()
            assert f"cassandra_local_dc = {dc}\n" in text and f"cassandra_hosts = {host}\n" in text, config

        def reachability() -> str:
            return subprocess.run([sys.executable, "-m", "palomar", "cluster", "-c",
                                   str(directory / "dc2" / "proxy1" / "palomar.conf"), "site", "reachability", "list"],
                                  capture_output=True, text=True, timeout=60).stdout
        wait_for(lambda: run_in(namespace, reachability).count(" yes") == 2, 90,
                 "both sites to call each other reachable (rows written in both datacenters)")
        pids += [int(p.read_text()) for p in (directory / "cassandra").glob("node*/cassandra.pid")]
        assert len(pids) == 2
    finally:
        code = demo.stop()
        shutil.rmtree(shared_dir_for(directory), ignore_errors=True)
        shutil.rmtree(parent, ignore_errors=True)
    assert code == 0, "\n".join(demo.lines)
    demo.wait_for(r"palomar demo: stopping Cassandra", timeout=5)  # the output is all read by now
    assert not any(running(pid) for pid in pids)


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for init to reap it has stopped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
