"""A network namespace of the run's own, entered by the calling thread: its own loopback, so the
run's fixed ports (Cassandra's 9042/7000/7199) and network rules touch nothing else on the machine."""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def private_network() -> Iterator[None]:
    """Run the calling thread, and every thread and process it starts, in a new network namespace
    whose loopback is up; the thread returns to its namespace afterwards. Needs root."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _LIBC.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed (a private network needs root)")
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        yield
    finally:
        if _LIBC.setns(original, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the original network namespace failed")
        os.close(original)
