"""The proxy's cache of its site's pre-login capabilities: defaults until an answer, the merge of
the backends that answered, the settings on top, and one log line per disagreement."""

from __future__ import annotations

import logging

import pytest

from palomar.protocols.prelogin_caps import FALLBACK, BackendCaps, CapabilitySettings
from palomar.proxy.capabilities import SiteCapabilities

A = BackendCaps(("IMAP4rev1", "XA", "XBOTH"), ("8BITMIME", "SIZE 100"), "fileinto body", "mailto")
B = BackendCaps(("IMAP4rev1", "XBOTH"), ("8BITMIME", "SIZE 50"), "fileinto", "mailto")
DISAGREE = "backends disagree"


def test_defaults_until_a_backend_answers_then_its_lists() -> None:
    site = SiteCapabilities()
    assert site.offered == FALLBACK
    site.learnt("be1", A)
    assert site.offered == A and site.knows("be1")


def test_settings_apply_to_the_defaults_and_to_what_is_learnt() -> None:
    site = SiteCapabilities(CapabilitySettings(imap_capability="+XOWN"))
    assert "XOWN" in site.offered.imap and "IDLE" in site.offered.imap
    site.learnt("be1", B)
    assert site.offered.imap == ("IMAP4rev1", "XBOTH", "XOWN")


def test_disagreement_offers_the_intersection_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "palomar.proxy.capabilities")
    site = SiteCapabilities()
    site.learnt("be1", A)
    site.learnt("be2", B)
    site.learnt("be2", B)  # asked again, same answer
    site.forget("be2")
    site.learnt("be2", B)  # back after a failed probe, same answer
    assert site.offered == BackendCaps(("IMAP4rev1", "XBOTH"), ("8BITMIME", "SIZE 50"), "fileinto", "mailto")
    warnings = [r.getMessage() for r in caplog.records if DISAGREE in r.getMessage()]
    assert len(warnings) == 1
    assert "be1 also has XA SIZE 100 sieve:body" in warnings[0]


def test_a_new_disagreement_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    site = SiteCapabilities()
    site.learnt("be1", A)
    site.learnt("be2", B)
    site.learnt("be2", BackendCaps(("IMAP4rev1",), B.submission, B.sieve, B.notify))
    assert len([r for r in caplog.records if DISAGREE in r.getMessage()]) == 2


def test_forgotten_backends_keep_the_lists_and_departed_ones_leave_the_merge() -> None:
    site = SiteCapabilities()
    site.learnt("be1", A)
    site.learnt("be2", B)
    site.forget("be1")
    site.forget("be2")
    assert site.offered.imap == ("IMAP4rev1", "XBOTH")  # nothing answers: the last lists stay
    site.learnt("be1", A)
    site.learnt("be2", B)
    site.keep_only({"be1"})
    assert site.offered == A and not site.knows("be2")
