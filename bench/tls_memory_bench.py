"""Memory per TLS endpoint, in one process: asyncio's own TLS transport against palomar's links.

400 connection pairs over loopback (both ends in this process, so 800 TLS endpoints), each pair
exchanging 100 bytes, then 1 MB each way; after each step, with every connection idle, glibc's
`malloc` bytes in use (`mallinfo2().uordblks`, which includes OpenSSL's allocations) are compared
with those before the pairs were opened, and divided by the number of endpoints. Each
implementation runs in a fresh interpreter.

    .venv/bin/python bench/tls_memory_bench.py [--pairs 400] [--only asyncio|palomar]

`palomar` is whatever `palomar.net.link` uses (run it with another checkout's `src` on PYTHONPATH
to compare versions). The figures go to docs/design/login-path-cost.md ("TLS memory") by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

from palomar.devcluster.malloc_stats import malloc_in_use

HOST = "127.0.0.1"
SMALL = 100
LARGE = 1024 * 1024


def contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from palomar.devcluster.certs import hop_certificates

    certs = hop_certificates(directory, [HOST])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pair = certs.backends[HOST]
    server.load_cert_chain(str(pair.cert), str(pair.key))
    client = ssl.create_default_context(cafile=str(certs.ca))
    return server, client


class End(asyncio.Protocol):
    """Counts what arrives; `until(n)` waits for n bytes in all."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.got = 0
        self._want = 0
        self._waiter: asyncio.Future[None] | None = None
        self.made = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.made.done():
            self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self._waiter is not None and self.got >= self._want and not self._waiter.done():
            self._waiter.set_result(None)

    async def until(self, total: int) -> None:
        if self.got < total:
            self._want = total
            self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self._waiter, 120)


async def asyncio_pairs(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, count: int) -> list[tuple[End, End]]:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[End] = asyncio.Queue()

    def made() -> End:
        end = End()
        accepted.put_nowait(end)
        return end

    server = await loop.create_server(made, HOST, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    pairs = []
    for _ in range(count):
        _, client = await loop.create_connection(End, HOST, port, ssl=client_ctx, server_hostname=HOST)
        accepted_end = await accepted.get()
        await accepted_end.made  # after the server side's handshake
        pairs.append((accepted_end, client))
    return pairs


async def palomar_pairs(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, count: int) -> list[tuple[End, End]]:
    """Accepted and connected links as the proxy and backend make them, each switched to an `End`
    the way the relay takes a link's transport over."""
    from palomar.net.link import accept_link, open_link

    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind((HOST, 0))
    lsock.listen(128)
    lsock.setblocking(False)
    pairs = []
    for _ in range(count):
        connecting = asyncio.ensure_future(open_link(HOST, lsock.getsockname()[1], timeout=30, tls=client_ctx))
        sock, _ = await loop.sock_accept(lsock)
        links = (await accept_link(sock, tls=server_ctx, handshake_timeout=30), await connecting)
        ends = []
        for link in links:
            end = End()
            assert link.transport is not None
            link.transport.set_protocol(end)
            end.connection_made(link.transport)
            ends.append(end)
        pairs.append((ends[0], ends[1]))
    return pairs


async def exchange(pairs: list[tuple[End, End]], size: int) -> None:
    """`size` bytes each way on every pair (a few pairs at a time), written in 64 KiB pieces as a
    relay forwards them."""
    block = os.urandom(size)
    pieces = [block[at:at + 65536] for at in range(0, size, 65536)]
    for start in range(0, len(pairs), 20):
        batch = pairs[start:start + 20]
        for server, client in batch:
            assert server.transport is not None and client.transport is not None
            for piece in pieces:
                server.transport.write(piece)
                client.transport.write(piece)
        await asyncio.gather(*(end.until(end.got + size) for pair in batch for end in pair))


async def measure(kind: str, count: int, directory: Path) -> dict[str, float]:
    server_ctx, client_ctx = contexts(directory)
    make = asyncio_pairs if kind == "asyncio" else palomar_pairs
    warm = await make(server_ctx, client_ctx, 5)  # the contexts' caches, shared read buffers
    await exchange(warm, LARGE)
    gc.collect()
    before = malloc_in_use()
    pairs = await make(server_ctx, client_ctx, count)
    await exchange(pairs, SMALL)
    await asyncio.sleep(0.2)  # let the last callbacks run: nothing is in flight after exchange()
    gc.collect()
    small = (malloc_in_use() - before) / (2 * count)
    await exchange(pairs, LARGE)
    await asyncio.sleep(0.2)
    gc.collect()
    large = (malloc_in_use() - before) / (2 * count)
    return {"idle after 100 bytes": small / 1024, "idle after 1 MB each way": large / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--only", choices=("asyncio", "palomar"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as directory:
            result = asyncio.run(measure(args.child, args.pairs, Path(directory)))
        print(json.dumps(result))
        return
    for kind in ([args.only] if args.only else ["asyncio", "palomar"]):
        out = subprocess.run([sys.executable, __file__, "--pairs", str(args.pairs), "--child", kind],
                             check=True, capture_output=True, text=True).stdout
        figures = json.loads(out)
        print(f"{kind}: " + ", ".join(f"{name} {kib:.1f} KiB" for name, kib in figures.items())
              + " per TLS endpoint")


if __name__ == "__main__":
    main()
