"""Fuzzing the POP3 login cores (server and backend client)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from palomar.protocols.pop3 import (
    AUTH_FAILED,
    LoggedIn,
    LoginFailed,
    Pop3LoginClient,
    Pop3LoginServer,
    ServerState,
)
from unit.fuzz.drive import buffered_input, run_login_client, same_server_runs
from unit.fuzz.hostile import (
    LINE_ENDS,
    byte_by_byte,
    cuts,
    more,
    nasty,
    overlong,
    sasl_response,
    well_formed_lines,
    word,
)

VERBS = st.sampled_from([b"USER", b"user", b"PASS", b"AUTH", b"CAPA", b"STLS", b"QUIT", b"APOP", b"STAT", b"",
                         b"US\x00ER", b"\xffUSER"])


@st.composite
def pop3_command(draw: st.DrawFn) -> bytes:
    verb = draw(VERBS)
    if verb.upper() == b"AUTH":
        args = draw(st.sampled_from([b"", b"PLAIN", b"LOGIN", b"plain", b"CRAM-MD5", b"PLAIN PLAIN", b"\xff"]))
        if args and draw(st.booleans()):
            args += b" " + draw(sasl_response())
    else:
        args = draw(st.one_of(word(), nasty(8)))
    line = verb + (b" " + args if args or draw(st.booleans()) else b"") + draw(LINE_ENDS)
    if verb.upper() == b"AUTH" and draw(st.booleans()):
        line += b"".join(r + b"\r\n" for r in draw(st.lists(sasl_response(), max_size=3)))
    return line


def pop3_session(max_commands: int = 8) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(pop3_command(), nasty(10)), max_size=max_commands).map(b"".join)


def make_server(max_line: int = 4096, **kw):
    options = {"starttls": True, "secured": False, "allow_cleartext": True, **kw}
    return lambda: Pop3LoginServer(max_line=max_line, max_bad_commands=5, **options)


def refuse(core, request):
    return core.login_failed(request.tag, AUTH_FAILED)


@given(data=st.lists(pop3_command(), min_size=1, max_size=2).map(b"".join), accept=st.lists(st.booleans(), max_size=2),
       st_data=st.data())
@more(6)
def test_server_one_hostile_command(data, accept, st_data):
    """One or two commands per example: every argument shape gets tried on every command."""
    same_server_runs(make_server(), data, b"", st_data.draw(cuts(data)), accept=accept, refuse=refuse,
                     max_buffer=4097)


@given(data=st.binary(max_size=300), accept=st.lists(st.booleans(), max_size=3), st_data=st.data())
def test_server_random_bytes(data, accept, st_data):
    same_server_runs(make_server(), data, b"", st_data.draw(cuts(data)), accept=accept, refuse=refuse,
                     max_buffer=4097)


@given(data=pop3_session(), tls=pop3_session(4), accept=st.lists(st.booleans(), max_size=3),
       max_line=st.sampled_from([16, 64, 4096]), secured=st.booleans(), cleartext=st.booleans(),
       st_data=st.data())
def test_server_hostile_commands(data, tls, accept, max_line, secured, cleartext, st_data):
    same_server_runs(make_server(max_line, secured=secured, allow_cleartext=cleartext), data, tls,
                     st_data.draw(cuts(data)), accept=accept, refuse=refuse, max_buffer=max_line + 1)


@given(tail=pop3_session(4), tls=pop3_session(4), st_data=st.data())
def test_server_nothing_pipelined_after_stls_survives(tail, tls, st_data):
    data = b"STLS\r\n" + tail
    run = same_server_runs(make_server(), data, tls, st_data.draw(cuts(data)), accept=[], refuse=refuse,
                           max_buffer=4097)
    assert run.tls_started


@given(login=st.sampled_from([b"USER u\r\nPASS p\r\n", b"AUTH PLAIN AHUAcA==\r\n", b"AUTH LOGIN\r\ndQ==\r\ncA==\r\n"]),
       tail=st.binary(max_size=200), st_data=st.data())
def test_server_pipelined_after_login_is_leftover(login, tail, st_data):
    data = login + tail
    run = same_server_runs(make_server(), data, b"", st_data.draw(cuts(data)), accept=[True], refuse=refuse,
                           max_buffer=4097)
    assert bytes(run.leftover) == tail


@given(max_line=st.sampled_from([16, 100, 4096]), st_data=st.data())
def test_server_buffer_is_capped(max_line, st_data):
    core = make_server(max_line)()
    junk = st_data.draw(overlong(max_line))
    for _ in range(4):
        core.receive(junk)
        if core.state is ServerState.COMMAND:
            assert buffered_input(core) <= max_line + 1
    assert core.state is ServerState.CLOSED or len(junk) * 4 <= max_line + 1 or b"\n" in junk


@given(flood=st.integers(min_value=1, max_value=40))
def test_server_flood_while_login_pending_closes(flood):
    core = make_server(16)()
    events = core.receive(b"USER u\r\nPASS p\r\n")
    assert core.state is ServerState.AWAIT_LOGIN and events
    for _ in range(flood):
        core.receive(b"x" * 4096)
    limit = max(8 * 16, 65536)
    if flood * 4096 > limit:
        assert core.state is ServerState.CLOSED and buffered_input(core) == 0
    else:
        assert buffered_input(core) == flood * 4096


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

    outcomes = [run_login_client(make(), chunks) for chunks in ([data], st_data.draw(cuts(data)), byte_by_byte(data))]
    result, sent, leftover, returned = outcomes[0]
    for other in outcomes[1:]:
        assert other[:2] == outcomes[0][:2] and other[3] == returned
        if isinstance(result, LoggedIn):
            assert other[2] == leftover
    assert result is None or isinstance(result, LoggedIn | LoginFailed)
    assert returned == ([result] if result is not None else [])
    assert well_formed_lines(sent)
