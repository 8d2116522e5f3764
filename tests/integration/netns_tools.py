"""Network namespaces for tests that put sites on hosts of their own: create one, and move a thread in.

Loopback addresses normally never leave `lo`; the sysctls let them cross veth links, so each
namespace can keep using 127.0.0.x addresses and still reach the other's over a link.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Callable

from palomar.devcluster.net import wait_until

CLONE_NEWNET = 0x40000000


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def add_namespace(name: str) -> None:
    """A new namespace with `lo` up, whose loopback addresses may be routed over veth links."""
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")
    subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1",
                    "net.ipv4.conf.default.route_localnet=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0"], check=True)


def setns(path: str) -> None:
    """Move the calling thread (and what it starts from now on) into the namespace at `path`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> float:
    """`wait_until` at a slower pace: these conditions run commands and logins across namespaces."""
    return wait_until(condition, timeout, what, interval=interval)
