"""Fuzzing the Submission login cores (server and backend client)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from palomar.protocols.submission import (
    LoggedIn,
    LoginFailed,
    SubmissionLoginClient,
)
from unit.fuzz.drive import same_client_runs
from unit.fuzz.hostile import cuts, more, nasty

REPLIES = st.sampled_from([
    b"220 backend ESMTP\r\n", b"220-multi\r\n220 line\r\n", b"421 4.3.2 bye\r\n", b"554 no\r\n",
    b"250-backend\r\n250-XCLIENT ADDR PORT HELO\r\n250 AUTH PLAIN LOGIN\r\n", b"250-backend\r\n250 AUTH LOGIN\r\n",
    b"250 backend\r\n", b"250-x\r\n251 y\r\n", b"220 2.0.0 ok\r\n", b"334 \r\n", b"334-a\r\n334 b\r\n",
    b"235 2.7.0 Logged in.\r\n", b"535 5.7.8 bad\r\n", b"454 4.7.0 later\r\n",
    b"550 5.2.900 user@host:587 Referral\r\n", b"550 5.2.900 \r\n", b"250-SIZE 1000\r\n250 8BITMIME\r\n",
    b"999 what\r\n", b"25\r\n", b"250x\r\n", b"\r\n",
])


@given(data=st.one_of(st.lists(st.one_of(REPLIES, nasty(8)), max_size=8).map(b"".join), st.binary(max_size=200)),
       post_ehlo=st.booleans(), max_line=st.sampled_from([16, 65536]), st_data=st.data())
@more(2)
def test_client_any_backend_bytes(data, post_ehlo, max_line, st_data):
    def make():
        return SubmissionLoginClient("user", master_user="master", master_password="secret", helo="proxy",
                                     xclient={"ADDR": "192.0.2.1", "PORT": "1234", "HELO": "c\r\nx"},
                                     post_login_ehlo=post_ehlo, max_line=max_line)

    result = same_client_runs(make, data, st_data.draw(cuts(data)))
    assert result is None or isinstance(result, LoggedIn | LoginFailed)


@given(count=st.integers(min_value=0, max_value=3000))
def test_client_multiline_reply_is_capped(count):
    """A reply whose continuation lines never end does not grow memory without bound."""
    core = SubmissionLoginClient("user", master_user="master", master_password="secret", helo="proxy",
                                 max_line=1024)
    for _ in range(count):
        if core.receive(b"220-still greeting\r\n") is not None:
            break
    assert len(core._reader._raw) <= 1024
