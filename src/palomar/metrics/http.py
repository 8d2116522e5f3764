"""A minimal HTTP endpoint serving `GET /metrics` (OpenMetrics) from a Registry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from palomar.metrics.registry import Registry

log = logging.getLogger("palomar.metrics")

CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


async def _handle(registry: Registry, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if method != "GET":
            status, body, ctype = "405 Method Not Allowed", "only GET\n", "text/plain"
        elif path.split("?")[0] == "/metrics":
            status, body, ctype = "200 OK", registry.exposition(), CONTENT_TYPE
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


async def serve_metrics(registry: Registry, host: str, port: int) -> asyncio.Server:
    return await asyncio.start_server(lambda r, w: _handle(registry, r, w), host, port)


async def serve_stats(cfg: Any, registry: Registry) -> list[asyncio.Server]:
    """`GET /metrics` on every `service stats { inet_listener NAME { port } }` of `cfg` (any role)."""
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
