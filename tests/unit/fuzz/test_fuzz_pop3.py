"""Fuzzing the POP3 login cores (server and backend client)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from palomar.protocols.pop3 import (
    LoggedIn,
    LoginFailed,
    Pop3LoginClient,
)
from unit.fuzz.drive import same_client_runs
from unit.fuzz.hostile import cuts, nasty

BANNERS = st.sampled_from([b"+OK Dovecot ready.\r\n", b"+OK [XCLIENT] Dovecot ready.\r\n", b"-ERR no\r\n",
                           b"+OK\r\n", b"+OK [XCLIENT]\r\n", b"\r\n"])
REPLIES = st.sampled_from([
    b"+OK\r\n", b"+OK Logged in.\r\n", b"-ERR [AUTH] Authentication failed.\r\n", b"-ERR [SYS/TEMP] later\r\n",
    b"-ERR [REFERRAL/user@host:110] Referral\r\n", b"-ERR [REFERRAL/] x\r\n", b"-ERR [IN-USE] busy\r\n",
    b"-ERR\r\n", b"-ERR [\r\n", b"-ERR [AUTH\r\n", b"+ \r\n", b"* what\r\n", b".\r\n",
])


@given(data=st.one_of(
    st.tuples(BANNERS, st.lists(st.one_of(REPLIES, nasty(8)), max_size=6)).map(lambda t: t[0] + b"".join(t[1])),
    st.binary(max_size=200)), xclient=st.booleans(), max_line=st.sampled_from([16, 65536]), st_data=st.data())
def test_client_any_backend_bytes(data, xclient, max_line, st_data):
    def make():
        return Pop3LoginClient("user", master_user="master", master_password="secret", max_line=max_line,
                               xclient={"ADDR": "192.0.2.1", "PORT": "1234"} if xclient else None)

    result = same_client_runs(make, data, st_data.draw(cuts(data)))
    assert result is None or isinstance(result, LoggedIn | LoginFailed)
