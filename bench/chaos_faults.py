"""Faults on a running LocalCluster, by pid only: SIGKILL or SIGSTOP/SIGCONT of a server's whole
process tree, and a held write lock on the SQLite GeoDB. Nothing here restarts anything: the
supervisor does that, as it would in production."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from collections.abc import Callable

from chaos_rules import Fault
from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.net import wait_until
from palomar.devcluster.procs import is_running, snapshot_tree

KILL_BOUND = 10.0


def _root_pid(cluster: LocalCluster, process: str, target: int) -> int | None:
    if process == "dovecot":
        return cluster.backends[target].dovecot.pid
    if process == "backend":
        proc = cluster.backends[target].proc
    elif process == "proxy":
        proc = cluster.proxies[target].proc
    else:
        proc = cluster.controller_proc
    return None if proc is None or proc.poll() is not None else proc.pid


def _signal_tree(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def inject(cluster: LocalCluster, fault: Fault) -> Callable[[], None]:
    """Start `fault`; return what ends it (SIGCONT, lock release; nothing for a kill)."""
    action, process = fault.kind.split("-", 1)
    if action == "geodb":
        return _lock_geodb_writes(cluster)
    pid = _root_pid(cluster, process, fault.target)
    if pid is None:
        return lambda: None
    if action == "kill":
        tree = snapshot_tree(pid)
        _signal_tree([p.pid for p in tree], signal.SIGKILL)
        # Signals land asynchronously: recovery is timed from a dead process, not a dying one.
        wait_until(lambda: not any(is_running(p) for p in tree), KILL_BOUND, f"the {process} tree to die")
        return lambda: None
    # SIGSTOP the root first (it forks no more), then everything below it; resume in reverse.
    os.kill(pid, signal.SIGSTOP)
    tree = [p.pid for p in snapshot_tree(pid)]
    _signal_tree(tree, signal.SIGSTOP)
    return lambda: _signal_tree(list(reversed(tree)), signal.SIGCONT)


def _lock_geodb_writes(cluster: LocalCluster) -> Callable[[], None]:
    """Hold the GeoDB's write lock: reads go on (WAL), every write waits and then fails, as on a
    read-only or locked database. (Everything here runs as root, so file modes cannot do this.)"""
    con = sqlite3.connect(cluster.geodb_path, timeout=30, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")

    def release() -> None:
        con.execute("ROLLBACK")
        con.close()

    return release
