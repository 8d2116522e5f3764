"""The accept loop out of file descriptors: every waiting client gets the refusal line, the log one line."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import socket

from palomar.net.refusals import RefusalLog
from palomar.net.server import AcceptLoop, listen_socket

BUSY = b"* BYE Connection queue full\r\n"


def _exhaust_descriptors() -> list[int]:
    """Open /dev/null until the process is out of descriptors (the soft limit is lowered first)."""
    opened: list[int] = []
    while True:
        try:
            opened.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            return opened


async def test_out_of_descriptors_refuses_politely_and_logs_once(caplog) -> None:
    listener = listen_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]
    served = asyncio.Event()

    async def handler(sock: socket.socket) -> None:
        served.set()
        sock.close()

    accept_loop = AcceptLoop(listener, handler, busy_reply=BUSY, refusals=RefusalLog(3600.0))
    clients = [socket.socket() for _ in range(40)]  # made now: connect() needs no new descriptor
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 32, hard))
    fillers: list[int] = []
    loop = asyncio.get_running_loop()
    gc.collect()  # an earlier test's socket freed by the collector mid-test would let one accept through
    gc.disable()
    try:
        fillers = _exhaust_descriptors()
        caplog.set_level(logging.WARNING, "palomar.net")
        accept_loop.start()
        for client in clients:
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect(("127.0.0.1", port))
        async with asyncio.timeout(20):
            replies = [await loop.sock_recv(client, 100) for client in clients]
        assert replies == [BUSY] * len(clients)
        assert not served.is_set()
        refused = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 1 and "out of file descriptors" in refused[0].getMessage()
    finally:
        gc.enable()
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for client in clients:
            client.close()
    # descriptors are back: the next connection is served normally
    late = socket.socket()
    late.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        late.connect(("127.0.0.1", port))
    async with asyncio.timeout(20):
        await served.wait()
    late.close()
    await accept_loop.close()
