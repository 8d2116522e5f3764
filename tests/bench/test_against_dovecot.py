"""The load client and the Dovecot CE comparison proxy against a real Dovecot backend."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from dovecot_proxy import DovecotProxy, Route
from imap_client import (
    Connection,
    Credentials,
    ImapError,
    Target,
    close_idle,
    fetch_times,
    large_message,
    login_loop,
    one_session,
    open_idle,
)
from palomar.devcluster.dovecot import DovecotInstance
from palomar.devcluster.net import free_port
from palomar.devcluster.procs import is_running, snapshot_tree

USERS = [Credentials(f"bench{i}@example.test", f"secret{i}") for i in range(1, 4)]


def master_target(backend: DovecotInstance) -> Target:
    p = backend.params
    return Target("direct", p.listen, p.imap_port, p.master_user, p.master_password)


async def test_master_session_and_login_loop(backend: DovecotInstance) -> None:
    session_s, login_s = await one_session(master_target(backend), USERS[0])
    assert 0 < login_s < session_s
    result = await login_loop(master_target(backend), USERS, concurrency=3, duration=30, max_sessions=9)
    assert (result.sessions, result.errors) == (9, 0)
    assert len(result.session_ms) == len(result.login_ms) == 9


async def test_refused_login_is_an_error_not_a_hang(backend: DovecotInstance) -> None:
    p = backend.params
    wrong = Target("direct", p.listen, p.imap_port, p.master_user, "not-the-master-password")
    with pytest.raises(ImapError, match="NO"):
        await one_session(wrong, USERS[0])
    result = await login_loop(wrong, USERS, concurrency=1, duration=30, max_sessions=1)
    assert (result.sessions, result.errors) == (0, 1)
    assert "NO" in result.first_errors[0]


async def test_append_then_fetch_returns_the_whole_message(backend: DovecotInstance) -> None:
    message = large_message(2 * 1024 * 1024)
    target = master_target(backend)
    conn = await Connection.open(target)
    await conn.login(target, USERS[1])
    await conn.command(b'CREATE "Big"')
    await conn.append("Big", message)
    await conn.logout()
    size, times = await fetch_times(target, USERS[1], "Big", 2)
    assert size == len(message)
    assert len(times) == 2 and all(t > 0 for t in times)


async def test_idle_sessions_are_held_and_released(backend: DovecotInstance) -> None:
    hold = await open_idle(master_target(backend), USERS, 6, concurrency=3)
    assert (len(hold.sessions), hold.errors) == (6, 0)
    assert await close_idle(hold) == 6


async def test_dovecot_proxy_checks_the_password_and_logs_in_as_master(backend: DovecotInstance) -> None:
    p = backend.params
    root = Path(tempfile.mkdtemp(prefix="palomar-bench-proxy-"))
    root.chmod(0o755)
    routes = [Route(u.user, u.password, p.listen, p.imap_port, p.master_user, p.master_password) for u in USERS]
    proxy = DovecotProxy(root, "127.0.0.20", free_port("127.0.0.20"), routes)
    try:
        await asyncio.to_thread(proxy.start)
        target = Target("dovecot proxy", proxy.listen, proxy.port)
        _, login_s = await one_session(target, USERS[2])
        assert login_s > 0
        with pytest.raises(ImapError, match="NO"):
            await one_session(target, Credentials(USERS[2].user, "wrong"))
        tree = snapshot_tree(proxy.pid)
        assert len(tree) > 1  # master plus its auth, login, ... processes
    finally:
        proxy.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert not [proc for proc in tree if is_running(proc)]
    assert "pass=" not in repr(routes[0]) and p.master_password not in repr(routes[0])
