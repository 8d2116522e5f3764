"""CPU and memory of process trees, read from /proc, against processes started here."""

from __future__ import annotations

import subprocess
import sys

from proctree import CpuMeter, tree_cpu_seconds, tree_memory, tree_pids

BURN = "n = 0\nfor i in range(6_000_000):\n    n += i\n"

# The parent runs one child that burns CPU and exits (reaped), then starts a second child
# that waits on stdin, and says "ready": the tree is then parent + live child.
PARENT = f"""
import subprocess, sys
subprocess.run([sys.executable, "-c", {BURN!r}], check=True)
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
print("ready", child.pid, flush=True)
sys.stdin.read()
child.stdin.close()
child.wait()
"""


def test_tree_counts_live_descendants_and_reaped_children() -> None:
    before = CpuMeter({"self": []}).start()
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        word, child_pid = parent.stdout.readline().split()
        assert word == "ready"
        assert set(tree_pids(parent.pid)) == {parent.pid, int(child_pid)}
        # the burning child is gone; its CPU shows up through the parent's cutime
        assert tree_cpu_seconds(parent.pid) >= 0.1
        memory = tree_memory(parent.pid)
        assert memory.processes == 2
        assert 1000 < memory.pss_kib <= memory.rss_kib
    finally:
        parent.stdin.close()
        parent.wait(timeout=30)
    assert before.stop() == {"self": 0.0}


def test_gone_process_reads_as_empty() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert tree_pids(proc.pid) == []
    assert tree_cpu_seconds(proc.pid) == 0.0
    assert tree_memory(proc.pid).processes == 0
