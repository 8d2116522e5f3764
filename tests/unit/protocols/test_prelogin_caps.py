"""Pre-login capability lists: what is learnt from a backend, how a site's backends are merged, how
the proxy's settings apply, and what the connection state adds (tables)."""

from __future__ import annotations

import pytest

from palomar.protocols import imap, managesieve, submission
from palomar.protocols.prelogin_caps import (
    FALLBACK,
    BackendCaps,
    CapabilitySettings,
    apply_settings,
    from_backend,
    merge,
    settings_problems,
)

DOVECOT_IMAP = ["IMAP4rev1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE", "LITERAL+", "AUTH=PLAIN", "AUTH=LOGIN"]
DOVECOT_EHLO = ["8BITMIME", "AUTH PLAIN LOGIN", "BURL imap", "CHUNKING", "ENHANCEDSTATUSCODES", "SIZE",
                "PIPELINING", "XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT FORWARD"]
DOVECOT_SIEVE = {"IMPLEMENTATION": "Dovecot (Debian) Pigeonhole", "SIEVE": "fileinto  reject", "NOTIFY": "mailto",
                 "SASL": "PLAIN LOGIN", "VERSION": "1.0", "XCLIENT": None}


def caps(imap_list: str = "IMAP4rev1 IDLE LITERAL+", ehlo: tuple[str, ...] = ("8BITMIME", "SIZE"),
         sieve: str = "fileinto reject", notify: str | None = "mailto") -> BackendCaps:
    return BackendCaps(tuple(imap_list.split()), ehlo, sieve, notify)


def test_what_dovecot_sends_loses_the_proxys_own_entries() -> None:
    learnt = from_backend(DOVECOT_IMAP, DOVECOT_EHLO, DOVECOT_SIEVE)
    assert learnt == BackendCaps(
        ("IMAP4rev1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE", "LITERAL+"),
        ("8BITMIME", "BURL imap", "CHUNKING", "ENHANCEDSTATUSCODES", "SIZE", "PIPELINING"),
        "fileinto reject", "mailto")


def test_dovecot_defaults_give_the_fallback_lists() -> None:
    sieve = dict(DOVECOT_SIEVE, SIEVE=FALLBACK.sieve)
    assert from_backend(DOVECOT_IMAP, DOVECOT_EHLO, sieve) == FALLBACK


@pytest.mark.parametrize(("imap_list", "ehlo", "sieve", "problem"), [
    (["SASL-IR", "STARTTLS", "LOGINDISABLED"], [], {"SIEVE": "x"}, "IMAP4rev1"),
    (DOVECOT_IMAP, [], {"NOTIFY": "mailto"}, "SIEVE"),
    (DOVECOT_IMAP, ['X"Y'], {"SIEVE": "x"}, "quote"),
    (DOVECOT_IMAP, [], {"SIEVE": "a\x00b"}, "control"),
])
def test_unusable_answers_are_refused(imap_list, ehlo, sieve, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        from_backend(imap_list, ehlo, sieve)


@pytest.mark.parametrize(("site", "expected"), [
    ([caps()], caps()),
    ([caps(), caps()], caps()),
    ([caps("IMAP4rev1 XA IDLE LITERAL+"), caps("IMAP4rev1 IDLE xa XB LITERAL+")], caps("IMAP4rev1 XA IDLE LITERAL+")),
    ([caps(ehlo=("8BITMIME", "DSN", "SIZE 100")), caps(ehlo=("SIZE 50", "8BITMIME"))],
     caps(ehlo=("8BITMIME", "SIZE 50"))),
    ([caps(ehlo=("SIZE 100",)), caps(ehlo=("SIZE",))], caps(ehlo=("SIZE 100",))),
    ([caps(ehlo=("SIZE",)), caps(ehlo=("8BITMIME",))], caps(ehlo=())),
    ([caps(sieve="a b c"), caps(sieve="c a")], caps(sieve="a c")),
    ([caps(notify="mailto xmpp"), caps(notify="mailto")], caps(notify="mailto")),
    ([caps(), caps(notify=None)], caps(notify=None)),
])
def test_a_site_offers_what_all_its_backends_offer(site, expected) -> None:
    assert merge(site) == expected


def test_merging_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        merge([])


@pytest.mark.parametrize(("setting", "expected"), [
    ("", "IMAP4rev1 IDLE LITERAL+"),
    ("+XFOO idle", "IMAP4rev1 IDLE XFOO LITERAL+"),
    ("IMAP4rev1 XONLY", "IMAP4rev1 XONLY LITERAL+"),
])
def test_imap_capability_replaces_or_adds_like_dovecot(setting: str, expected: str) -> None:
    assert apply_settings(caps(), CapabilitySettings(imap_capability=setting)).imap == tuple(expected.split())


@pytest.mark.parametrize(("setting", "expected"), [
    (None, ("BURL imap", "8BITMIME", "DSN", "SIZE 10")),
    ((), ("BURL imap", "SIZE 10")),
    (("vrfy", "8BITMIME"), ("BURL imap", "SIZE 10", "8BITMIME", "VRFY")),
    (("BINARYMIME",), ("BURL imap", "SIZE 10", "BINARYMIME", "CHUNKING")),
])
def test_submission_backend_capabilities_choose_the_backend_dependent_keywords(setting, expected) -> None:
    learnt = caps(ehlo=("BURL imap", "8BITMIME", "DSN", "SIZE 10"))
    assert apply_settings(learnt, CapabilitySettings(submission_backend_capabilities=setting)).submission == expected


def test_sieve_settings_replace_the_learnt_lists() -> None:
    offered = apply_settings(caps(), CapabilitySettings(sieve_capability="vacation  body", notify_capability="xmpp"))
    assert (offered.sieve, offered.notify) == ("vacation body", "xmpp")
    assert apply_settings(caps(), CapabilitySettings()) == caps()


@pytest.mark.parametrize(("settings", "problem"), [
    (CapabilitySettings(imap_capability="+STARTTLS"), "imap_capability: STARTTLS is decided"),
    (CapabilitySettings(imap_capability="IMAP4rev1 AUTH=PLAIN"), "imap_capability: AUTH=PLAIN is decided"),
    (CapabilitySettings(imap_capability="IDLE"), "must contain IMAP4rev1"),
    (CapabilitySettings(submission_backend_capabilities=("PIPELINING",)), "PIPELINING is not one of"),
    (CapabilitySettings(sieve_capability='a"b'), "managesieve_sieve_capability: quotes"),
])
def test_unusable_settings_are_named(settings: CapabilitySettings, problem: str) -> None:
    assert any(problem in p for p in settings_problems(settings))


def test_usable_settings_have_no_problem() -> None:
    assert settings_problems(CapabilitySettings("+XFOO", ("8BITMIME", "DSN"), "fileinto", "mailto")) == []


# --- what the connection adds, per protocol ---------------------------------------------------------

@pytest.mark.parametrize(("starttls", "cleartext", "tail"), [
    (True, True, ["STARTTLS", "AUTH=PLAIN", "AUTH=LOGIN"]),
    (True, False, ["STARTTLS", "LOGINDISABLED"]),
    (False, True, ["AUTH=PLAIN", "AUTH=LOGIN"]),
    (False, False, ["LOGINDISABLED"]),
])
def test_imap_list_by_connection_state(starttls: bool, cleartext: bool, tail: list[str]) -> None:
    base = ("IMAP4rev1", "XLEARNT", "LITERAL+")
    assert imap.prelogin_capabilities(base, offer_starttls=starttls, cleartext_allowed=cleartext) == [*base, *tail]


@pytest.mark.parametrize(("starttls", "cleartext", "trusted", "expected"), [
    (True, True, False, ["8BITMIME", "AUTH PLAIN LOGIN", "DSN", "SIZE 5", "STARTTLS", "PIPELINING", "XLEARNT"]),
    (True, False, False, ["8BITMIME", "DSN", "SIZE 5", "STARTTLS", "PIPELINING", "XLEARNT"]),
    (False, True, True, ["8BITMIME", "AUTH PLAIN LOGIN", "DSN", "SIZE 5", "PIPELINING", submission.XCLIENT_CAPABILITY,
                         "XLEARNT"]),
])
def test_ehlo_by_connection_state_in_dovecots_order(starttls, cleartext, trusted, expected) -> None:
    base = ("XLEARNT", "SIZE 5", "PIPELINING", "DSN", "8BITMIME")
    assert submission.prelogin_ehlo(base, offer_starttls=starttls, cleartext_allowed=cleartext,
                                    trusted=trusted) == expected


@pytest.mark.parametrize(("starttls", "mechanisms", "trusted", "notify", "names"), [
    (True, (), False, "mailto", ["IMPLEMENTATION", "SIEVE", "NOTIFY", "SASL", "STARTTLS", "VERSION"]),
    (False, ("PLAIN", "LOGIN"), True, None, ["IMPLEMENTATION", "SIEVE", "SASL", "VERSION", "XCLIENT"]),
])
def test_sieve_greeting_by_connection_state(starttls, mechanisms, trusted, notify, names) -> None:
    lines = managesieve.prelogin_capabilities("palomar", "fileinto", notify, offer_starttls=starttls,
                                              mechanisms=mechanisms, trusted=trusted)
    assert [name for name, _ in lines] == names
    assert dict(lines)["SASL"] == " ".join(mechanisms) and dict(lines)["SIEVE"] == "fileinto"
