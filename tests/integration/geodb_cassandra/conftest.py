"""A real Cassandra for these tests: `scripts/cassandra start` once, `stop` when they are done.

Node 1 (127.0.0.1, dc1) serves the contract suite; the two-DC tests add node 2 (127.0.0.2,
dc2) to the same cluster and stop/restart it; the cluster tests then run a whole LocalCluster
(proxies, backends, Dovecot) on node 1 while node 2 is down. The node folders live in a
temporary directory so every run starts from an empty cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "cassandra"


class CassandraCluster:
    """Drives `scripts/cassandra` for one node folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _script(self, *args: str, timeout: float = 600) -> str:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise AssertionError(f"scripts/cassandra {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def start(self, nodes: int = 1) -> str:
        return self._script("start", "--nodes", str(nodes), "--dir", str(self.directory))

    def stop(self, node: int | None = None) -> str:
        extra = ["--node", str(node)] if node else []
        return self._script("stop", "--dir", str(self.directory), *extra)

    def status(self) -> str:
        return self._script("status", "--dir", str(self.directory))

    def nodetool(self, node: int, *args: str) -> str:
        return self._script("nodetool", "--dir", str(self.directory), "--node", str(node), *args)


@pytest.fixture(scope="package")
def cassandra() -> Iterator[CassandraCluster]:
    """One cluster for this directory's tests, stopped as soon as they are done (it costs ~1 GB)."""
    directory = Path(tempfile.mkdtemp(prefix="palomar-cassandra-"))
    cluster = CassandraCluster(directory)
    try:
        cluster.start(nodes=1)
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
