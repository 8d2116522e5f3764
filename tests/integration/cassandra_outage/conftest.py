"""A three-node, two-datacenter Cassandra and two sites, all inside network namespaces of their own.

dc1: nodes 1 and 2 (127.0.0.11-12), site dc1; dc2: node 3 (127.0.0.13), site dc2 (see netns.py).
The keyspace has 2 replicas in dc1 and 1 in dc2. Each site is a process (site_process.py) with a
real Dovecot and the proxy and backend on the guarded Cassandra GeoDB. Started once for the
directory (about a minute); the tests run in file order and each leaves every node running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cassandra_outage.netns import CASSANDRA_BASE, DC1_NODES, DC2_NODE, DC2_SITE, TwoSites
from netns_tools import wait_for

from palomar.devcluster.cassandra import datacenters_settled

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "cassandra"
SITE_PROCESS = Path(__file__).with_name("site_process.py")
KEYSPACE = "outage"
REPLICATION = "dc1:2 dc2:1"
USERS_PER_SITE = 40


class Nodes:
    """`scripts/cassandra` for the three nodes, and signals to single nodes."""

    def __init__(self, directory: Path, dc2_netns: str) -> None:
        self.directory = directory
        self.placement = ["--nodes", "3", "--base-address", CASSANDRA_BASE, "--dcs", "dc1,dc1,dc2",
                          "--netns", f"3={dc2_netns}", "--heap", "512M"]

    def script(self, *args: str) -> str:
        result = subprocess.run([sys.executable, str(SCRIPT), *args, "--dir", str(self.directory)],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise AssertionError(f"scripts/cassandra {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def start(self) -> str:
        """Start every node that is not running (and wait until the others see it UP)."""
        return self.script("start", *self.placement)

    def pid(self, n: int) -> int:
        return int((self.directory / f"node{n}" / "cassandra.pid").read_text())

    def signal(self, n: int, sig: signal.Signals) -> None:
        os.kill(self.pid(n), sig)

    def kill(self, n: int) -> None:
        """SIGKILL: the node is gone at once, its peers and clients see the connections reset."""
        pid = self.pid(n)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes()[:64],
                 10, f"node{n} (pid {pid}) to die")

    def stop_all(self) -> None:
        for n in (1, 2, 3):
            with contextlib.suppress(OSError, ValueError):
                os.kill(self.pid(n), signal.SIGCONT)
        self.script("stop", "--timeout", "20")


@dataclass
class Site:
    name: str
    proc: subprocess.Popen[str]
    listeners: dict[str, tuple[str, int]]
    log: Path
    users: list[str]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_site(name: str, netns: str, root: Path, mail_root: Path, *, hosts: str, listen: str,
               dovecot: str) -> Site:
    root.mkdir(parents=True)
    root.chmod(0o755)
    users = [f"{name}-user{i}@example.test" for i in range(1, USERS_PER_SITE + 1)]
    cfg = {"site": name, "root": str(root), "mail_root": str(mail_root), "hosts": hosts, "keyspace": KEYSPACE,
           "local_dc": name, "replication": REPLICATION, "listen": listen, "dovecot": dovecot, "users": users}
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, str(SITE_PROCESS), json.dumps(cfg)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the site's first line, once it serves (or EOF if it died)
    if not line:
        proc.wait()
        log = root / "site.log"
        raise AssertionError(f"site {name} exited ({proc.returncode}):\n"
                             + (log.read_text()[-3000:] if log.exists() else ""))
    listeners = {k: tuple(v) for k, v in json.loads(line)["listeners"].items()}
    return Site(name, proc, listeners, root / "site.log", users)  # type: ignore[arg-type]


def topology_settled(nodes: Nodes) -> bool:
    """Nodes 1 and 2 (DC1, where the first site creates the keyspace) each list three nodes Up/Normal
    and know datacenter dc2."""
    return all(datacenters_settled(nodes.directory, n, 3, ["dc2"]) for n in (1, 2))


@dataclass
class Outage:
    net: TwoSites
    nodes: Nodes
    dc1: Site
    dc2: Site


@pytest.fixture(scope="package")
def outage(harness_root: Path, mail_root: Path) -> Iterator[Outage]:
    net = TwoSites.create(str(os.getpid() % 100000))
    directory = Path(tempfile.mkdtemp(prefix="palomar-cassandra-outage-"))
    nodes = Nodes(directory, net.dc2)
    sites: list[Site] = []
    try:
        nodes.start()
        # A keyspace naming dc2 is refused until the coordinator's topology has dc2's node: gossip
        # marking a node UP can come before its datacenter reaches every peer's token metadata.
        wait_for(lambda: topology_settled(nodes), 180, "both DC1 nodes to list all three nodes up, dc2 included",
                 interval=1.0)
        sites.append(start_site("dc1", net.dc1, harness_root / "site-dc1", mail_root,
                                hosts=" ".join(DC1_NODES), listen="127.0.0.1", dovecot="127.0.0.2"))
        sites.append(start_site("dc2", net.dc2, harness_root / "site-dc2", mail_root,
                                hosts=DC2_NODE, listen=DC2_SITE, dovecot="127.0.0.22"))
        yield Outage(net, nodes, *sites)
    finally:
        for site in sites:
            site.stop()
        try:
            nodes.stop_all()
        finally:
            net.remove()
            shutil.rmtree(directory, ignore_errors=True)
