"""The direct path opens its backend link with the hop's helper: a backend named `[v6]` or `host:port`
reaches that address's Dovecot listener (the direct port: a port in the name is the backend's hop port)."""

from __future__ import annotations

import asyncio

import pytest

from palomar.protocols.proxyproto import build_v2
from palomar.proxy.direct_client import DirectClient
from palomar.proxy.hop_client import HopFailed, HopTarget

CLIENT = ("192.0.2.7", 51000)
LOCAL = ("192.0.2.1", 143)
HEADER = build_v2(CLIENT, LOCAL)


@pytest.mark.parametrize(("listen", "backend"), [
    ("127.0.0.1", "127.0.0.1:7425"),
    ("::1", "[::1]"),
    ("::1", "[::1]:7425"),
])
async def test_a_backend_name_with_brackets_or_a_hop_port_reaches_its_dovecot(listen: str, backend: str) -> None:
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def dovecot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.set_result(await reader.readexactly(len(HEADER)))
        writer.close()  # no greeting: the login fails after the header arrived

    server = await asyncio.start_server(dovecot, listen, 0)
    port = server.sockets[0].getsockname()[1]
    client = DirectClient({"imap": port}, master_user="master", master_password="secret",
                          connect_timeout=10, answer_timeout=10)
    target = HopTarget(user="user1", protocol="imap", session_id="s1", client=CLIENT, local=LOCAL, client_tls=False)
    try:
        outcome = await client.connect(backend, target)
        assert await asyncio.wait_for(received, 10) == HEADER
        assert isinstance(outcome, HopFailed) and outcome.host == backend  # Dovecot closed during the login,
        assert outcome.error_code != "proxy_dest_connect_failed", outcome  # after the connect succeeded
    finally:
        server.close()
        await server.wait_closed()
