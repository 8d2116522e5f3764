"""The chaos suite's verdicts: what a count of stored copies means given the answers a client got."""

from __future__ import annotations

import pytest

from chaos_rules import (
    ACKED,
    DUPLICATE_AFTER_UNCERTAIN,
    DUPLICATED,
    EXACTLY_ONCE,
    KINDS,
    LOST,
    NEVER_ACCEPTED,
    REFUSED,
    STORED_AFTER_REFUSAL,
    STORED_AFTER_UNCERTAIN,
    UNCERTAIN,
    Message,
    Session,
    Stall,
    Window,
    attribute,
    double_service,
    failure_rates,
    plan,
    stalled,
    strays,
    verdict,
)


@pytest.mark.parametrize(("outcomes", "copies", "expected"), [
    ([ACKED], 1, EXACTLY_ONCE),
    ([ACKED], 0, LOST),
    ([ACKED], 2, DUPLICATED),
    ([REFUSED, ACKED], 1, EXACTLY_ONCE),
    ([REFUSED, ACKED], 2, DUPLICATED),  # a refusal before DATA excuses no copy
    ([UNCERTAIN, ACKED], 2, DUPLICATE_AFTER_UNCERTAIN),  # SMTP's at-least-once window
    ([UNCERTAIN, ACKED], 3, DUPLICATED),
    ([UNCERTAIN, ACKED], 0, LOST),
    ([UNCERTAIN], 1, STORED_AFTER_UNCERTAIN),
    ([UNCERTAIN], 0, "absent-after-uncertain"),
    ([REFUSED], 1, STORED_AFTER_REFUSAL),
    ([REFUSED, REFUSED], 0, NEVER_ACCEPTED),
    ([], 0, NEVER_ACCEPTED),
])
def test_verdicts(outcomes: list[str], copies: int, expected: str) -> None:
    assert verdict(Message("<m@x>", "u", "lmtp", outcomes), copies) == expected


def test_strays_are_copies_nobody_sent() -> None:
    sent = [Message("<a@x>", "u", "lmtp")]
    assert strays(sent, {"<a@x>": 1, "<b@x>": 1, "<c@x>": 0}) == ["<b@x>"]


def test_the_plan_is_a_function_of_the_seed_and_covers_every_kind_each_round() -> None:
    first = plan(7, 2, backends=2, proxies=3)
    assert first == plan(7, 2, backends=2, proxies=3)
    assert first != plan(8, 2, backends=2, proxies=3)
    assert sorted(f.kind for f in first[:len(KINDS)]) == sorted(KINDS)
    assert all(f.hold == 0 for f in first if f.kind.startswith("kill-"))
    assert all(f.hold > 0 for f in first if not f.kind.startswith("kill-"))
    assert {f.target for f in first if f.kind.endswith("-proxy")} <= {0, 1, 2}
    assert {f.target for f in first if f.kind.endswith("-controller")} == {0}


def test_sessions_belong_to_the_last_fault_they_overlapped() -> None:
    windows = [Window("kill-proxy", 10, 20), Window("stop-dovecot", 30, 40)]
    sessions = [Session("imap", 0, 5, True), Session("imap", 15, 35, False), Session("imap", 19, 21, False),
                Session("imap", 20, 30, True)]
    assert [attribute(s, windows) for s in sessions] == ["none", "stop-dovecot", "kill-proxy", "none"]
    assert failure_rates(sessions, windows) == {"none": (0, 2), "stop-dovecot": (1, 1), "kill-proxy": (1, 1)}


def test_double_service_is_a_user_listed_on_two_backends() -> None:
    assert double_service({"b1": {"a", "b"}, "b2": {"b", "c"}, "b3": None}) == {"b"}
    assert double_service({"b1": {"a"}, "b2": None}) == set()


def test_a_listing_on_a_stalled_backend_is_not_service() -> None:
    sample = {"b1": {"a", "b"}, "b2": {"b", "c"}}
    assert double_service(sample, stalled={"b1"}) == set()
    assert double_service(sample, stalled={"b3"}) == {"b"}  # a stall elsewhere excuses nothing
    assert double_service({"b1": {"a"}, "b2": {"a"}, "b3": {"a"}}, stalled={"b1"}) == {"a"}  # two running


@pytest.mark.parametrize(("start", "end", "expected"), [
    (5.0, 6.0, set()),  # before the stall
    (9.0, 10.5, {"b1"}),  # the sample began before and ended during it
    (15.0, 16.0, {"b1"}),  # during
    (24.0, 25.0, {"b1"}),  # resumed 4 s ago: its leftovers may still be listed
    (26.0, 27.0, set()),  # past the settle bound: a listing there is service again
])
def test_stalled_backends_of_a_sample(start: float, end: float, expected: set[str]) -> None:
    stalls = [Stall("b1", 10.0, 20.0), Stall("b2", 100.0)]
    assert stalled(stalls, start, end, settle=5.0) == expected
    assert stalled(stalls, 150.0, 151.0) == {"b2"}  # still stalled
