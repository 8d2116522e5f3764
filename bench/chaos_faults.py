"""Faults on a running LocalCluster, by pid only: SIGKILL or SIGSTOP/SIGCONT of a server's whole
process tree, a held write lock on the SQLite GeoDB, and packet loss and latency (tc netem) on the
hop to one backend. Nothing here restarts anything: the supervisor does that, as it would in
production.

The lossy hop needs a network of the harness's own: `private_network()` (private_network.py) moves the run into a new
network namespace with its own loopback, where the whole cluster lives, so rules on that `lo`
touch no one else's traffic (and no port of the run can collide with another on the machine).
tc netem would be the tool, but kernels without sch_netem exist (this project's machines run one,
CONFIG_NET_SCH_NETEM unset), so the fault is built from what such kernels have: an nftables rule
that drops a share of the hop's packets at random (`numgen random`), and an HTB class with a low
rate that the hop's packets are sorted into (tc u32), which delays them by queueing."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
from collections.abc import Callable

from chaos_rules import Fault
from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.net import wait_until
from palomar.devcluster.procs import is_running, snapshot_tree

KILL_BOUND = 10.0
LOSS_PERCENT = 5
"""Share of the hop's packets dropped, both ways."""
HOP_RATE = "1mbit"
"""The hop's bandwidth, both ways: a 1500-byte packet takes 12 ms, a queue of them more."""


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
    if action == "lossy":
        return _degrade_hop(cluster.backends[fault.target].host, cluster.hop_port)
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


def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True)


def _nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script, check=True, capture_output=True, text=True)


def _degrade_hop(host: str, port: int) -> Callable[[], None]:
    """The hop to `host` (the proxies' packets to its hop port and its packets back) on the private
    loopback: LOSS_PERCENT of its packets dropped, the rest through an HTB class of HOP_RATE."""
    matches = [("dst", "dport"), ("src", "sport")]
    rules = "\n".join(f"    ip {d[0]}addr {host} tcp {p} {port} numgen random mod 100 < {LOSS_PERCENT} drop"
                      for d, p in matches)
    _nft(f"table ip palomar_chaos {{\n  chain out {{\n    type filter hook output priority 0;\n{rules}\n  }}\n}}\n")
    _tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1", "r2q", "1000000")
    _tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", "100gbit")
    _tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:4", "htb", "rate", HOP_RATE)
    for direction, ports in matches:
        _tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
            "match", "ip", direction, f"{host}/32", "match", "ip", ports, str(port), "0xffff", "flowid", "1:4")

    def end() -> None:
        _tc("qdisc", "del", "dev", "lo", "root")
        _nft("delete table ip palomar_chaos\n")

    return end
