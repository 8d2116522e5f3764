"""`cluster user access`, the proxy's router and the backend's ownership check agree on every row
of the site table (docs/design/routing.md), over one real SQLite GeoDB per row."""

from __future__ import annotations

import time
from pathlib import Path
from uuid import UUID

import pytest

from palomar.backend.service import BackendState
from palomar.cli.cluster_user_access import access_records
from palomar.cluster.model import Backend, Group, Site
from palomar.cluster.ownership import NotMine, Own
from palomar.dovecot_login import DovecotEndpoint
from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB
from palomar.localdb.store import LocalDB
from palomar.proxy.router import Router
from unit.cluster.site_table import GROUP, SITE_IDS, Scenario, site_table

ROWS = site_table()


def backend_of(site: str) -> Backend:
    return Backend(id=UUID(int=SITE_IDS[site].int + 1), site_id=SITE_IDS[site],
                   host=f"be-{site.lower()}.test", status="online")


async def load(db: GeoDB, row: Scenario) -> None:
    for site in row.sites:
        assert await db.site_add(Site(site.id, site.name, load_balancer=f"lb-{site.name.lower()}.test"))
        if site.status != "online":
            await db.site_set_status(site.id, site.status)
        if site.force_move is not None:
            await db.site_force_move_set(site.id, site.force_move)
        if site.recover_id is not None and site.recover_percentage is not None:
            await db.site_recover_set(site.id, site.recover_id, site.recover_percentage)
        backend = backend_of(site.name)
        await db.backend_add(backend)
        await db.backend_set_status(site.id, backend.id, "online", None)
        await db.group_create_if_absent(Group(site.id, GROUP, backend_id=backend.id))
    for dest in row.unreachable:
        await db.reachability_set(SITE_IDS["DC1"], dest, False)
    await db.group_site_put(row.group_site)
    await db.user_put(row.user.username, group_name=GROUP, preferred_site_id=row.user.preferred_site_id)


@pytest.mark.parametrize("row", ROWS, ids=[r.line for r in ROWS])
async def test_access_proxy_and_backend_agree(row: Scenario, tmp_path: Path) -> None:
    engine = open_engine("sqlite", path=str(tmp_path / "geodb.sqlite"))
    await engine.open()
    db = GeoDB(engine)
    cache = LocalDB(str(tmp_path / "cache.sqlite"))
    localdb = LocalDB(str(tmp_path / "backend.sqlite"))
    try:
        await load(db, row)
        [record] = await access_records(db, [row.user.username], local_site="DC1", group_count=4, now=time.time())
        router = Router(db, cache, site_name="DC1", group_count=4)
        routed = await router.route(row.user.username)
        backend = BackendState(geodb=db, localdb=localdb, name="be-dc1.test", site_name="DC1", secret=b"s",
                               dovecot=DovecotEndpoint("127.0.0.1", {}, "master", "pw"), group_count=4)
        await backend.register()
        owns, _ = await backend.ownership(row.user.username)

        if row.served_in is None:
            assert routed.host is None and routed.site is None
            assert record["error"] and record["backend"] is None
            assert isinstance(owns, NotMine)
            return
        first_hop = record["sites"][1] if len(record["sites"]) > 1 else "DC1"
        assert first_hop == row.served_in
        if row.served_in == "DC1":
            assert (routed.host, routed.site) == ("be-dc1.test", None)
            assert record["backend"] == "be-dc1.test" and record["sites"] == ["DC1"]
            assert isinstance(owns, Own), owns
        else:
            assert routed.host is None and routed.site is not None and routed.site.name == row.served_in
            assert record["backend"] == f"be-{record['site'].lower()}.test"
            assert isinstance(owns, NotMine) and row.served_in in owns.reason
    finally:
        cache.close()
        localdb.close()
        await db.close()
