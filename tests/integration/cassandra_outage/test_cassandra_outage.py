"""GeoDB outages on a real three-node, two-datacenter Cassandra (conftest.py, netns.py): a dc1 node
killed, the link between the datacenters cut, every dc1 node killed, and the way back.

Real clients log in through each site's proxy and backend to a real Dovecot. Each test records its
figures (login success per kind of user, answer times of the temporary failures, recovery times) in
build/cassandra-outage/figures.json; docs/design/geodb-outage.md quotes them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
from cassandra_outage.conftest import DC1_NODES, DC2_NODE, KEYSPACE, REPO, Outage, Site
from netns_tools import wait_for
from test_store_failures import LOGINS

from palomar.cluster.model import Tag
from palomar.geodb.cassandra_engine import CassandraGeoEngine
from palomar.geodb.engine import GeoDBError
from palomar.geodb.repository import GeoDB

pytestmark = pytest.mark.cassandra_outage

FIGURES = REPO / "build" / "cassandra-outage" / "figures.json"
TEMPORARY = tuple(failure for _, failure in LOGINS.values())
BOUND = 3 * 2.0 + 2.0
"""Two or three GeoDB reads per login, each within `cluster_geodb_timeout` (2 s), plus the login."""
KNOWN = 4
"""Users 1..KNOWN of each site log in before the first outage: the "known" (cached) users."""

figures: dict[str, dict[str, object]] = {}
_fresh: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def record_figures() -> Iterator[None]:
    yield
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=2) + "\n")


def fresh(site: Site) -> str:
    """A user of `site` that nobody has logged in yet."""
    _fresh[site.name] = n = _fresh.get(site.name, KNOWN) + 1
    return site.users[n - 1]


def attempt(site: Site, user: str, protocol: str = "imap") -> tuple[str, float]:
    """The login's answer ("OK", the failure text, or the exception of a dropped connection) and its time."""
    started = time.monotonic()
    try:
        answer = LOGINS[protocol][0](site.listeners[protocol], user)
    except Exception as exc:  # a dropped connection or a client timeout: recorded, then asserted on
        answer = f"{type(exc).__name__}: {exc}"
    return answer, time.monotonic() - started


async def logins(site: Site, users: list[str], protocols: tuple[str, ...] = tuple(LOGINS)) -> list[tuple[str, float]]:
    return [await asyncio.to_thread(attempt, site, user, protocol) for user in users for protocol in protocols]


def summary(results: list[tuple[str, float]]) -> dict[str, object]:
    ok = [t for answer, t in results if answer == "OK"]
    failed = [t for answer, t in results if answer != "OK"]
    return {"logins": len(results), "ok": len(ok), "success_rate": round(len(ok) / len(results), 3),
            "max_ok_seconds": round(max(ok), 3) if ok else None,
            "max_failure_seconds": round(max(failed), 3) if failed else None}


def assert_clean(results: list[tuple[str, float]]) -> None:
    """Every answer is OK or the protocol's temporary failure, within the bound: no dropped connection."""
    for answer, seconds in results:
        assert answer == "OK" or any(t in answer for t in TEMPORARY), answer
        assert seconds < BOUND, (answer, seconds)


def known(site: Site) -> list[str]:
    return site.users[:KNOWN]


async def first_new_login(site: Site) -> tuple[float, str]:
    """Seconds until a user nobody has logged in yet logs in at `site` (the GeoDB writes work again)."""
    user = fresh(site)
    seconds = await asyncio.to_thread(wait_for, lambda: attempt(site, user)[0] == "OK", 60,
                                      f"a new user to log in at site {site.name}")
    return seconds, user


async def restart_nodes(outage: Outage) -> tuple[float, float, str]:
    """Start the nodes that are down: (seconds until they are UP, then until a new dc1 user logs in, that user)."""
    started = time.monotonic()
    outage.nodes.start()
    back = time.monotonic() - started
    recovery, user = await first_new_login(outage.dc1)
    return back, recovery, user


async def eventually(read: Callable[[], Awaitable[object]], timeout: float, what: str) -> float:
    """Poll `read` until it returns something other than None; the seconds it took."""
    started = time.monotonic()
    while await read() is None:
        assert time.monotonic() - started < timeout, f"timed out after {timeout:.0f}s waiting for {what}"
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def engine_for(hosts: str, local_dc: str) -> GeoDB:
    engine = CassandraGeoEngine(hosts, keyspace=KEYSPACE, local_dc=local_dc, request_timeout=10)
    await engine.open()
    return GeoDB(engine)


async def test_every_site_serves_before_any_outage(outage: Outage) -> None:
    figures["baseline"] = {}
    for site in (outage.dc1, outage.dc2):
        results = await logins(site, known(site))
        figures["baseline"][f"{site.name} known users"] = summary(results)
        assert all(answer == "OK" for answer, _ in results), results


async def test_one_dc1_node_down_keeps_logins_working(outage: Outage) -> None:
    outage.nodes.kill(2)
    dc1_known = await logins(outage.dc1, known(outage.dc1))
    dc1_new = await logins(outage.dc1, [fresh(outage.dc1) for _ in range(3)], ("imap",))
    dc2_new = await logins(outage.dc2, [fresh(outage.dc2)], ("imap",))
    # A conditional write at LOCAL_SERIAL needs both dc1 replicas: a GeoDBError, not a driver exception
    # (WriteTimeout while node 1 has not noticed yet, Unavailable once it has).
    geodb = await engine_for(DC1_NODES[0], "dc1")
    try:
        with pytest.raises(GeoDBError, match="WriteTimeout|Unavailable") as lwt:
            await geodb.tag_create(Tag(id=uuid.uuid4(), name="probe"))
    finally:
        await geodb.close()
    back, recovery, _ = await restart_nodes(outage)
    figures["one dc1 node killed"] = {
        "dc1 known users": summary(dc1_known), "dc1 new users": summary(dc1_new),
        "dc2 new users": summary(dc2_new), "node restart seconds": round(back, 1),
        "dc1 conditional write": str(lwt.value)[:160],
        "new-user login after restart seconds": round(recovery, 1)}
    assert all(answer == "OK" for answer, _ in dc1_known + dc2_new), dc1_known + dc2_new
    assert_clean(dc1_new)


async def test_a_frozen_dc1_node_costs_at_most_the_bound_and_known_users_keep_logging_in(outage: Outage) -> None:
    outage.nodes.signal(1, signal.SIGSTOP)  # a node that hangs (GC pause, stuck disk): no reset, no answer
    try:
        dc1_known = await logins(outage.dc1, known(outage.dc1))
        dc1_new = await logins(outage.dc1, [fresh(outage.dc1) for _ in range(3)], ("imap",))
    finally:
        outage.nodes.signal(1, signal.SIGCONT)
    recovery, _ = await first_new_login(outage.dc1)
    figures["one dc1 node frozen (SIGSTOP)"] = {
        "dc1 known users": summary(dc1_known), "dc1 new users": summary(dc1_new),
        "new-user login after SIGCONT seconds": round(recovery, 1)}
    assert all(answer == "OK" for answer, _ in dc1_known), dc1_known
    assert_clean(dc1_new)


async def test_a_cut_between_the_datacenters_leaves_each_site_serving_its_users(outage: Outage) -> None:
    outage.net.link_down(outage.net.dc_link)
    try:
        dc1_known, dc2_known = await logins(outage.dc1, known(outage.dc1)), await logins(outage.dc2, known(outage.dc2))
        new1, new2 = fresh(outage.dc1), fresh(outage.dc2)
        dc1_new, dc2_new = await logins(outage.dc1, [new1]), await logins(outage.dc2, [new2])
    finally:
        outage.net.link_up(outage.net.dc_link)
    healed = time.monotonic()
    figures["datacenters cut apart"] = {
        "dc1 known users": summary(dc1_known), "dc2 known users": summary(dc2_known),
        "dc1 new users": summary(dc1_new), "dc2 new users": summary(dc2_new)}
    assert all(answer == "OK" for answer, _ in dc1_known + dc2_known + dc1_new + dc2_new)
    # Once the link is back, each datacenter gets the other's placements (hints).
    dc1_view, dc2_view = await engine_for(DC1_NODES[0], "dc1"), await engine_for(DC2_NODE, "dc2")
    try:
        await eventually(lambda: dc1_view.user_get(new2), 60, "dc2's placement to reach dc1")
        await eventually(lambda: dc2_view.user_get(new1), 60, "dc1's placement to reach dc2")
    finally:
        await dc1_view.close()
        await dc2_view.close()
    figures["datacenters cut apart"]["converged after the link returned seconds"] = round(
        time.monotonic() - healed, 1)


async def test_all_dc1_nodes_down_serves_known_users_and_recovers_without_an_admin(outage: Outage) -> None:
    outage.nodes.kill(1)
    outage.nodes.kill(2)
    dc1_new = await logins(outage.dc1, [fresh(outage.dc1) for _ in range(3)])
    dc1_known = await logins(outage.dc1, known(outage.dc1))
    dc2_user = fresh(outage.dc2)
    dc2_new = await logins(outage.dc2, [dc2_user], ("imap",))
    figures["all dc1 nodes killed"] = {
        "dc1 known users": summary(dc1_known), "dc1 new users": summary(dc1_new),
        "dc2 new users": summary(dc2_new)}
    assert all(answer == "OK" for answer, _ in dc1_known + dc2_new), dc1_known + dc2_new
    assert not any(answer == "OK" for answer, _ in dc1_new)
    assert_clean(dc1_new)
    log = outage.dc1.log_text()
    assert "GeoDB unavailable" in log and "Traceback" not in log

    back, recovery, user = await restart_nodes(outage)
    assert all(answer == "OK" for answer, _ in await logins(outage.dc1, [*known(outage.dc1), user]))
    assert "GeoDB is answering again" in outage.dc1.log_text()
    geodb = await engine_for(DC1_NODES[0], "dc1")
    try:  # dc2's placement during the outage reached dc1 (hints)
        converge = await eventually(lambda: geodb.user_get(dc2_user), 60, "dc2's writes to reach dc1")
    finally:
        await geodb.close()
    figures["all dc1 nodes killed"].update({
        "nodes restart seconds": round(back, 1),
        "new-user login after restart seconds": round(recovery, 1),
        "dc2 writes visible in dc1 after restart seconds": round(converge, 1)})
