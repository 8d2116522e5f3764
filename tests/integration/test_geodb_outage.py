"""A GeoDB outage (issue: keep serving known users): users the proxy and the backend saw recently
keep logging in on every protocol; users nothing is known about get the protocol's temporary
failure at once; the outage is logged when it begins and ends, not per login; service returns
fully when the GeoDB does.

In-process proxy and backend (tests/inprocess_cluster.py) over real loopback sockets, a real SQLite
GeoDB behind the guarded engine the services use (bounded calls, circuit breaker), and a real
Dovecot CE behind the backend.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_store_failures import LOGINS, assert_no_errors, count_subject, lmtp_rcpt

from inprocess_cluster import USERS, InProcessCluster, start_cluster
from palomar.cluster.breaker import Breaker
from palomar.devcluster.dovecot import DovecotInstance
from palomar.geodb.guarded import GuardedEngine
from palomar.geodb.repository import GeoDB

STALE_MAX = 3600


@pytest.fixture
async def cluster(tmp_path: Path, dovecot_backends: dict[str, DovecotInstance]) -> AsyncIterator[InProcessCluster]:
    dovecot = dovecot_backends["backend1"]
    c = await start_cluster(tmp_path / "inprocess", backend_host=dovecot.params.listen, dovecot=dovecot)
    # What `palomar proxy` / `palomar backend` do with the default settings (service_runtime.open_geodb).
    c.proxy.router.geodb = GeoDB(GuardedEngine(c.proxy_engine, call_timeout=2, breaker=Breaker(3, 0.2)))
    c.proxy.router.max_stale = STALE_MAX
    c.proxy.router.cache.stale_keep_secs = STALE_MAX
    c.backend.geodb = GeoDB(GuardedEngine(c.backend_engine, call_timeout=2, breaker=Breaker(3, 0.2)))
    c.backend.stale_max = STALE_MAX
    c.backend.localdb.stale_keep_secs = STALE_MAX
    yield c
    await c.stop()


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "palomar.geodb"]


async def test_known_users_keep_logging_in_and_unknown_ones_get_a_prompt_temporary_failure(
        cluster: InProcessCluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="palomar")
    known, unknown = USERS[0], USERS[1]
    for protocol, (login, _) in LOGINS.items():  # the known user's logins before the outage
        assert await asyncio.to_thread(login, cluster.listeners[protocol], known) == "OK", protocol
    cluster.proxy_engine.failing = cluster.backend_engine.failing = True
    cluster.proxy.router.clock = lambda: time.time() + 600  # ten minutes on: the normal cache is long expired
    for protocol, (login, temp_failure) in LOGINS.items():
        assert await asyncio.to_thread(login, cluster.listeners[protocol], known) == "OK", protocol
        started = time.monotonic()
        assert temp_failure in await asyncio.to_thread(login, cluster.listeners[protocol], unknown), protocol
        assert time.monotonic() - started < 10, "the temporary failure comes within the bound"
    subject = f"during the outage {uuid.uuid4().hex}"
    assert (await asyncio.to_thread(lmtp_rcpt, cluster.listeners["lmtp"], known, subject))[0] == 250
    code, text = await asyncio.to_thread(lmtp_rcpt, cluster.listeners["lmtp"], unknown, None)
    assert (code, text) == (451, f"4.4.3 <{unknown}> Temporary routing failure")
    assert cluster.proxy_engine.failed_calls + cluster.backend_engine.failed_calls >= 2
    lines = outage_lines(caplog)
    assert len(lines) == 2 and all("GeoDB unavailable" in line for line in lines), lines  # once per process

    cluster.proxy_engine.failing = cluster.backend_engine.failing = False
    cluster.proxy.router.clock = time.time
    deadline = time.monotonic() + 10
    while True:  # the breaker's next probe finds the GeoDB back
        result = await asyncio.to_thread(LOGINS["imap"][0], cluster.listeners["imap"], unknown)
        if result == "OK" or time.monotonic() > deadline:
            break
    assert result == "OK"
    for protocol, (login, _) in LOGINS.items():
        assert await asyncio.to_thread(login, cluster.listeners[protocol], unknown) == "OK", protocol
    assert await asyncio.to_thread(count_subject, cluster.listeners["imap"], known, subject) == 1
    assert any("answering again" in line for line in outage_lines(caplog))
    assert_no_errors(caplog)


async def test_a_moving_group_is_not_served_from_stale_state(cluster: InProcessCluster) -> None:
    user = USERS[2]
    imap_login = LOGINS["imap"][0]
    assert await asyncio.to_thread(imap_login, cluster.listeners["imap"], user) == "OK"
    backend = cluster.backend
    assert backend.site_id is not None
    record = await backend.geodb.user_get(user)
    assert record is not None and record.group_name
    await backend.geodb.group_update(backend.site_id, record.group_name, moving=str(uuid.uuid4()))
    assert await asyncio.to_thread(imap_login, cluster.listeners["imap"], user) == "OK"  # remembered: moving
    cluster.proxy_engine.failing = cluster.backend_engine.failing = True
    assert "[UNAVAILABLE]" in await asyncio.to_thread(imap_login, cluster.listeners["imap"], user)


