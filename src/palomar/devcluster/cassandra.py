"""A local Cassandra for the dev cluster and the demo: `scripts/cassandra` plus keyspace resets.

A LocalCluster owns its keyspace the way it owns its SQLite file in a fresh directory: it
starts from an empty one, so a second demo or test run never sees the first one's sites.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "cassandra"
CQL_PORT = 9042
SETTLE_TIMEOUT = 180
"""Seconds for a new multi-datacenter cluster's nodes to learn every datacenter."""


class CassandraError(RuntimeError):
    """A local Cassandra could not be started, stopped or reset (one line for the user)."""


def cql_answers(host: str = "127.0.0.1", port: int = CQL_PORT, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _script(*args: str, timeout: float = 600) -> str:
    if not SCRIPT.is_file():
        raise CassandraError(f"{SCRIPT} is missing (the demo runs Cassandra from a source checkout)")
    try:
        result = subprocess.run([sys.executable, str(SCRIPT), *args], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CassandraError(f"scripts/cassandra {args[0]} took longer than {timeout:.0f}s") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise CassandraError(f"scripts/cassandra {args[0]} failed: {tail[0]}")
    return result.stdout


def cassandra_dir(demo_root: Path) -> Path:
    """Where a demo rooted at `demo_root` keeps its Cassandra node: inside it, so that it goes (and
    restarts) with the demo and never lands in the source tree or in another demo's directory."""
    return demo_root / "cassandra"


class LocalCassandra:
    """`scripts/cassandra` nodes 1..`nodes` (node N in datacenter dcN, on 127.0.0.N or, with
    `base_address`, on base + N), started only if not every one of them answers CQL yet.

    Its data and logs go to `directory`, which the caller owns (the demo's `--dir/cassandra`):
    two demos from one install never share a data directory, and none lands in the source tree.
    `stop()` stops the nodes only if `start()` started them: a Cassandra someone else runs stays up.
    """

    def __init__(self, directory: Path, nodes: int = 1, base_address: str = "", heap: str = "") -> None:
        self.directory = directory
        self.nodes = nodes
        self.base_address = base_address
        self.heap = heap
        self.started = False

    @property
    def hosts(self) -> list[str]:
        """Node N's address, N = 1..nodes (what `scripts/cassandra` gives it)."""
        base = ipaddress.IPv4Address(self.base_address or "127.0.0.0")
        return [str(base + n) for n in range(1, self.nodes + 1)]

    def start(self) -> bool:
        """Fetch the jars if needed and start the nodes; True if this call started them. With several
        datacenters, returns once node 1 lists every node up and every datacenter (a keyspace that
        names a datacenter node 1 has not learnt yet is refused)."""
        if all(cql_answers(host) for host in self.hosts):
            return False
        _script("fetch")
        self.started = True  # from here on stop() is due, even if start is interrupted half-way
        placement = [*(["--base-address", self.base_address] if self.base_address else []),
                     *(["--heap", self.heap] if self.heap else [])]
        _script("start", "--nodes", str(self.nodes), *placement, "--dir", str(self.directory))
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while self.nodes > 1 and not datacenters_settled(self.directory, 1, self.nodes,
                                                         [f"dc{n}" for n in range(1, self.nodes + 1)]):
            if time.monotonic() > deadline:
                raise CassandraError(f"node 1 did not list all {self.nodes} nodes up within {SETTLE_TIMEOUT}s")
            time.sleep(1.0)  # polling interval of the bounded wait above
        return True

    def stop(self) -> None:
        if self.started:
            self.started = False
            _script("stop", "--dir", str(self.directory))


def datacenters_settled(directory: Path, node: int, up: int, datacenters: list[str]) -> bool:
    """Whether `nodetool status` on `node` lists `up` nodes Up/Normal and every datacenter named.

    Gossip can mark a node UP before its datacenter reaches every peer's token metadata, and a
    keyspace naming that datacenter is refused until then."""
    result = subprocess.run([sys.executable, str(SCRIPT), "nodetool", "--dir", str(directory), "--node", str(node),
                             "status"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    status = result.stdout if result.returncode == 0 else ""  # not reachable over JMX yet: not settled
    return (all(f"Datacenter: {dc}" in status for dc in datacenters)
            and sum(line.startswith("UN ") for line in status.splitlines()) >= up)


def reset_keyspace(hosts: str, keyspace: str, *, port: int = CQL_PORT, local_dc: str | None = None) -> None:
    """Drop `keyspace` if it exists (blocking; before any palomar process of the cluster runs)."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy

    from palomar.geodb.cassandra_engine import PROTOCOL_VERSION, _describe, parse_hosts

    points = parse_hosts(hosts, port)
    profile = ExecutionProfile(load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=local_dc or ""))
    # No schema-agreement wait: a dev cluster's Cassandra is one local node, and a stopped node of
    # another DC (the two-DC tests) would only make the driver wait 10 s for nothing.
    cluster = Cluster(contact_points=points, port=port, protocol_version=PROTOCOL_VERSION, connect_timeout=10,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile}, max_schema_agreement_wait=0)
    try:
        session = cluster.connect()
        session.execute(f'DROP KEYSPACE IF EXISTS "{keyspace}"', timeout=60)
    except Exception as exc:
        raise CassandraError(f"cannot reset keyspace {keyspace} on {hosts}: {_describe(exc)}") from None
    finally:
        cluster.shutdown()
