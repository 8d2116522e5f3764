"""The proxies' failure-threshold rule, from tables of outcome sequences."""

from __future__ import annotations

import pytest

from palomar.cluster.health_proxy import (
    Confirm,
    FailureStreak,
    Keep,
    Offline,
    Outcome,
    ThresholdRule,
    is_destination_failure,
    observe,
)

CONNECT = "proxy_dest_connect_failed"
REMOTE = "proxy_dest_remote_failure"
PROTOCOL = "proxy_dest_protocol_failure"
INTERNAL = "proxy_dest_internal_failure"
AUTH_TEMP = "proxy_dest_auth_temp_failed"
AUTH = "proxy_dest_auth_failed"
REDIRECTED = "proxy_dest_redirected"


def session(at: float, code: str | None = None) -> Outcome:
    return Outcome(at, code)


def probe(at: float, code: str | None = None) -> Outcome:
    return Outcome(at, code, probe=True)


DEFAULT = ThresholdRule()


def run(outcomes: list[Outcome], rule: ThresholdRule = DEFAULT) -> list[str]:
    """The verdict after each outcome, as a short name."""
    streak = FailureStreak()
    names = []
    for outcome in outcomes:
        streak, verdict = observe(streak, outcome, rule)
        names.append(type(verdict).__name__)
    return names


@pytest.mark.parametrize("code, counts", [
    (CONNECT, True), (REMOTE, True), (PROTOCOL, True), (INTERNAL, True),
    (AUTH_TEMP, False), (AUTH, False), (REDIRECTED, False), (None, False), ("temp_fail", False),
])
def test_destination_failures_are_the_seeds_minus_auth(code: str | None, counts: bool) -> None:
    assert is_destination_failure(code) is counts


@pytest.mark.parametrize("outcomes, verdicts", [
    # one reset connection: the confirmation probe succeeds, nothing happens
    ([session(0, REMOTE), probe(0.1)], ["Confirm", "Keep"]),
    # a dead backend: the confirmation probe fails too
    ([session(0, CONNECT), probe(0.05, CONNECT)], ["Confirm", "Offline"]),
    # three in a row before any probe answers
    ([session(0, CONNECT), session(0.1, CONNECT), session(0.2, REMOTE)], ["Confirm", "Confirm", "Offline"]),
    # a success between failures clears the history
    ([session(0, CONNECT), session(1, CONNECT), session(2), session(3, CONNECT), session(4, CONNECT)],
     ["Confirm", "Confirm", "Keep", "Confirm", "Confirm"]),
    # a successful probe clears it as well
    ([session(0, CONNECT), session(1, CONNECT), probe(1.5), session(2, CONNECT)],
     ["Confirm", "Confirm", "Keep", "Confirm"]),
    # failures spread wider than the window never add up
    ([session(0, CONNECT), session(6, CONNECT), session(12, CONNECT), session(18, CONNECT)],
     ["Confirm", "Confirm", "Confirm", "Confirm"]),
    # ... but three within 10 s do, even after older ones expired
    ([session(0, CONNECT), session(11, CONNECT), session(15, CONNECT), session(20.5, CONNECT)],
     ["Confirm", "Confirm", "Confirm", "Offline"]),
    # auth failures, auth temp failures and referrals neither count nor clear
    ([session(0, CONNECT), session(0.1, AUTH_TEMP), session(0.2, AUTH), session(0.3, REDIRECTED),
      session(0.4, CONNECT), session(0.5, CONNECT)],
     ["Confirm", "Keep", "Keep", "Keep", "Confirm", "Offline"]),
    # an LDAP outage on the proxy's side: only auth temp failures, the backend stays
    ([session(t / 10, AUTH_TEMP) for t in range(20)], ["Keep"] * 20),
    # a failed start-up probe alone does not take a backend out
    ([probe(0, CONNECT)], ["Keep"]),
    # ... but it confirms a session failure that follows within the window
    ([probe(0, CONNECT), session(2, REMOTE)], ["Keep", "Offline"]),
    # a probe failure long after the session failure confirms nothing
    ([session(0, REMOTE), probe(10.5, REMOTE)], ["Confirm", "Keep"]),
    # a probe fails with any code (the test user must always log in)
    ([session(0, REMOTE), probe(0.2, AUTH_TEMP)], ["Confirm", "Offline"]),
])
def test_threshold_table(outcomes: list[Outcome], verdicts: list[str]) -> None:
    assert run(outcomes) == verdicts


@pytest.mark.parametrize("failures, window, times, expected", [
    (1, 10, [0], "Offline"),
    (5, 10, [0, 1, 2, 3], "Confirm"),
    (5, 10, [0, 1, 2, 3, 4], "Offline"),
    (3, 2, [0, 1, 2.5], "Confirm"),
    (3, 2, [0, 1, 2], "Offline"),
])
def test_threshold_is_configurable(failures: int, window: float, times: list[float], expected: str) -> None:
    rule = ThresholdRule(failures, window)
    assert run([session(t, CONNECT) for t in times], rule)[-1] == expected


def test_offline_reason_names_the_evidence() -> None:
    streak = FailureStreak()
    for at in (0.0, 0.5):
        streak, _ = observe(streak, session(at, CONNECT), ThresholdRule())
    _, verdict = observe(streak, session(1.0, REMOTE), ThresholdRule())
    assert verdict == Offline(f"3 failures within 10s, last {REMOTE}")
    _, verdict = observe(FailureStreak(), session(0, CONNECT), ThresholdRule())
    assert verdict == Confirm()
    streak, _ = observe(FailureStreak(), session(0, CONNECT), ThresholdRule())
    _, verdict = observe(streak, probe(0.1, REMOTE), ThresholdRule())
    assert isinstance(verdict, Offline) and REMOTE in verdict.reason and CONNECT in verdict.reason
    assert observe(streak, probe(0.1), ThresholdRule()) == (FailureStreak(), Keep())


@pytest.mark.parametrize("failures, window", [(0, 10), (3, 0), (3, -1)])
def test_nonsense_rules_are_refused(failures: int, window: float) -> None:
    with pytest.raises(ValueError):
        ThresholdRule(failures, window)
