"""A minimal HTTP endpoint serving `GET /metrics` (OpenMetrics) from a Registry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from palomar.metrics.registry import Registry

log = logging.getLogger("palomar.metrics")

CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


Render = Callable[[], Awaitable[str]]
"""What produces the exposition text of one scrape."""


def registry_render(registry: Registry) -> Render:
    async def render() -> str:
        return registry.exposition()
    return render


async def _handle(render: Render, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if method != "GET":
            status, body, ctype = "405 Method Not Allowed", "only GET\n", "text/plain"
        elif path.split("?")[0] == "/metrics":
            status, body, ctype = "200 OK", await render(), CONTENT_TYPE
        else:
            status, body, ctype = "404 Not Found", "try /metrics\n", "text/plain"
        data = body.encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
            f"Connection: close\r\n\r\n".encode() + data
        )
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve_metrics(registry: Registry | Render, host: str, port: int) -> asyncio.Server:
    render = registry_render(registry) if isinstance(registry, Registry) else registry
    return await asyncio.start_server(lambda r, w: _handle(render, r, w), host, port)


async def serve_metrics_unix(registry: Registry, address: str) -> asyncio.Server:
    """`GET /metrics` on a UNIX socket: a proxy worker's, scraped by its parent."""
    render = registry_render(registry)
    return await asyncio.start_unix_server(lambda r, w: _handle(render, r, w), address)


async def scrape_unix(address: str, timeout: float) -> str:
    """The exposition text served on the UNIX socket `address` (raises OSError or TimeoutError)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(address)
        try:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: worker\r\n\r\n")
            response = await reader.read()
        finally:
            writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"unexpected answer: {head[:40]!r}")
    return body.decode()


async def serve_stats(cfg: Any, registry: Registry | Render) -> list[asyncio.Server]:
    """`GET /metrics` on every `service stats { inet_listener NAME { port } }` of `cfg` (any role); `registry`
    may be a function that renders the text (a proxy's parent adding up its workers)."""
    servers: list[asyncio.Server] = []
    stats = cfg.services.get("stats")
    if stats is None:
        return servers
    for listener in stats.listeners.values():
        for address in listener.bind_addresses():
            servers.append(await serve_metrics(registry, address, listener.port))
            log.info("metrics on http://%s/metrics", f"[{address}]:{listener.port}" if ":" in address
                     else f"{address}:{listener.port}")
    return servers
