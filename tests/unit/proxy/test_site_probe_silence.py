"""A site probe into a silent network is over within the probe timeout, whatever the hop's connect timeout.

A silently dropping link lets the TCP connect (or, as here, the TLS handshake) hang. The hop's own
`cluster_hop_connect_timeout` may be longer than the probe timeout; the probe must not wait for it,
or its reports come late, go stale, and the reachability windows stretch (docs/design/multi-site.md).
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from types import SimpleNamespace

from palomar.cluster.model import Site
from palomar.proxy.hop_client import HopClient
from palomar.proxy.site_probes import probe_site

PROBE_TIMEOUT = 0.2
HOP_CONNECT_TIMEOUT = 60.0
BOUND = 10.0
"""Far above the probe timeout and far below the hop's connect timeout: only an unbounded probe reaches it."""


async def test_a_probe_of_a_site_that_never_answers_the_handshake_fails_within_its_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accept TCP, then say nothing: the TLS handshake hangs

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hops = HopClient(b"secret", port, tls=ssl.create_default_context(), connect_timeout=HOP_CONNECT_TIMEOUT,
                     answer_timeout=HOP_CONNECT_TIMEOUT)
    state = SimpleNamespace(hops=hops, site_id=uuid.uuid4())
    site = Site(uuid.uuid4(), "DC2", load_balancer=f"127.0.0.1:{port}")
    try:
        assert await asyncio.wait_for(probe_site(state, site, PROBE_TIMEOUT), BOUND) is False
        assert accepted, "the probe reached the silent listener"
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
