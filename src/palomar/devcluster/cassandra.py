"""A local Cassandra for the dev cluster and the demo: `scripts/cassandra` plus keyspace resets.

A LocalCluster owns its keyspace the way it owns its SQLite file in a fresh directory: it
starts from an empty one, so a second demo or test run never sees the first one's sites.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "cassandra"
CQL_PORT = 9042


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
    """Node 1 of `scripts/cassandra` (127.0.0.1, dc1), started only if nothing answers CQL yet.

    Its data and logs go to `directory`, which the caller owns (the demo's `--dir/cassandra`):
    two demos from one install never share a data directory, and none lands in the source tree.
    `stop()` stops it only if `start()` started it: a Cassandra someone else runs stays up.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started = False

    def start(self) -> bool:
        """Fetch the jars if needed and start node 1; True if this call started it."""
        if cql_answers():
            return False
        _script("fetch")
        self.started = True  # from here on stop() is due, even if start is interrupted half-way
        _script("start", "--nodes", "1", "--dir", str(self.directory))
        return True

    def stop(self) -> None:
        if self.started:
            self.started = False
            _script("stop", "--dir", str(self.directory))


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
