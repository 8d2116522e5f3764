"""The auth penalty of a proxy with workers is one table (the parent's), asked over real socket pairs;
and a user's penalty is kept under the name `auth_username_format` makes of it."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from palomar.auth.passdb import PassdbChain
from palomar.auth.penalty import AuthPenalty, PenaltyPolicy, Verdict
from palomar.metrics.registry import Registry
from palomar.proxy.hop_client import HopClient
from palomar.proxy.login import AuthFailed, LoginAttempt, perform_login
from palomar.proxy.penalty_link import LocalPenalty, SharedPenalty, serve_worker
from palomar.proxy.state import ProxyMetrics, ProxyState

ATTACKER = "192.0.2.7"


def _table(max_delay: float = 15.0) -> AuthPenalty:
    return AuthPenalty(PenaltyPolicy(max_delay), max_entries=100, per_user=True)


async def _worker(parent: AuthPenalty) -> tuple[SharedPenalty, asyncio.Task, socket.socket]:
    ours, theirs = socket.socketpair()
    served = asyncio.create_task(serve_worker(parent, ours))
    return await SharedPenalty.connect(theirs, _table()), served, ours


async def test_a_failure_seen_by_one_worker_delays_the_next_attempt_on_another() -> None:
    parent = _table()
    (w1, s1, _), (w2, s2, _) = await _worker(parent), await _worker(parent)
    first = await w1.before_check(ATTACKER, "alice")
    assert first.wait == 0
    await w1.failed(first, ATTACKER, "alice", "guess-1")
    second = await w2.before_check(ATTACKER, "bob")  # another worker, another user: the source's level
    assert second.wait > 0 and second.source_level == 1
    await w2.failed(second, ATTACKER, "bob", "guess-2")
    assert (await w1.before_check("198.51.100.1", "bob")).user_level == 1  # bob's level, from worker 2
    s1.cancel()
    s2.cancel()


async def test_the_same_wrong_password_through_two_workers_counts_once() -> None:
    """The workers checksum with the parent's key, so a client retrying one wrong password (a
    misconfigured client, not a guesser) stays at level 1 whichever worker it reaches."""
    parent = _table()
    (w1, s1, _), (w2, s2, _) = await _worker(parent), await _worker(parent)
    await w1.failed(await w1.before_check(ATTACKER, "alice"), ATTACKER, "alice", "same")
    await w2.failed(await w2.before_check(ATTACKER, "alice"), ATTACKER, "alice", "same")
    now = time.monotonic()
    assert parent.sources.get(ATTACKER, now).level == 1
    s1.cancel()
    s2.cancel()


class AskedPenalty(AuthPenalty):
    """The parent's table, telling the test when a question reached it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked = asyncio.Event()

    def before_check(self, address: str, user: str, now: float) -> Verdict:
        self.asked.set()
        return super().before_check(address, user, now)


async def test_a_login_cancelled_while_asking_leaves_the_link_in_step() -> None:
    """A client gone while its login waits for the parent's answer: the next question still gets
    its own answer, not the abandoned one."""
    parent = AskedPenalty(PenaltyPolicy(15.0), max_entries=100, per_user=True)
    worker, served, _ = await _worker(parent)
    await worker.failed(await worker.before_check(ATTACKER, "alice"), ATTACKER, "alice", "guess")
    parent.asked.clear()
    asking = asyncio.create_task(worker.before_check(ATTACKER, "alice"))  # the answer would be: wait
    await parent.asked.wait()  # the parent has the question; the worker has not read the answer
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    fresh = await worker.before_check("198.51.100.9", "bob")
    assert fresh.wait == 0 and fresh.source_level == 0
    served.cancel()


async def test_a_worker_whose_parent_is_gone_keeps_a_table_of_its_own(caplog) -> None:
    parent = _table()
    worker, served, _ = await _worker(parent)
    served.cancel()
    await asyncio.gather(served, return_exceptions=True)  # the parent's end is closed now
    verdict = await worker.before_check(ATTACKER, "alice")
    await worker.failed(verdict, ATTACKER, "alice", "guess")
    assert (await worker.before_check(ATTACKER, "alice")).source_level == 1
    assert any("keeps a table of its own" in r.getMessage() for r in caplog.records)


def _state(tmp_path: Path, username_format: str, penalty: AuthPenalty) -> ProxyState:
    passwd = tmp_path / "users.passwd"
    passwd.write_text("alice:{PLAIN}right::::::\n")
    passdb = PassdbChain.from_settings([SimpleNamespace(name="users", driver="passwd-file",
                                                        args=str(passwd))],
                                       username_format=username_format)
    return ProxyState(passdb=passdb, router=None, hops=HopClient(b"k" * 16, 1, tls=None, connect_timeout=1, answer_timeout=1),
                      metrics=ProxyMetrics(Registry()),
                      site_id=None, auth_failure_delay=0.0, penalty=LocalPenalty(penalty))


@pytest.mark.parametrize(("username_format", "names", "key"), [
    ("%Ln", ("alice@a.test", "ALICE@b.test"), "alice"),  # one account, whatever the domain or case
    ("%Lu", ("Alice@A.test", "alice@a.test"), "alice@a.test"),  # Dovecot's default: case folded
])
async def test_the_user_penalty_is_kept_under_the_formatted_name(tmp_path: Path, username_format: str,
                                                                 names: tuple[str, str], key: str) -> None:
    penalty = _table(max_delay=0.01)  # the rules of levels, without waiting seconds
    state = _state(tmp_path, username_format, penalty)
    for n, (name, address) in enumerate(zip(names, ("192.0.2.1", "192.0.2.2"), strict=True)):
        attempt = LoginAttempt(f"s{n}", "imap", name, f"wrong-{n}", "PLAIN", (address, 1000), ("127.0.0.1", 143),
                               False)
        outcome, _ = await perform_login(state, attempt)
        assert isinstance(outcome, AuthFailed)
    assert penalty.users is not None
    assert penalty.users.get(key, time.monotonic()).level == 2
