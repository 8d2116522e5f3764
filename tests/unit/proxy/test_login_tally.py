"""Dovecot's login_aborted reason from what a connection's logins came to (table)."""

from __future__ import annotations

import pytest

from palomar.proxy.login import AuthFailed, LoginTally, NoLogin, TempFailed


@pytest.mark.parametrize(("outcomes", "reason"), [
    ([], "no_auth_attempts"),
    ([AuthFailed()], "auth_failed"),
    ([AuthFailed(), NoLogin("Login disabled.")], "login_disabled"),
    ([TempFailed("proxy_dest_connect_failed", "x")], "proxy_dest_connect_failed"),
    ([TempFailed("temp_fail", "x")], "auth_temp_failed"),
    ([TempFailed("proxy_dest_unavailable", "x"), AuthFailed()], "auth_failed"),  # the last one counts
])
def test_aborted_reason(outcomes: list, reason: str) -> None:
    tally = LoginTally()
    for outcome in outcomes:
        tally.record(outcome)
    assert tally.aborted_reason() == reason
