"""Table tests of the LMTP fan-out rules: reply order, which reply a recipient gets, referrals, metrics."""

from __future__ import annotations

import pytest

from palomar.cluster import lmtp_fanout as fan
from palomar.protocols.smtp_syntax import Reply, ReplyReader


def reply(line: str) -> Reply:
    reader = ReplyReader()
    reader.feed(line.encode() + b"\r\n")
    parsed = reader.next_reply()
    assert parsed is not None
    return parsed


# --------------------------------------------------------------------------- referrals


def test_referral_reply_round_trips_and_is_temporary() -> None:
    text = fan.referral_reply("127.0.0.3")
    assert text == "451 4.7.0 palomar-referral 127.0.0.3"
    assert fan.parse_referral(reply(text)) == "127.0.0.3"


@pytest.mark.parametrize("line", [
    "451 4.7.0 something else",
    "451 4.7.0 palomar-referral",
    "451 4.7.0 palomar-referral a b",
    "450 4.7.0 palomar-referral host",
    "451 4.4.0 palomar-referral host",
    "550 5.7.0 palomar-referral host",
    "250 2.1.5 OK",
])
def test_other_replies_are_not_referrals(line: str) -> None:
    assert fan.parse_referral(reply(line)) is None


def test_referral_host_must_be_one_word() -> None:
    with pytest.raises(ValueError):
        fan.referral_reply("two words")
    with pytest.raises(ValueError):
        fan.referral_reply("")


@pytest.mark.parametrize(("visited", "target", "expected"), [
    (["a"], "b", fan.Follow("b")),
    (["a", "b"], "c", fan.Follow("c")),
    (["a", "b", "c"], "d", fan.Follow("d")),
    (["a", "b", "c", "d"], "e", fan.GiveUp("too many referrals")),
    (["a"], "a", fan.GiveUp("referral loop via a")),
    (["a", "b"], "a", fan.GiveUp("referral loop via a")),
])
def test_follow_referral_at_most_three_never_a_host_twice(visited, target, expected) -> None:
    assert fan.follow_referral(visited, target) == expected


# --------------------------------------------------------------------------- reply texts


@pytest.mark.parametrize(("backend", "expected"), [
    ("250 2.1.5 OK", "250 2.1.5 OK"),
    ("250 OK", "250 2.1.0 OK"),
    ("550 5.1.1 <renamed@x> User doesn't exist: renamed@x", "550 5.1.1 <orig@x> User doesn't exist: renamed@x"),
    ("452 4.2.2 Mailbox full", "452 4.2.2 <orig@x> Mailbox full"),
    ("451 Try later", "451 4.0.0 <orig@x> Try later"),
])
def test_rcpt_reply_keeps_the_code_and_names_the_mta_address(backend: str, expected: str) -> None:
    assert fan.rcpt_reply("orig@x", reply(backend)) == expected


@pytest.mark.parametrize(("backend", "expected"), [
    ("250 2.0.0 <renamed@x> AbCd Saved", "250 2.0.0 <orig@x> AbCd Saved"),
    ("250 Saved", "250 2.0.0 <orig@x> Saved"),
    ("552 5.2.2 <renamed@x> Quota exceeded", "552 5.2.2 <orig@x> Quota exceeded"),
    ("451 4.3.0 <renamed@x> Temporary internal error", "451 4.3.0 <orig@x> Temporary internal error"),
    ("354 OK", "451 4.4.0 <orig@x> Proxy failed (bad reply: 354)"),
])
def test_delivery_reply_rewrites_the_address_prefix(backend: str, expected: str) -> None:
    assert fan.delivery_reply("orig@x", reply(backend)) == expected


def test_fixed_refusals_follow_dovecot_wording() -> None:
    assert fan.unknown_user("a@x") == "550 5.1.1 <a@x> User doesn't exist: a@x"
    assert fan.lookup_failed("a@x") == "451 4.3.0 <a@x> Temporary user lookup failure"
    assert fan.proxy_failed("a@x", "connection\n lost") == "451 4.4.0 <a@x> Proxy failed (connection lost)"


# --------------------------------------------------------------------------- the transaction


def two_backend_fanout() -> fan.Fanout:
    """a1, b1, a2, b2, a3: recipients interleaved over backends A and B."""
    f = fan.Fanout()
    for address, host in [("a1@x", "A"), ("b1@x", "B"), ("a2@x", "A"), ("b2@x", "B"), ("a3@x", "A")]:
        f.accept(address, address, host)
    return f


def test_hosts_and_recipients_keep_first_use_and_rcpt_order() -> None:
    f = two_backend_fanout()
    assert f.hosts() == ["A", "B"]
    assert [r.address for r in f.recipients_of("A")] == ["a1@x", "a2@x", "a3@x"]
    assert [r.address for r in f.recipients_of("B")] == ["b1@x", "b2@x"]


def ok(address: str) -> Reply:
    return reply(f"250 2.0.0 <{address}> id Saved")


CASES = {
    "both deliver": (
        {"A": [ok("a1@x"), ok("a2@x"), ok("a3@x")], "B": [ok("b1@x"), ok("b2@x")]},
        ["250 a1", "250 b1", "250 a2", "250 b2", "250 a3"],
    ),
    "B failed before DATA": (
        {"A": [ok("a1@x"), ok("a2@x"), ok("a3@x")], "B": fan.BackendFailed("connect")},
        ["250 a1", "451 b1", "250 a2", "451 b2", "250 a3"],
    ),
    "A vanished after one reply": (
        {"A": [ok("a1@x")], "B": [ok("b1@x"), ok("b2@x")]},
        ["250 a1", "250 b1", "451 a2", "250 b2", "451 a3"],
    ),
    "B missing entirely": (
        {"A": [ok("a1@x"), ok("a2@x"), ok("a3@x")]},
        ["250 a1", "451 b1", "250 a2", "451 b2", "250 a3"],
    ),
    "backend 5xx and 4xx pass through": (
        {"A": [reply("552 5.2.2 <a1@x> Quota"), ok("a2@x"), reply("452 4.2.2 <a3@x> Full")],
         "B": [ok("b1@x"), reply("554 5.6.0 <b2@x> Bad")]},
        ["552 a1", "250 b1", "250 a2", "554 b2", "452 a3"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_replies_one_per_recipient_in_rcpt_order(case: str) -> None:
    outcomes, expected = CASES[case]
    replies = two_backend_fanout().replies(outcomes)
    assert [f"{r[:3]} {r.split('<', 1)[1].split('@', 1)[0]}" for r in replies] == expected


def test_failed_backend_gives_4_4_0_with_its_detail() -> None:
    replies = two_backend_fanout().replies({"A": [ok("a1@x")] * 3, "B": fan.BackendFailed("connection lost")})
    assert replies[1] == "451 4.4.0 <b1@x> Proxy failed (connection lost)"
    assert replies[0] == "250 2.0.0 <a1@x> id Saved"


def test_renamed_recipient_gets_reply_with_its_original_address() -> None:
    f = fan.Fanout()
    f.accept("Alias@x", "real@x", "A")
    assert f.replies({"A": [ok("real@x")]}) == ["250 2.0.0 <Alias@x> id Saved"]


def test_same_recipient_twice_gets_two_replies() -> None:
    f = fan.Fanout()
    f.accept("a@x", "a@x", "A")
    f.accept("a@x", "a@x", "A")
    assert f.replies({"A": [ok("a@x"), reply("451 4.3.0 <a@x> dup")]}) == [
        "250 2.0.0 <a@x> id Saved", "451 4.3.0 <a@x> dup"]


# --------------------------------------------------------------------------- accounting


@pytest.mark.parametrize(("line", "status", "enhanced", "success", "failure"), [
    ("250 2.0.0 <a@x> id Saved", 250, "2.0.0", True, False),
    ("250 Saved", 250, "2.0.0", True, False),
    ("451 4.4.0 <a@x> Proxy failed (connect)", 451, "4.4.0", False, True),
    ("452 4.2.2 <a@x> Full", 452, "4.2.2", False, True),
    ("550 5.1.1 <a@x> User doesn't exist: a@x", 550, "5.1.1", False, False),
    ("552 5.3.4 <a@x> Message too big", 552, "5.3.4", False, False),
    ("554 no enhanced code", 554, "5.0.0", False, False),
    ("421 no enhanced code", 421, "4.0.0", False, True),
])
def test_rcpt_finished_follows_the_seed_metric_filters(line, status, enhanced, success, failure) -> None:
    event = fan.rcpt_finished(line)
    assert (event.status_code, event.enhanced_code, event.success, event.failure) == (
        status, enhanced, success, failure)


def test_aborted_recipient_counts_as_failure_like_dovecot() -> None:
    assert fan.ABORTED.status_code == 9000 and fan.ABORTED.failure and not fan.ABORTED.success
