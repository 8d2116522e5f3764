"""CPU time and memory of a server's whole process tree, read from /proc.

A server's cost is the cost of its tree: Dovecot forks auth, anvil, stats, log and
login processes, and processes that exit during a run still count through their
parent's cutime/cstime. So CPU is the sum over the live tree of utime+stime+cutime+cstime
(a live child is counted by its own fields; a reaped one through its parent's), and the
difference of two readings is the CPU the tree spent in between.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def process_children() -> dict[int, list[int]]:
    """pid -> its children's pids, from one pass over /proc (pass it to `tree_pids` for many trees)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def tree_pids(root: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """`root` and all its descendants as they are now (or as `children` had them)."""
    children = process_children() if children is None else children
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _stat_fields(pid) is None:
            continue
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_cpu_seconds(root: int) -> float:
    """User+system CPU of the tree so far, including its reaped children."""
    ticks = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # fields[11..14] are utime, stime, cutime, cstime (stat fields 14..17)
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / TICKS_PER_SECOND


def rollup_kib(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class TreeMemory:
    processes: int
    pss_kib: int
    """Proportional set size: shared pages split among their users; the number to compare."""
    rss_kib: int


def tree_memory(root: int) -> TreeMemory:
    pids = tree_pids(root)
    return TreeMemory(len(pids), sum(rollup_kib(p, "Pss") for p in pids),
                      sum(rollup_kib(p, "Rss") for p in pids))


class CpuMeter:
    """CPU seconds spent by named process trees between `start()` and `stop()`."""

    def __init__(self, roots: dict[str, list[int]]) -> None:
        self.roots = roots
        self._before: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        return {name: sum(tree_cpu_seconds(pid) for pid in pids) for name, pids in self.roots.items()}

    def start(self) -> CpuMeter:
        self._before = self._read()
        return self

    def stop(self) -> dict[str, float]:
        after = self._read()
        self.spent = {name: after[name] - self._before[name] for name in self.roots}
        return self.spent
