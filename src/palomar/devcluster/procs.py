"""Stopping a server and every process it forked, by pid, without touching anything else.

A Dovecot master's children can outlive it (a hung doveadm-server keeps log, config and
stats alive), so the tree is snapshotted first (pid and start time, which guards against
pid reuse), the root gets SIGTERM, and whatever of the snapshot is left gets SIGTERM, then
SIGKILL. A root that died on its own leaves no tree to snapshot, but every devcluster process
starts its own session, so its process group still names the children it left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from palomar.devcluster.net import POLL_INTERVAL


@dataclass(frozen=True)
class Proc:
    pid: int
    start_time: int


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, or None when it is gone."""
    fields = _fields(pid)
    return None if fields is None else (fields[0], int(fields[1]), int(fields[19]))


def _fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (state, ppid, pgrp, ...), or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def group_members(pgid: int) -> list[Proc]:
    """Live (not zombie) processes of process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _fields(int(entry))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(Proc(int(entry), int(fields[19])))
    return members


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(stat[1], []).append(int(entry))
    return children


def snapshot_tree(root: int) -> list[Proc]:
    """`root` and all its descendants, as they are now."""
    children = _children_map()
    found: list[Proc] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        stat = _stat(pid)
        if stat is None:
            continue
        found.append(Proc(pid, stat[2]))
        todo.extend(children.get(pid, []))
    return found


def is_running(proc: Proc) -> bool:
    """True while the same process (not a reused pid) is alive; zombies count as gone."""
    stat = _stat(proc.pid)
    return stat is not None and stat[2] == proc.start_time and stat[0] != "Z"


def _signal(procs: list[Proc], sig: signal.Signals) -> None:
    for proc in procs:
        if is_running(proc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)


def _wait_gone(procs: list[Proc], timeout: float) -> list[Proc]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if is_running(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(POLL_INTERVAL)


def end_leftovers(popen: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGKILL what a dead session leader `popen` left in its process group (e.g. Dovecot's login
    processes, which hold the listening sockets a restart needs) and wait until it is gone."""
    if popen.poll() is None:
        raise RuntimeError(f"pid {popen.pid} is still running")
    left = [p for p in group_members(popen.pid) if p.pid != popen.pid]
    _signal(left, signal.SIGKILL)
    _wait_gone(left, timeout)


def stop_tree(popen: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM `popen` and its descendants (SIGKILL after `timeout`); reap `popen`."""
    if popen.poll() is not None:
        end_leftovers(popen, timeout)
        return
    tree = snapshot_tree(popen.pid)
    root = [p for p in tree if p.pid == popen.pid]
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout)
    rest = [p for p in tree if p not in root]
    _signal(rest, signal.SIGTERM)
    left = _wait_gone(rest, timeout)
    if left:
        _signal(left, signal.SIGKILL)
        _wait_gone(left, timeout)
