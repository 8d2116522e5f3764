"""Fencing on the proxy: cutting a backend's relayed sessions, over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
from uuid import UUID, uuid4

from palomar.cluster.model import Backend, Site, SiteView
from palomar.cluster.site_selection import SiteState
from palomar.net.relay import Relay, RelayStats
from palomar.proxy.fence import RelayedSessions, cut_unavailable, cut_unreachable_sites

BOUND = 5.0


class Session:
    """client <-> [proxy relay] <-> backend, all on loopback; the test plays client and backend."""

    async def open(self, sessions: RelayedSessions, host: str, origin: UUID | None = None) -> Session:
        loop = asyncio.get_running_loop()
        backend_side: asyncio.Future = loop.create_future()
        proxy_side: asyncio.Future = loop.create_future()
        self.backend_server = await asyncio.start_server(
            lambda r, w: backend_side.set_result((r, w)), "127.0.0.1", 0)
        self.proxy_server = await asyncio.start_server(
            lambda _r, w: proxy_side.set_result(w), "127.0.0.1", 0)
        self.client_r, self.client_w = await asyncio.open_connection(
            "127.0.0.1", self.proxy_server.sockets[0].getsockname()[1])
        towards_backend, _ = await loop.create_connection(
            asyncio.Protocol, "127.0.0.1", self.backend_server.sockets[0].getsockname()[1])
        self.backend_r, self.backend_w = await backend_side
        self.ended: list[RelayStats] = []

        def done(stats: RelayStats) -> None:
            sessions.remove(host, relay)
            self.ended.append(stats)

        self.proxy_writer = await proxy_side  # kept: a dropped StreamWriter closes its transport
        relay = Relay(self.proxy_writer.transport, towards_backend, done)
        sessions.add(host, relay, origin=origin)
        relay.start()
        return self

    async def client_reads_until_closed(self) -> bytes:
        got = b""
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(BOUND):
                while data := await self.client_r.read(65536):
                    got += data
        return got

    async def close(self) -> None:
        self.client_w.close()
        self.backend_w.close()
        self.backend_server.close()
        self.proxy_server.close()


async def test_cut_closes_both_sides_and_nothing_later_reaches_the_client() -> None:
    sessions = RelayedSessions()
    cut, kept = await Session().open(sessions, "be1"), await Session().open(sessions, "be2")
    try:
        cut.backend_w.write(b"* OK before\r\n")
        async with asyncio.timeout(BOUND):
            assert await cut.client_r.readexactly(13) == b"* OK before\r\n"
        assert sessions.count("be1") == 1 and sessions.count("be2") == 1

        assert sessions.cut("be1", "test") == 1
        cut.backend_w.write(b"a OK after the cut\r\n")  # the old backend resumes and answers
        assert await cut.client_reads_until_closed() == b""
        with contextlib.suppress(ConnectionResetError):  # reset: its late answer was never read
            async with asyncio.timeout(BOUND):
                assert await cut.backend_r.read() == b""  # the backend's side is closed too
        assert [s.closed_by for s in cut.ended] == ["proxy"]
        assert sessions.count("be1") == 0

        kept.backend_w.write(b"* still here\r\n")  # another backend's session is untouched
        async with asyncio.timeout(BOUND):
            assert await kept.client_r.readexactly(14) == b"* still here\r\n"
        assert sessions.count("be2") == 1 and not kept.ended
    finally:
        await cut.close()
        await kept.close()


async def test_cut_unavailable_cuts_every_backend_not_online() -> None:
    site = Site(uuid4(), "s1")
    view = SiteView(site, tuple(Backend(uuid4(), site.id, host, status=status)
                                for host, status in (("up", "online"), ("down", "offline"), ("spare", "standby"))))
    sessions = RelayedSessions()
    opened = [await Session().open(sessions, host) for host in ("up", "down", "spare", "removed")]
    try:
        assert cut_unavailable(sessions, view) == 3
        assert list(sessions.by_host) == ["up"]
        for session in opened[1:]:
            assert await session.client_reads_until_closed() == b""
    finally:
        for session in opened:
            await session.close()


async def test_sessions_relayed_to_a_site_whose_row_says_unreachable_are_cut() -> None:
    """A partition that drops packets silently leaves relayed sessions hanging until TCP gives up;
    once this site's reachability row calls the other site unreachable, they are cut, so their
    clients reconnect and are served in the failover site."""
    here, lost, fine = Site(uuid4(), "DC1"), Site(uuid4(), "DC2", load_balancer="lb2:7426"), \
        Site(uuid4(), "DC3", load_balancer="lb3:7426")
    state = SiteState(here.id, (here, lost, fine), unreachable=frozenset({lost.id}))
    sessions = RelayedSessions()
    opened = [await Session().open(sessions, host) for host in ("lb2:7426", "lb3:7426", "be1")]
    sessions.remote.update({"lb2:7426", "lb3:7426"})
    # sessions the other sites' proxies relayed here, to this site's backend be2
    from_lost, from_fine = await Session().open(sessions, "be2", lost.id), await Session().open(sessions, "be2", fine.id)
    opened += [from_lost, from_fine]
    try:
        assert cut_unreachable_sites(sessions, state) == 2
        assert sorted(sessions.by_host) == ["be1", "be2", "lb3:7426"] and sessions.count("be2") == 1
        for session in (opened[0], from_lost):
            assert await session.client_reads_until_closed() == b""
        assert not opened[1].ended and not opened[2].ended and not from_fine.ended
        assert list(sessions.origin.values()) == [fine.id] and set(sessions.from_site) == {fine.id}
        assert cut_unreachable_sites(sessions, state) == 0  # nothing left to cut, nothing logged again
    finally:
        for session in opened:
            await session.close()
