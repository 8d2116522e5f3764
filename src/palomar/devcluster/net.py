"""Loopback ports: pick a free one, and wait until a listener accepts connections."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

POLL_INTERVAL = 0.02
_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the kernel picks it)."""
    return free_ports(host, 1)[0]


def free_ports(host: str, count: int) -> list[int]:
    """`count` distinct free ports, none handed out before by this process.

    All are held at once, since the kernel may hand out one twice; and a port picked here is only
    bound later by a server, so a second pick in between (another server's ports) could get the same
    one again: the ports already handed out are remembered and never given twice.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < count:
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
            port = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                ports.append(port)
            if len(socks) > count + 1000:
                raise RuntimeError(f"no {count} fresh free ports on {host}")
        _HANDED_OUT.update(ports)
        return ports
    finally:
        for sock in socks:
            sock.close()


def free_port_on_all(hosts: list[str] | tuple[str, ...], what: str, taken: tuple[int, ...] = ()) -> int:
    """One port free on every address in `hosts` and not in `taken` (a port a whole tier shares)."""
    for _ in range(50):
        port = free_port(hosts[0])
        if port not in taken and all(not port_accepts(host, port) for host in hosts):
            return port
    raise RuntimeError(f"no common free port for {what}")


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connect to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, deadline: float, alive: Callable[[], bool] | None = None) -> None:
    """Poll connect() until host:port accepts, or raise TimeoutError at `deadline` (time.monotonic()).

    `alive` lets the caller stop waiting early when the server process has died.
    """
    while True:
        if port_accepts(host, port):
            return
        if alive is not None and not alive():
            raise RuntimeError(f"server exited before {host}:{port} accepted connections")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections in time")
        time.sleep(POLL_INTERVAL)


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               interval: float = POLL_INTERVAL) -> float:
    """Poll `predicate` every `interval` until it holds; the seconds it took (TimeoutError naming
    `what` after `timeout`)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started >= timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started
