"""A proxy and a backend in the test's own event loop: real loopback listeners, one real SQLite
GeoDB (each role with its own engine over the file, as separate processes would have), real
LocalDBs, and a fault switch on each role's GeoDB engine (`FlakyEngine`).

The backend logs users in to a real Dovecot when one is given; the tests of the I/O layer that
need no mailbox run without.
"""

from __future__ import annotations

import secrets
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from palomar.auth.passdb import PassdbChain
from palomar.backend.dovecot_login import DovecotEndpoint
from palomar.backend.service import BackendState, handle_hop
from palomar.cluster.model import Backend, Site
from palomar.geodb import open_engine
from palomar.geodb.engine import GeoDBError, GeoEngine
from palomar.geodb.repository import GeoDB
from palomar.localdb.store import LocalDB
from palomar.metrics.registry import Registry
from palomar.net.server import AcceptLoop, listen_socket
from palomar.proxy.hop_client import HopClient
from palomar.proxy.imap_frontend import ImapAdapter
from palomar.proxy.lmtp_frontend import serve_lmtp
from palomar.proxy.pop3_frontend import Pop3Adapter
from palomar.proxy.router import Router
from palomar.proxy.session import serve
from palomar.proxy.sieve_frontend import SieveAdapter
from palomar.proxy.site_hop import handle_site_hop
from palomar.proxy.state import ProxyMetrics, ProxyState
from palomar.proxy.submission_frontend import SubmissionAdapter

SITE = "east"
PASSWORD = "secret-pw"
USERS = tuple(f"user{i}@example.test" for i in range(1, 9))
ADAPTERS = {"imap": ImapAdapter(), "pop3": Pop3Adapter(), "submission": SubmissionAdapter(),
            "sieve": SieveAdapter()}
SERVICES = {"imap": "imap-login", "pop3": "pop3-login", "submission": "submission-login",
            "sieve": "managesieve-login"}


class FlakyEngine(GeoEngine):
    """A real engine with a switch: while `failing`, every call raises GeoDBError as an unreachable
    GeoDB would (the engines wrap their driver's errors the same way)."""

    def __init__(self, inner: GeoEngine) -> None:
        self.inner = inner
        self.failing = False
        self.failed_calls = 0

    def _check(self) -> None:
        if self.failing:
            self.failed_calls += 1
            raise GeoDBError("injected fault: GeoDB unreachable")

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def upsert(self, table, key, values, *, timestamp=None) -> None:
        self._check()
        await self.inner.upsert(table, key, values, timestamp=timestamp)

    async def insert_if_absent(self, table, key, values):
        self._check()
        return await self.inner.insert_if_absent(table, key, values)

    async def update_if(self, table, key, values, expected):
        self._check()
        return await self.inner.update_if(table, key, values, expected)

    async def get(self, table, key):
        self._check()
        return await self.inner.get(table, key)

    async def select(self, table, partition, clustering=()):
        self._check()
        return await self.inner.select(table, partition, clustering)

    async def read_many(self, reads):
        self._check()
        return await self.inner.read_many(reads)

    async def scan(self, table):
        self._check()
        return await self.inner.scan(table)

    async def scan_page(self, table, after, limit):
        self._check()
        return await self.inner.scan_page(table, after, limit)

    async def delete(self, table, key, *, timestamp=None) -> None:
        self._check()
        await self.inner.delete(table, key, timestamp=timestamp)


async def flaky_geodb(make_engine: Callable[[], GeoEngine]) -> tuple[GeoDB, FlakyEngine]:
    engine = FlakyEngine(make_engine())
    await engine.open()
    return GeoDB(engine), engine


@dataclass
class InProcessCluster:
    proxy: ProxyState
    backend: BackendState
    proxy_engine: FlakyEngine
    backend_engine: FlakyEngine
    listeners: dict[str, tuple[str, int]]
    """Client-facing listeners by protocol (imap, pop3, submission, sieve, lmtp)."""
    hop: tuple[str, int]
    loops: list[AcceptLoop] = field(default_factory=list)
    closers: list[Any] = field(default_factory=list)

    async def stop(self) -> None:
        for loop in self.loops:
            await loop.close()
        for relay in list(self.backend.active.values()):
            relay.close(by="proxy")
        await self.proxy.router.geodb.close()
        await self.backend.geodb.close()
        for close in self.closers:
            close()


def _listen(host: str, handler) -> tuple[AcceptLoop, tuple[str, int]]:
    sock = listen_socket(host, 0)
    loop = AcceptLoop(sock, handler)
    loop.start()
    return loop, sock.getsockname()[:2]


async def start_cluster(root: Path, *, backend_host: str, dovecot: Any = None,
                        make_engine: Callable[[], GeoEngine] | None = None, site_name: str = SITE,
                        listen: str = "127.0.0.1", users: Sequence[str] = USERS, secret: bytes | None = None,
                        site_listen: bool = False) -> InProcessCluster:
    """A site with one online backend at `backend_host` (whose hop listener runs here), a proxy
    with every protocol's listener on `listen`, `users` with PASSWORD. Each role opens its own
    engine from `make_engine` (default: one SQLite GeoDB file under `root`). Sites that share a
    GeoDB share `secret`; `site_listen` adds the proxy's listener for other sites' hops
    (`listeners["site"]`)."""
    root.mkdir(parents=True, exist_ok=True)
    if make_engine is None:
        make_engine = partial(open_engine, "sqlite", path=str(root / "geodb.sqlite"))
    setup, _ = await flaky_geodb(make_engine)
    site = Site(id=uuid.uuid4(), name=site_name)
    await setup.site_add(site)
    backend_row = Backend(id=uuid.uuid4(), site_id=site.id, host=backend_host)
    await setup.backend_add(backend_row)
    await setup.backend_set_status(site.id, backend_row.id, "online", None)
    await setup.close()

    passwd = root / "users.passwd"
    passwd.write_text("".join(f"{user}:{{PLAIN}}{PASSWORD}::::::\n" for user in users))
    passdb = PassdbChain.from_settings([SimpleNamespace(name="users", driver="passwd-file", args=str(passwd))])
    secret = secret or secrets.token_bytes(16)

    backend_geodb, backend_engine = await flaky_geodb(make_engine)
    backend_localdb = LocalDB(str(root / "backend-localdb.sqlite"))
    endpoint = DovecotEndpoint(host=backend_host, ports={}, master_user="", master_password="")
    if dovecot is not None:
        p = dovecot.params
        endpoint = DovecotEndpoint(
            host=p.listen, master_user=p.master_user, master_password=p.master_password,
            ports={"imap": p.imap_port, "pop3": p.pop3_port, "lmtp": p.lmtp_port,
                   "submission": p.submission_port, "sieve": p.sieve_port})
    backend = BackendState(geodb=backend_geodb, localdb=backend_localdb, name=backend_host, site_name=site_name,
                           secret=secret, dovecot=endpoint)
    await backend.register()
    hop_loop, hop = _listen(backend_host, lambda s: handle_hop(backend, s))

    proxy_geodb, proxy_engine = await flaky_geodb(make_engine)
    proxy_localdb = LocalDB(str(root / "proxy-localdb.sqlite"))
    proxy = ProxyState(
        passdb=passdb, router=Router(proxy_geodb, proxy_localdb, site_name=site_name, group_count=4),
        hops=HopClient(secret, hop[1], tls=None, connect_timeout=10.0, answer_timeout=10.0),
        metrics=ProxyMetrics(Registry()), site_id=site.id,
        proxy_host="proxy.test", allow_cleartext=True, auth_failure_delay=0.0, login_timeout=30.0,
    )
    cluster = InProcessCluster(proxy, backend, proxy_engine, backend_engine, {}, hop, [hop_loop],
                               [backend_localdb.close, proxy_localdb.close])
    for protocol, adapter in ADAPTERS.items():
        loop, address = _listen(listen, partial(serve, proxy, service=SERVICES[protocol], adapter=adapter,
                                                         haproxy=False, ssl=False))
        cluster.loops.append(loop)
        cluster.listeners[protocol] = address
    loop, address = _listen(listen, partial(serve_lmtp, proxy, haproxy=False, ssl=False))
    cluster.loops.append(loop)
    cluster.listeners["lmtp"] = address
    if site_listen:
        loop, address = _listen(listen, partial(handle_site_hop, proxy, None))
        cluster.loops.append(loop)
        cluster.listeners["site"] = address
    return cluster


def connect(address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(address, timeout=timeout)


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    """Read until `marker` has arrived or the peer closed (the socket's timeout bounds the wait)."""
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_to_end(sock: socket.socket) -> bytes:
    """Everything until the peer closes (the socket's timeout bounds the wait)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
