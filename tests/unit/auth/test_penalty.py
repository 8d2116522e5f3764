"""The escalating auth penalty as a pure rule: records, events and a test clock."""

from __future__ import annotations

import pytest

from palomar.auth.penalty import (
    AuthPenalty,
    PenaltyPolicy,
    PenaltyRecord,
    PenaltyTable,
    current_level,
    on_attempt,
    on_failure,
    source_key,
)

POLICY = PenaltyPolicy(max_delay=15.0)


@pytest.mark.parametrize(("level", "delay"), [(0, 0.0), (1, 4.0), (2, 8.0), (3, 15.0), (4, 15.0)])
def test_delay_per_level_is_dovecots(level: int, delay: float) -> None:
    """auth_penalty_to_secs: 2 * 2^level, at most AUTH_PENALTY_MAX_SECS."""
    assert POLICY.delay(level) == delay


@pytest.mark.parametrize(("level", "elapsed", "left"), [
    (4, 14.9, 4), (4, 15.0, 0), (2, 14.0, 2), (2, 15.0, 0), (1, 100.0, 0),
    (3, -50.0, 3),  # the clock went backwards: nothing decays
])
def test_level_decays_only_after_the_longest_delay(level: int, elapsed: float, left: int) -> None:
    record = PenaltyRecord(level=level, last_penalty=100.0)
    assert current_level(record, 100.0 + elapsed, POLICY) == left


def test_new_wrong_passwords_escalate_and_the_same_one_does_not() -> None:
    record = PenaltyRecord()
    levels = []
    for now, checksum in [(0, b"a"), (1, b"b"), (2, b"b"), (3, b"a"), (4, b"c"), (5, b"d"), (6, b"e")]:
        record = on_failure(record, checksum, now, POLICY)
        levels.append(record.level)
    assert levels == [1, 2, 2, 2, 3, 4, 4]


def test_a_repeated_password_does_not_renew_the_level() -> None:
    """Dovecot keeps last_penalty for a known checksum, so a misconfigured client decays normally."""
    record = on_failure(PenaltyRecord(), b"a", 0.0, POLICY)
    record = on_failure(record, b"a", 10.0, POLICY)
    assert record.last_penalty == 0.0
    assert current_level(record, 15.0, POLICY) == 0


def test_attempts_of_one_source_are_serialised() -> None:
    """Three parallel attempts at level 2 are checked 8, 16 and 24 seconds later, not all after 8."""
    record = PenaltyRecord(level=2, last_penalty=0.0)
    waits = []
    for _ in range(3):
        record, wait = on_attempt(record, 1.0, POLICY, serialise=True)
        waits.append(wait)
    assert waits == [8.0, 16.0, 24.0]
    unserialised = [on_attempt(PenaltyRecord(level=2), 1.0, POLICY, serialise=False)[1] for _ in range(3)]
    assert unserialised == [8.0, 8.0, 8.0]


def test_the_wait_itself_does_not_let_the_level_decay() -> None:
    """A level-3 source waits 15 s; failing then still rises to 4 (Dovecot passes the looked-up level)."""
    record = PenaltyRecord(level=3, last_penalty=0.0)
    assert on_failure(record, b"x", 16.0, POLICY).level == 1  # decayed, had nobody waited
    assert on_failure(record, b"x", 16.0, POLICY, seen=3).level == 4


def test_no_penalty_no_wait() -> None:
    record = PenaltyRecord()
    assert on_attempt(record, 5.0, POLICY, serialise=True) == (record, 0.0)


@pytest.mark.parametrize(("address", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2::5", "2001:db8:1::"),
    ("2001:db8:1:ffff::9", "2001:db8:1::"),
])
def test_source_key_masks_ipv6_to_48_bits(address: str, key: str) -> None:
    assert source_key(address) == key


def test_table_is_bounded_whatever_the_number_of_sources() -> None:
    table = PenaltyTable(POLICY, max_entries=1000)
    for i in range(50_000):
        table.put(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", PenaltyRecord(level=1, touched=0.0))
    assert len(table) == 1000
    assert table.get("10.0.0.0", 0.0) == PenaltyRecord(touched=0.0)  # the oldest went first
    assert table.get("10.0.195.79", 0.0).level == 1  # the newest (i = 49,999) stays


def test_table_forgets_expired_records() -> None:
    table = PenaltyTable(POLICY, max_entries=10)
    table.put("192.0.2.1", PenaltyRecord(level=4, last_penalty=0.0, touched=0.0))
    assert table.get("192.0.2.1", POLICY.expire - 1).level == 4
    table.get("192.0.2.2", POLICY.expire)
    assert len(table) == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0


def _guess(penalty: AuthPenalty, clock: Clock, address: str, user: str, password: str) -> float:
    """One wrong login: wait as told, then fail. Returns the wait."""
    verdict = penalty.before_check(address, user, clock.now)
    clock.now += verdict.wait
    penalty.failed(verdict, address, user, password, clock.now)
    return verdict.wait


def test_a_guessing_source_slows_down_and_another_does_not() -> None:
    penalty = AuthPenalty(POLICY, max_entries=100, per_user=False)
    clock = Clock()
    waits = [_guess(penalty, clock, "192.0.2.1", f"user{i}", f"guess{i}") for i in range(6)]
    assert waits == [0.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert penalty.before_check("192.0.2.2", "user0", clock.now).wait == 0.0
    penalty.succeeded("192.0.2.1", "user0")
    assert penalty.before_check("192.0.2.1", "user0", clock.now).wait == 0.0


def test_per_user_penalty_slows_many_sources_guessing_one_account() -> None:
    clock = Clock()
    by_user = AuthPenalty(POLICY, max_entries=100, per_user=True)
    waits = [_guess(by_user, clock, f"192.0.2.{i}", "victim", f"guess{i}") for i in range(5)]
    assert waits == [0.0, 4.0, 8.0, 15.0, 15.0]
    assert by_user.before_check("192.0.2.200", "someone-else", clock.now).wait == 0.0
    by_address = AuthPenalty(POLICY, max_entries=100, per_user=False)
    assert [_guess(by_address, clock, f"192.0.2.{i}", "victim", f"guess{i}") for i in range(5)] == [0.0] * 5


def test_max_delay_zero_turns_the_penalty_off() -> None:
    penalty = AuthPenalty(PenaltyPolicy(0.0), max_entries=100, per_user=True)
    clock = Clock()
    assert [_guess(penalty, clock, "192.0.2.1", "u", f"g{i}") for i in range(5)] == [0.0] * 5
    assert len(penalty.sources) == 0


def test_checksums_are_keyed_per_process() -> None:
    one, two = (AuthPenalty(POLICY, max_entries=1, per_user=False) for _ in range(2))
    assert one.checksum("u", "pw") == one.checksum("u", "pw") != one.checksum("u", "pw2")
    assert one.checksum("u", "pw") != two.checksum("u", "pw")
