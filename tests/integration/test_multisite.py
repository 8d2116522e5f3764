"""Two sites on loopback sharing one SQLite GeoDB: DC1 (backend1's Dovecot on 127.0.0.2) and DC2
(backend2's Dovecot on 127.0.0.3), a proxy each, and a real HAProxy per site as its load balancer
(DC1's on 127.0.0.100, DC2's on 127.0.0.101) in front of the proxy's site-hop listener.

Every login and LMTP recipient goes in through either site's proxy and must end on a backend of
the site `select_site` names: real clients (imaplib, poplib, smtplib) against real Dovecot.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import smtplib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from test_store_failures import LOGINS, imap_login

from inprocess_cluster import PASSWORD, USERS, InProcessCluster, start_cluster
from palomar.cluster.hashing import force_move_bucket
from palomar.cluster.model import ForceMove, Site
from palomar.cluster.reachability import DOWN_WINDOW, UP_WINDOW
from palomar.devcluster.dovecot import DovecotInstance
from palomar.devcluster.haproxy import HAProxyInstance, Listen
from palomar.devcluster.net import free_port
from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB
from palomar.proxy.hop_client import Established, HopFailed, HopTarget
from palomar.proxy.site_probes import SiteProber

LB_HOSTS = {"DC1": "127.0.0.100", "DC2": "127.0.0.101"}


@dataclass
class TwoSites:
    sites: dict[str, InProcessCluster]
    ids: dict[str, uuid.UUID]
    geodb: GeoDB
    balancers: dict[str, HAProxyInstance]

    def served_by(self) -> dict[str, int]:
        return {name: c.backend.logins for name, c in self.sites.items()}

    def forget_caches(self) -> None:
        """What `palomar cluster geodb refresh` does on every proxy, and the backends' one-second
        site cache running out: the next login reads the GeoDB."""
        for c in self.sites.values():
            c.proxy.router.cache.cache_clear()
            c.backend.forget_site_state()

    async def home(self, user: str, site: str) -> None:
        await self.geodb.user_put(user, preferred_site_id=self.ids[site])


@pytest.fixture
async def two_sites(tmp_path: Path, dovecot_backends: dict[str, DovecotInstance]) -> AsyncIterator[TwoSites]:
    make_engine = partial(open_engine, "sqlite", path=str(tmp_path / "geodb.sqlite"))
    secret = secrets.token_bytes(16)
    sites: dict[str, InProcessCluster] = {}
    balancers: dict[str, HAProxyInstance] = {}
    engine = make_engine()
    await engine.open()
    geodb = GeoDB(engine)
    try:
        for name, backend in (("DC1", "backend1"), ("DC2", "backend2")):
            dovecot = dovecot_backends[backend]
            sites[name] = c = await start_cluster(tmp_path / name, backend_host=dovecot.params.listen,
                                                  dovecot=dovecot, make_engine=make_engine, site_name=name,
                                                  secret=secret, site_listen=True)
            lb_port = free_port(LB_HOSTS[name])
            haproxy = HAProxyInstance([Listen(f"site-{name}", [(LB_HOSTS[name], lb_port)], [c.listeners["site"]],
                                              send_proxy_v2=False, check=False)], tmp_path / f"haproxy-{name}")
            haproxy.start()
            balancers[name] = haproxy
            site = await geodb.site_get_by_name(name)
            assert site is not None
            await geodb.site_update(site.id, load_balancer=f"{LB_HOSTS[name]}:{lb_port}")
        ids = {name: (await geodb.site_get_by_name(name)).id for name in sites}  # type: ignore[union-attr]
        yield TwoSites(sites, ids, geodb, balancers)
    finally:
        for haproxy in balancers.values():
            haproxy.stop()
        for c in sites.values():
            await c.stop()
        await geodb.close()


async def login_via(two: TwoSites, site: str, user: str, protocol: str = "imap") -> tuple[str, str | None]:
    """Log `user` in through `site`'s proxy; (result, the site whose backend served it)."""
    before = two.served_by()
    login, _ = LOGINS[protocol]
    result = await asyncio.to_thread(login, two.sites[site].listeners[protocol], user)
    after = two.served_by()
    served = [name for name in after if after[name] > before[name]]
    assert len(served) <= 1, served
    return result, served[0] if served else None


@pytest.mark.parametrize("protocol", list(LOGINS))
async def test_each_user_is_served_in_its_site_whichever_site_it_enters(two_sites: TwoSites, protocol: str) -> None:
    homes = {USERS[0]: "DC1", USERS[1]: "DC2"}
    for user, home in homes.items():
        await two_sites.home(user, home)
    for user, home in homes.items():
        for entry in ("DC1", "DC2"):
            assert await login_via(two_sites, entry, user, protocol) == ("OK", home), (user, entry)
    # the relayed logins were recorded where they were served
    [row] = await two_sites.geodb.user_sites_list(USERS[1])
    assert row.site_id == two_sites.ids["DC2"]


async def test_a_new_user_is_homed_in_the_site_of_its_first_login(two_sites: TwoSites) -> None:
    user = USERS[2]
    assert await login_via(two_sites, "DC2", user) == ("OK", "DC2")
    record = await two_sites.geodb.user_get(user)
    assert record is not None and record.preferred_site_id == two_sites.ids["DC2"]
    assert await login_via(two_sites, "DC1", user) == ("OK", "DC2")


def lmtp_deliver(address: tuple[str, int], users: list[str], subject: str) -> dict[str, int]:
    lmtp = smtplib.LMTP(*address, timeout=15)
    try:
        lmtp.ehlo_or_helo_if_needed()
        assert lmtp.mail("sender@example.org")[0] == 250
        for user in users:
            code, text = lmtp.rcpt(user)
            assert code == 250, (user, code, text)
        lmtp.putcmd("DATA")
        assert lmtp.getreply()[0] == 354
        msg_id = f"<{uuid.uuid4()}@multisite.test>"
        body = f"Subject: {subject}\r\nMessage-ID: {msg_id}\r\n\r\nhello\r\n.\r\n"
        lmtp.send(body.encode())
        return {user: lmtp.getreply()[0] for user in users}
    finally:
        lmtp.close()


def count_subject(address: tuple[str, int], user: str, subject: str) -> int:
    import imaplib

    imap = imaplib.IMAP4(*address, timeout=10)
    try:
        imap.login(user, PASSWORD)
        imap.select("INBOX")
        typ, data = imap.search(None, "SUBJECT", f'"{subject}"')
        assert typ == "OK"
        return len(data[0].split())
    finally:
        imap.logout()


async def test_lmtp_recipients_of_both_sites_in_one_transaction(two_sites: TwoSites,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="palomar")
    dc1_user, dc2_user = USERS[3], USERS[4]
    await two_sites.home(dc1_user, "DC1")
    await two_sites.home(dc2_user, "DC2")
    subject = f"multisite-{uuid.uuid4().hex[:8]}"
    replies = await asyncio.to_thread(lmtp_deliver, two_sites.sites["DC1"].listeners["lmtp"], [dc1_user, dc2_user],
                                      subject)
    assert replies == {dc1_user: 250, dc2_user: 250}
    relayed = [r.getMessage() for r in caplog.records if "relayed from another site" in r.getMessage()]
    assert len(relayed) == 1 and "proto=lmtp" in relayed[0] and dc2_user in relayed[0]
    for user in (dc1_user, dc2_user):
        assert await asyncio.to_thread(count_subject, two_sites.sites["DC1"].listeners["imap"], user, subject) == 1


async def test_site_status_moves_logins_to_the_failover_site_and_back(two_sites: TwoSites) -> None:
    user = USERS[5]
    await two_sites.home(user, "DC2")
    assert await login_via(two_sites, "DC1", user) == ("OK", "DC2")
    for status in ("standby", "offline", "evacuate"):
        await two_sites.geodb.site_set_status(two_sites.ids["DC2"], status)
        two_sites.forget_caches()
        for entry in ("DC1", "DC2"):
            assert await login_via(two_sites, entry, user) == ("OK", "DC1"), (status, entry)
    await two_sites.geodb.site_set_status(two_sites.ids["DC2"], "online")
    two_sites.forget_caches()
    assert await login_via(two_sites, "DC1", user) == ("OK", "DC2")


async def test_site_force_move_ramp_and_recover_from_real_logins(two_sites: TwoSites) -> None:
    users = list(USERS[:8])
    for user in users:
        await two_sites.home(user, "DC2")
    move_id = uuid.uuid4()
    moved_before: set[str] = set()
    for pct in (10, 50, 100):
        await two_sites.geodb.site_force_move_set(two_sites.ids["DC2"], ForceMove(move_id, pct,
                                                                                  (str(two_sites.ids["DC1"]),)))
        two_sites.forget_caches()
        served = {user: (await login_via(two_sites, "DC2", user))[1] for user in users}
        moved = {u for u, site in served.items() if site == "DC1"}
        assert moved == {u for u in users if force_move_bucket(move_id, u) < pct}, pct
        assert set(served.values()) <= {"DC1", "DC2"} and moved_before <= moved
        moved_before = moved
    # recovery: a status change ends the force-move; the recover ramp brings users home in steps
    recover_id = uuid.uuid4()
    await two_sites.geodb.site_set_status(two_sites.ids["DC2"], "offline")
    await two_sites.geodb.site_recover_set(two_sites.ids["DC2"], recover_id, 0)
    await two_sites.geodb.site_set_status(two_sites.ids["DC2"], "online")
    for pct in (0, 50):
        await two_sites.geodb.site_recover_set(two_sites.ids["DC2"], recover_id, pct)
        two_sites.forget_caches()
        served = {user: (await login_via(two_sites, "DC1", user))[1] for user in users}
        assert {u for u, s in served.items() if s == "DC2"} == {u for u in users
                                                               if force_move_bucket(recover_id, u) < pct}, pct
    await two_sites.geodb.site_recover_clear(two_sites.ids["DC2"])
    two_sites.forget_caches()
    assert {(await login_via(two_sites, "DC1", u))[1] for u in users} == {"DC2"}


async def test_sites_that_disagree_never_bounce_a_login_back(two_sites: TwoSites,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """DC1's proxy still has DC2 online in its cache; DC2 has gone standby and would send the user
    to its failover site DC1: DC2 refuses instead of relaying the login back."""
    caplog.set_level(logging.INFO, logger="palomar")
    user = USERS[6]
    await two_sites.home(user, "DC2")
    two_sites.sites["DC1"].proxy.router.cache_ttl = 3600
    assert await login_via(two_sites, "DC1", user) == ("OK", "DC2")
    await two_sites.geodb.site_set_status(two_sites.ids["DC2"], "standby")
    two_sites.sites["DC2"].proxy.router.cache.cache_clear()
    result, served = await login_via(two_sites, "DC1", user)
    assert ("UNAVAILABLE" in result, served) == (True, None)
    assert any("site loop" in r.getMessage() for r in caplog.records)
    two_sites.forget_caches()  # once DC1 sees it too, DC1 serves the user itself
    assert await login_via(two_sites, "DC1", user) == ("OK", "DC1")


async def test_a_site_without_a_load_balancer_is_a_temporary_failure(two_sites: TwoSites) -> None:
    await two_sites.geodb.site_add(Site(uuid.uuid4(), "DC3"))
    dc3 = await two_sites.geodb.site_get_by_name("DC3")
    assert dc3 is not None
    await two_sites.geodb.user_put(USERS[7], preferred_site_id=dc3.id)
    result = await asyncio.to_thread(imap_login, two_sites.sites["DC1"].listeners["imap"], USERS[7])
    assert "UNAVAILABLE" in result


async def test_an_unreachable_site_fails_over_after_the_window_and_comes_back(two_sites: TwoSites) -> None:
    """DC2's load balancer goes away (what DC1 sees of a partition): DC1's proxy keeps relaying
    until its probes have failed for the whole window, then serves DC2's users itself; once DC2 is
    back for the up window, they go home."""
    user = USERS[0]
    await two_sites.home(user, "DC2")
    prober = SiteProber(two_sites.sites["DC1"].proxy)
    t0 = time.time()
    assert await prober.run_once(t0) == {"DC2": True}
    two_sites.balancers["DC2"].stop()
    assert await prober.run_once(t0 + 1) == {"DC2": True}
    result, served = await login_via(two_sites, "DC1", user)
    assert "UNAVAILABLE" in result and served is None  # inside the window: no failover yet
    assert await prober.run_once(t0 + 1 + DOWN_WINDOW) == {"DC2": False}
    row = await two_sites.geodb.reachability_get(two_sites.ids["DC1"], two_sites.ids["DC2"])
    assert row is not None and row.reachable is False
    assert await login_via(two_sites, "DC1", user) == ("OK", "DC1")
    assert await login_via(two_sites, "DC2", user) == ("OK", "DC2")  # split brain: DC2 serves its own
    two_sites.balancers["DC2"].start()
    t1 = t0 + 2 + DOWN_WINDOW
    assert await prober.run_once(t1) == {"DC2": False}
    assert await prober.run_once(t1 + UP_WINDOW) == {"DC2": True}
    assert await login_via(two_sites, "DC1", user) == ("OK", "DC2")


async def test_a_site_hop_is_handed_only_to_a_referred_backend_of_that_site(two_sites: TwoSites) -> None:
    """The referred backend a calling proxy names (TLV 0xEC, an LMTP referral from that site) is used
    only if it is one of the receiving site's backends: never a way to reach any host at all."""
    user = USERS[1]
    await two_sites.home(user, "DC2")
    dc2 = await two_sites.geodb.site_get_by_name("DC2")
    assert dc2 is not None and dc2.load_balancer
    [backend] = await two_sites.geodb.backend_list(dc2.id)
    hops = two_sites.sites["DC1"].proxy.hops

    async def hop_to_dc2(referred: str) -> Established | HopFailed:
        target = HopTarget(user=user, protocol="lmtp", session_id=f"referred-{referred}", client=("127.0.0.1", 1),
                           local=("127.0.0.1", 2), client_tls=False, via_sites=(str(two_sites.ids["DC1"]),),
                           referred=referred)
        return await hops.connect(dc2.load_balancer, target)
    refused = await hop_to_dc2("127.0.0.99")
    assert isinstance(refused, HopFailed) and "not an online backend of this site" in refused.text, refused
    handed = await hop_to_dc2(backend.host)
    assert isinstance(handed, Established), handed
    handed.link.close()
