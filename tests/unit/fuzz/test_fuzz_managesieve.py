"""Fuzzing the ManageSieve login cores (server and backend client) and its response parser."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from palomar.protocols.managesieve import (
    AUTH_FAILED,
    LoggedIn,
    LoginFailed,
    ServerState,
    SieveLoginClient,
    SieveLoginServer,
    SieveSyntaxError,
    parse_response,
)
from unit.fuzz.drive import buffered_input, run_login_client, same_server_runs
from unit.fuzz.hostile import (
    LINE_ENDS,
    LITERAL_SIZES,
    byte_by_byte,
    cuts,
    more,
    nasty,
    overlong,
    sasl_response,
    well_formed_lines,
)

VERBS = st.sampled_from([b"AUTHENTICATE", b"authenticate", b"NOOP", b"CAPABILITY", b"LOGOUT", b"STARTTLS",
                         b"HAVESPACE", b"", b'"NOOP"'])


@st.composite
def sieve_string(draw: st.DrawFn, inner=None) -> bytes:
    body = draw(inner if inner is not None else nasty(8))
    kind = draw(st.sampled_from(["quoted", "literal", "raw"]))
    if kind == "quoted":
        if draw(st.booleans()):
            body = body.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + body + b'"'
    if kind == "literal":
        exact = draw(st.sampled_from([True, True, True, False]))
        size = str(len(body)).encode() if exact else draw(LITERAL_SIZES)
        return b"{" + size + draw(st.sampled_from([b"+", b""])) + b"}\r\n" + body
    return body


@st.composite
def sieve_command(draw: st.DrawFn) -> bytes:
    verb = draw(VERBS)
    if verb.upper() == b"AUTHENTICATE":
        mech = st.sampled_from([b"PLAIN", b"LOGIN", b"plain", b"", b"GSSAPI"])
        args = [draw(sieve_string(mech))]
        if draw(st.booleans()):
            args.append(draw(sieve_string(sasl_response())))
    else:
        args = draw(st.lists(sieve_string(), max_size=1 if verb.upper() == b"NOOP" else 2))
    line = b" ".join([verb, *args]) + draw(LINE_ENDS)
    if verb.upper() == b"AUTHENTICATE" and draw(st.booleans()):
        line += b"".join(draw(sieve_string(sasl_response())) + b"\r\n"
                         for _ in range(draw(st.integers(min_value=0, max_value=3))))
    return line


def sieve_session(max_commands: int = 8) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(sieve_command(), sieve_command(), nasty(10)), max_size=max_commands).map(b"".join)


def make_server(max_line: int = 8192, **kw):
    options = {"starttls": True, "secured": False, "allow_cleartext": True, **kw}
    return lambda: SieveLoginServer(sieve_extensions="fileinto vacation", max_line=max_line, max_bad_commands=5,
                                    **options)


def refuse(core, request):
    return core.login_failed(request.tag, AUTH_FAILED)


@given(data=st.lists(sieve_command(), min_size=1, max_size=2).map(b"".join), accept=st.lists(st.booleans(), max_size=2),
       st_data=st.data())
@more(6)
def test_server_one_hostile_command(data, accept, st_data):
    """One or two commands per example: every argument shape gets tried on every command."""
    same_server_runs(make_server(), data, b"", st_data.draw(cuts(data)), accept=accept, refuse=refuse,
                     max_buffer=8193)


@given(data=st.binary(max_size=300), accept=st.lists(st.booleans(), max_size=3), st_data=st.data())
def test_server_random_bytes(data, accept, st_data):
    same_server_runs(make_server(), data, b"", st_data.draw(cuts(data)), accept=accept, refuse=refuse,
                     max_buffer=8193)


@given(data=sieve_session(), tls=sieve_session(4), accept=st.lists(st.booleans(), max_size=3),
       max_line=st.sampled_from([24, 64, 8192]), secured=st.booleans(), cleartext=st.booleans(),
       st_data=st.data())
def test_server_hostile_commands(data, tls, accept, max_line, secured, cleartext, st_data):
    same_server_runs(make_server(max_line, secured=secured, allow_cleartext=cleartext), data, tls,
                     st_data.draw(cuts(data)), accept=accept, refuse=refuse, max_buffer=max_line + 1)


@given(tail=sieve_session(4), tls=sieve_session(4), st_data=st.data())
def test_server_nothing_pipelined_after_starttls_survives(tail, tls, st_data):
    data = b"STARTTLS\r\n" + tail
    run = same_server_runs(make_server(), data, tls, st_data.draw(cuts(data)), accept=[], refuse=refuse,
                           max_buffer=8193)
    assert run.tls_started


@given(login=st.sampled_from([b'AUTHENTICATE "PLAIN" "AHUAcA=="\r\n', b'AUTHENTICATE "PLAIN" {8+}\r\nAHUAcA==\r\n',
                              b'AUTHENTICATE "LOGIN"\r\n"dQ=="\r\n{4+}\r\ncA==\r\n']),
       tail=st.binary(max_size=200), st_data=st.data())
def test_server_pipelined_after_login_is_leftover(login, tail, st_data):
    data = login + tail
    run = same_server_runs(make_server(), data, b"", st_data.draw(cuts(data)), accept=[True], refuse=refuse,
                           max_buffer=8193)
    assert bytes(run.leftover) == tail


@given(prefix=st.sampled_from([b"", b"NOOP ", b"NOOP {5+}\r\nab", b'AUTHENTICATE "PLAIN"\r\n']),
       max_line=st.sampled_from([16, 100, 8192]), st_data=st.data())
def test_server_buffer_is_capped(prefix, max_line, st_data):
    core = make_server(max_line)()
    junk = st_data.draw(overlong(max_line))
    core.receive(prefix)
    for _ in range(4):
        core.receive(junk)
        if core.state in (ServerState.COMMAND, ServerState.AUTH_CONTINUE):
            assert buffered_input(core) <= max_line + 1
    assert core.state is ServerState.CLOSED or len(prefix) + len(junk) * 4 <= max_line + 1


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

    outcomes = [run_login_client(make(), chunks) for chunks in ([data], st_data.draw(cuts(data)), byte_by_byte(data))]
    result, sent, leftover, returned = outcomes[0]
    for other in outcomes[1:]:
        assert other[:2] == outcomes[0][:2] and other[3] == returned
        if isinstance(result, LoggedIn):
            assert other[2] == leftover
    assert result is None or isinstance(result, LoggedIn | LoginFailed)
    assert well_formed_lines(sent)


@given(count=st.integers(min_value=0, max_value=3000))
def test_client_capabilities_are_capped(count):
    """A backend that lists capabilities forever does not grow the login's memory without bound."""
    core = SieveLoginClient("user", master_user="master", master_password="secret", max_line=1024)
    for index in range(count):
        if core.receive(f'"X-{index}" "value"\r\n'.encode()) is not None:
            break
    assert sum(len(name) + len(value or "") for name, value in core.capabilities.items()) <= 1024


@given(data=st.one_of(st.binary(max_size=80), REPLIES, sieve_command()))
def test_parse_response_raises_only_syntax_errors(data):
    try:
        response = parse_response(data.rstrip(b"\r\n"))
    except SieveSyntaxError:
        return
    assert response.status in ("OK", "NO", "BYE")
