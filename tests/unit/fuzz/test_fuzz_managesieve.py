"""Fuzzing the ManageSieve login cores (server and backend client) and its response parser."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from palomar.protocols.managesieve import (
    LoggedIn,
    LoginFailed,
    SieveLoginClient,
    SieveSyntaxError,
    parse_response,
)
from unit.fuzz import grammars
from unit.fuzz.drive import same_client_runs
from unit.fuzz.hostile import cuts, nasty

GREETING = (b'"IMPLEMENTATION" "Dovecot Pigeonhole"\r\n"SIEVE" "fileinto"\r\n"SASL" "PLAIN LOGIN"\r\n'
            b'"XCLIENT"\r\n"VERSION" "1.0"\r\nOK "Dovecot ready."\r\n')
REPLIES = st.sampled_from([
    GREETING, b'"SASL" ""\r\n', b'"SASL" "LOGIN"\r\n', b'"SASL" "PLAIN"\r\n', b'"X" {3}\r\nabc\r\n',
    b'"X" {99999999999}\r\n', b'OK\r\n', b'OK "Logged in."\r\n', b'NO "Authentication failed."\r\n',
    b'NO (TRYLATER) "later"\r\n', b'NO (REFERRAL "sieve://h:4190") "go"\r\n', b'NO (REFERRAL) "x"\r\n',
    b'BYE "bye"\r\n', b'NO (AUTH-TOO-WEAK) "weak"\r\n', b'NO (X "a" b) {3}\r\nabc\r\n', b'OK (\r\n',
    b'MAYBE\r\n', b'"unterminated\r\n', b'{2}\r\n"a\r\n',
])


@given(data=st.one_of(st.lists(st.one_of(REPLIES, nasty(8)), max_size=7).map(b"".join), st.binary(max_size=200)),
       xclient=st.booleans(), max_line=st.sampled_from([16, 65536]), st_data=st.data())
def test_client_any_backend_bytes(data, xclient, max_line, st_data):
    def make():
        return SieveLoginClient("user", master_user="master", master_password="secret", max_line=max_line,
                                xclient={"ADDR": "192.0.2.1"} if xclient else None)

    result = same_client_runs(make, data, st_data.draw(cuts(data)))
    assert result is None or isinstance(result, LoggedIn | LoginFailed)


@given(count=st.integers(min_value=0, max_value=3000))
def test_client_capabilities_are_capped(count):
    """A backend that lists capabilities forever does not grow the login's memory without bound."""
    core = SieveLoginClient("user", master_user="master", master_password="secret", max_line=1024)
    for index in range(count):
        if core.receive(f'"X-{index}" "value"\r\n'.encode()) is not None:
            break
    assert sum(len(name) + len(value or "") for name, value in core.capabilities.items()) <= 1024


@given(data=st.one_of(st.binary(max_size=80), REPLIES, grammars.sieve_command()))
def test_parse_response_raises_only_syntax_errors(data):
    try:
        response = parse_response(data.rstrip(b"\r\n"))
    except SieveSyntaxError:
        return
    assert response.status in ("OK", "NO", "BYE")
