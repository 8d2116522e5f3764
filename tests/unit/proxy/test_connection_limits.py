"""Connection caps and the per-connection failure limit of a proxy process, over real loopback sockets.

The proxy's IMAP front end runs in-process with a real passwd-file passdb; nothing here logs in to a
backend (tests/integration/test_limits.py does that through the whole cluster).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest

from palomar.auth.passdb import PassdbChain
from palomar.metrics.registry import Registry
from palomar.net.server import AcceptLoop, listen_socket
from palomar.protocols.proxyproto import build_v2
from palomar.proxy.imap_frontend import ImapAdapter
from palomar.proxy.limits import ConnectionLimits
from palomar.proxy.session import serve
from palomar.proxy.state import ProxyMetrics, ProxyState

GREETING = b"* OK "
PER_IP_BYE = b"* BYE Maximum number of connections from IP exceeded (login_max_ip_connections=%d)\r\n"


def test_limits_count_per_service_and_per_address() -> None:
    limits = ConnectionLimits({"imap-login": 2}, max_per_ip=1)
    first, second = limits.admit("imap-login"), limits.admit("imap-login")
    assert first is not None and second is not None
    assert limits.admit("imap-login") is None  # client_limit
    assert limits.admit("pop3-login") is not None  # another service has its own count
    assert first.claim_address("192.0.2.1")
    assert not second.claim_address("192.0.2.1")
    assert second.claim_address("192.0.2.2")
    first.logged_in()  # logged in: no longer counted per address, still per service
    assert limits.prelogin == {"192.0.2.2": 1}
    assert limits.admit("imap-login") is None
    first.release()
    first.release()  # twice is harmless
    assert limits.open["imap-login"] == 1
    second.release()
    assert limits.prelogin == {} and limits.open["imap-login"] == 0


@dataclass
class Proxy:
    state: ProxyState
    port: int
    haproxy_port: int


@pytest.fixture
async def proxy(tmp_path: Path, request) -> AsyncIterator[Proxy]:
    options = getattr(request, "param", {})
    passwd = tmp_path / "users.passwd"
    passwd.write_text("user1@example.test:{PLAIN}password1\n")
    passdb = PassdbChain.from_settings([SimpleNamespace(name="users", driver="passwd-file", args=str(passwd))])
    state = ProxyState(
        passdb=passdb, router=None, hops=None, metrics=ProxyMetrics(Registry()), site_id=None,
        allow_cleartext=True, auth_failure_delay=0.0, haproxy_trusted=(ipaddress.ip_network("127.0.0.1/32"),),
        login_trusted=(ipaddress.ip_network("127.0.0.60/32"),),
        limits=ConnectionLimits({"imap-login": options.get("client_limit", 0)}, options.get("per_ip", 20)),
        max_auth_failures=3,
    )
    loops = []
    ports = []
    for haproxy in (False, True):
        sock = listen_socket("127.0.0.1", 0)
        loop = AcceptLoop(sock, partial(serve, state, service="imap-login", adapter=ImapAdapter(), haproxy=haproxy,
                                        ssl=False))
        loop.start()
        loops.append(loop)
        ports.append(sock.getsockname()[1])
    yield Proxy(state, *ports)
    for loop in loops:
        await loop.close()


async def _connect(port: int, source: str, header: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(header)
    return reader, writer


async def _first_line(port: int, source: str, header: bytes = b"") -> tuple[bytes, asyncio.StreamWriter]:
    reader, writer = await _connect(port, source, header)
    async with asyncio.timeout(10):
        return await reader.readline(), writer


async def test_a_flood_from_one_address_does_not_lock_out_another(proxy: Proxy) -> None:
    """300 idle connections from 127.0.0.50 (cap 20): the rest are refused at once, 127.0.0.51 is served."""
    lines, writers = [], []
    for _ in range(300):
        line, writer = await _first_line(proxy.port, "127.0.0.50")
        lines.append(line)
        writers.append(writer)
    assert sum(line.startswith(GREETING) for line in lines) == 20
    assert lines[20:] == [PER_IP_BYE % 20] * 280
    other, writer = await _first_line(proxy.port, "127.0.0.51")
    assert other.startswith(GREETING)
    writers.append(writer)
    trusted, writer = await _first_line(proxy.port, "127.0.0.60")  # login_trusted_networks: exempt
    assert trusted.startswith(GREETING)
    writers.append(writer)
    assert proxy.state.metrics.connections_refused.value(reason="login_max_ip_connections") == 280
    for writer in writers:
        writer.close()
    # closed connections free their places
    async with asyncio.timeout(10):
        while proxy.state.limits.prelogin:
            await asyncio.sleep(0.01)  # polling the counts the server's tasks update as the closes arrive
    line, writer = await _first_line(proxy.port, "127.0.0.50")
    assert line.startswith(GREETING)
    writer.close()


async def test_behind_haproxy_the_real_client_address_is_counted(proxy: Proxy) -> None:
    """Every connection comes from HAProxy (127.0.0.1); the cap applies to the PROXY header's source."""
    writers = []

    def header(source: str) -> bytes:
        return build_v2((source, 40000), ("127.0.0.1", 143))

    for i in range(40):  # 40 clients, 2 each: HAProxy's own address is never capped as one client
        for _ in range(2):
            line, writer = await _first_line(proxy.haproxy_port, "127.0.0.1", header(f"192.0.2.{i}"))
            assert line.startswith(GREETING)
            writers.append(writer)
    for _ in range(18):
        line, writer = await _first_line(proxy.haproxy_port, "127.0.0.1", header("192.0.2.0"))
        writers.append(writer)
    line, refused = await _first_line(proxy.haproxy_port, "127.0.0.1", header("192.0.2.0"))
    assert line == PER_IP_BYE % 20
    for writer in [*writers, refused]:
        writer.close()


@pytest.mark.parametrize("proxy", [{"client_limit": 5, "per_ip": 0}], indirect=True)
async def test_client_limit_refuses_with_dovecots_words(proxy: Proxy) -> None:
    writers = []
    for i in range(5):
        line, writer = await _first_line(proxy.port, f"127.0.0.{70 + i}")
        assert line.startswith(GREETING)
        writers.append(writer)
    line, refused = await _first_line(proxy.port, "127.0.0.80")
    assert line == b"* BYE Connection queue full\r\n"
    assert proxy.state.metrics.connections_refused.value(reason="client_limit") == 1
    for writer in [*writers, refused]:
        writer.close()


async def test_a_connection_is_closed_after_three_failed_logins(proxy: Proxy) -> None:
    reader, writer = await _connect(proxy.port, "127.0.0.90")
    async with asyncio.timeout(10):
        assert (await reader.readline()).startswith(GREETING)
        replies = []
        for i in range(3):
            writer.write(f'a{i} LOGIN user1@example.test "wrong{i}"\r\n'.encode())
            replies.append(await reader.readline())
        bye = await reader.readline()
        rest = await reader.read()
    assert replies == [f"a{i} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n".encode() for i in range(3)]
    assert bye == b"* BYE Too many authentication failures.\r\n"
    assert rest == b""
    assert proxy.state.metrics.auth_failure_disconnects.value() == 1
    writer.close()
