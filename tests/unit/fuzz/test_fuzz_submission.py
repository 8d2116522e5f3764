"""Fuzzing the Submission login cores (server and backend client)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from palomar.protocols.submission import (
    AUTH_FAILED,
    LOGGED_IN,
    LoggedIn,
    LoginFailed,
    ServerState,
    SubmissionLoginClient,
    SubmissionLoginServer,
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

VERBS = st.sampled_from([b"EHLO", b"HELO", b"ehlo", b"AUTH", b"STARTTLS", b"RSET", b"NOOP", b"QUIT", b"MAIL",
                         b"RCPT", b"BDAT", b"DATA", b"XCLIENT", b"", b"EH\x00LO", b"1EHLO"])


@st.composite
def smtp_command(draw: st.DrawFn) -> bytes:
    verb = draw(VERBS)
    upper = verb.upper()
    if upper == b"AUTH":
        args = draw(st.sampled_from([b"", b"PLAIN", b"LOGIN", b"plain", b"CRAM-MD5", b"PLAIN a b", b"\xff"]))
        if args and draw(st.booleans()):
            args += b" " + draw(sasl_response())
    elif upper == b"BDAT":
        args = draw(st.sampled_from([b"0", b"5", b"3 LAST", b"-1", b"99999999999999999999", b"x", b""]))
    else:
        args = draw(st.one_of(word(), nasty(8)))
    line = verb + (b" " + args if args or draw(st.booleans()) else b"") + draw(LINE_ENDS)
    if upper == b"AUTH" and draw(st.booleans()):
        line += b"".join(r + b"\r\n" for r in draw(st.lists(sasl_response(), max_size=3)))
    if upper == b"BDAT":
        line += draw(nasty(6))
    return line


def smtp_session(max_commands: int = 8) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(smtp_command(), smtp_command(), nasty(10)), max_size=max_commands).map(b"".join)


def make_server(max_line: int = 4096, **kw):
    options = {"starttls": True, "secured": False, "allow_cleartext": True, **kw}
    return lambda: SubmissionLoginServer(hostname="proxy.test", max_line=max_line, max_bad_commands=5, **options)


def refuse(core, request):
    return core.login_failed(None, AUTH_FAILED)


def succeed(core):
    core.login_succeeded(LOGGED_IN)


def check(make, data, tls, chunks, accept, max_line):
    return same_server_runs(make, data, tls, chunks, accept=accept, refuse=refuse, succeed=succeed,
                            max_buffer=max_line + 1)


@given(data=st.lists(smtp_command(), min_size=1, max_size=2).map(b"".join), accept=st.lists(st.booleans(), max_size=2),
       st_data=st.data())
@more(4)
def test_server_one_hostile_command(data, accept, st_data):
    check(make_server(), data, b"", st_data.draw(cuts(data)), accept, 4096)


@given(data=st.binary(max_size=300), accept=st.lists(st.booleans(), max_size=3), st_data=st.data())
def test_server_random_bytes(data, accept, st_data):
    check(make_server(), data, b"", st_data.draw(cuts(data)), accept, 4096)


@given(data=smtp_session(), tls=smtp_session(4), accept=st.lists(st.booleans(), max_size=3),
       max_line=st.sampled_from([16, 64, 4096]), secured=st.booleans(), cleartext=st.booleans(),
       st_data=st.data())
def test_server_hostile_commands(data, tls, accept, max_line, secured, cleartext, st_data):
    check(make_server(max_line, secured=secured, allow_cleartext=cleartext), data, tls, st_data.draw(cuts(data)),
          accept, max_line)


@given(tail=smtp_session(4), tls=smtp_session(4), st_data=st.data())
def test_server_nothing_pipelined_after_starttls_survives(tail, tls, st_data):
    data = b"EHLO c\r\nSTARTTLS\r\n" + tail
    run = check(make_server(), data, tls, st_data.draw(cuts(data)), [], 4096)
    assert run.tls_started


@given(login=st.sampled_from([b"AUTH PLAIN AHUAcA==\r\n", b"EHLO c\r\nAUTH LOGIN\r\ndQ==\r\ncA==\r\n"]),
       tail=st.binary(max_size=200), st_data=st.data())
def test_server_pipelined_after_login_is_leftover(login, tail, st_data):
    data = login + tail
    run = check(make_server(), data, b"", st_data.draw(cuts(data)), [True], 4096)
    assert bytes(run.leftover) == tail


@given(max_line=st.sampled_from([16, 100, 4096]), st_data=st.data())
def test_server_buffer_is_capped(max_line, st_data):
    """An over-long line is answered and skipped without being buffered."""
    core = make_server(max_line)()
    junk = st_data.draw(overlong(max_line))
    for _ in range(4):
        core.receive(junk)
        if core.state is not ServerState.CLOSED:
            assert buffered_input(core) <= max_line + 1


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

    outcomes = [run_login_client(make(), chunks) for chunks in ([data], st_data.draw(cuts(data)), byte_by_byte(data))]
    result, sent, leftover, returned = outcomes[0]
    for other in outcomes[1:]:
        assert other[:2] == outcomes[0][:2] and other[3] == returned
        if isinstance(result, LoggedIn):
            assert other[2] == leftover
    assert result is None or isinstance(result, LoggedIn | LoginFailed)
    assert well_formed_lines(sent)


@given(count=st.integers(min_value=0, max_value=3000))
def test_client_multiline_reply_is_capped(count):
    """A reply whose continuation lines never end does not grow memory without bound."""
    core = SubmissionLoginClient("user", master_user="master", master_password="secret", helo="proxy",
                                 max_line=1024)
    for _ in range(count):
        if core.receive(b"220-still greeting\r\n") is not None:
            break
    assert len(core._reader._raw) <= 1024
