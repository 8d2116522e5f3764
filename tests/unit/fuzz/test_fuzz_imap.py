"""Fuzzing the IMAP login cores (server and backend client) and the IMAP syntax layer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from palomar.protocols import imap_syntax
from palomar.protocols.imap import (
    AUTH_FAILED,
    ImapLoginClient,
    ImapLoginServer,
    LoggedIn,
    LoginFailed,
    LoginRequest,
    ServerState,
)
from unit.fuzz.drive import buffered_input, run_login_client, run_login_server, same_server_runs
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
    word,
)

# --------------------------------------------------------------------------- strategies

TAGS = st.one_of(st.sampled_from([b"a1", b"A", b"*", b"+", b"", b"LOGIN", b"a\x00", b"t" * 101, b"\xff"]), word())
COMMANDS = st.sampled_from([b"LOGIN", b"login", b"AUTHENTICATE", b"ID", b"STARTTLS", b"CAPABILITY", b"NOOP",
                            b"LOGOUT", b"ENABLE", b"SELECT", b"", b"LOG\x00IN"])
MECHS = st.sampled_from([b"PLAIN", b"plain", b"LOGIN", b"CRAM-MD5", b"", b'"PLAIN"'])


@st.composite
def imap_string(draw: st.DrawFn) -> bytes:
    """An astring as a client might send it, well formed or not."""
    kind = draw(st.sampled_from(["atom", "quoted", "literal", "raw"]))
    if kind == "atom":
        return draw(word()) or b"x"
    if kind == "quoted":
        body = draw(nasty(8))
        if draw(st.booleans()):
            body = body.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + body + (b'"' if draw(st.booleans()) else b"")
    if kind == "literal":
        size = draw(LITERAL_SIZES)
        plus = draw(st.sampled_from([b"", b"+"]))
        payload = draw(nasty(10))
        if draw(st.sampled_from([True, True, False])) and size.isdigit() and int(size) <= 40:
            payload = (payload * 40)[: int(size)]  # the announced size, exactly
        return b"{" + size + plus + b"}" + draw(LINE_ENDS) + payload
    return draw(nasty(6))


@st.composite
def imap_command(draw: st.DrawFn) -> bytes:
    tag = draw(TAGS)
    name = draw(COMMANDS)
    if name.upper() == b"AUTHENTICATE":
        args = [draw(MECHS)]
        if draw(st.booleans()):
            args.append(draw(sasl_response()))
    elif name.upper() == b"ID":
        args = [draw(st.one_of(
            st.just(b"NIL"),
            st.lists(imap_string(), max_size=6).map(lambda items: b"(" + b" ".join(items) + b")"),
            nasty(6),
        ))]
    else:
        args = draw(st.lists(imap_string(), max_size=3))
    line = b" ".join([tag, name, *args])
    line += draw(LINE_ENDS)
    if name.upper() == b"AUTHENTICATE" and draw(st.booleans()):
        line += b"".join(r + b"\r\n" for r in draw(st.lists(sasl_response(), max_size=3)))
    return line


def imap_session(max_commands: int = 8) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(imap_command(), nasty(10)), max_size=max_commands).map(b"".join)


def make_server(max_line: int = 8192, **kw):
    options = {"starttls": True, "secured": False, "allow_cleartext": True, **kw}
    return lambda: ImapLoginServer(max_line=max_line, max_bad_commands=5, **options)


def refuse(core: ImapLoginServer, request: LoginRequest) -> list:
    return core.login_failed(request.tag, AUTH_FAILED)


def capped(max_line: int):
    def check(core: ImapLoginServer) -> None:
        if core.state in (ServerState.COMMAND, ServerState.AUTH_CONTINUE):
            assert buffered_input(core) <= max_line + 1, (buffered_input(core), max_line)
        if core.state is ServerState.CLOSED:
            assert buffered_input(core) == 0

    return check


def same_runs(make, data: bytes, tls: bytes, chunks: list[bytes], accept: list[bool], max_line: int):
    return same_server_runs(make, data, tls, chunks, accept=accept, refuse=refuse, max_buffer=max_line + 1)


# --------------------------------------------------------------------------- server


@given(data=st.lists(imap_command(), min_size=1, max_size=2).map(b"".join), accept=st.lists(st.booleans(), max_size=2),
       st_data=st.data())
@more(6)
def test_server_one_hostile_command(data, accept, st_data):
    """One or two commands per example: every argument shape gets tried on every command."""
    same_server_runs(make_server(), data, b"", st_data.draw(cuts(data)), accept=accept, refuse=refuse,
                     max_buffer=8193)


@given(data=st.binary(max_size=300), accept=st.lists(st.booleans(), max_size=3), st_data=st.data())
def test_server_random_bytes(data, accept, st_data):
    same_runs(make_server(), data, b"", st_data.draw(cuts(data)), accept, 8192)


@given(data=imap_session(), tls=imap_session(4), accept=st.lists(st.booleans(), max_size=3),
       max_line=st.sampled_from([24, 64, 8192]), secured=st.booleans(), cleartext=st.booleans(),
       st_data=st.data())
def test_server_hostile_commands(data, tls, accept, max_line, secured, cleartext, st_data):
    make = make_server(max_line, secured=secured, allow_cleartext=cleartext)
    same_runs(make, data, tls, st_data.draw(cuts(data)), accept, max_line)


@given(prefix=st.sampled_from([b"", b"a LOGIN ", b"a LOGIN {5}\r\nxxxxx", b"a ID (", b"a AUTHENTICATE PLAIN\r\n"]),
       max_line=st.sampled_from([16, 100, 1024]), flood=st.data())
def test_server_buffer_is_capped(prefix, max_line, flood):
    """A line that never ends closes the connection instead of growing the buffer."""
    core = ImapLoginServer(starttls=False, secured=True, allow_cleartext=True, max_line=max_line)
    junk = flood.draw(overlong(max_line))
    core.receive(prefix)
    for _ in range(4):
        core.receive(junk)
        capped(max_line)(core)
    if len(junk) * 4 > max_line + 1:
        assert core.state is ServerState.CLOSED


@given(size=st.integers(min_value=0, max_value=10**12), plus=st.booleans(), max_line=st.sampled_from([64, 8192]))
def test_server_literal_sizes(size, plus, max_line):
    """A literal too large for the line limit is refused before any of it is buffered."""
    core = ImapLoginServer(starttls=False, secured=True, allow_cleartext=True, max_line=max_line)
    head = f"a LOGIN {{{size}{'+' if plus else ''}}}\r\n".encode()
    core.receive(head)
    out = core.data_to_send()
    fits = len(head) + size <= max_line  # the message so far, its CRLF included, and the literal
    if fits:
        assert core.state is ServerState.COMMAND
        assert out == (b"" if plus else b"+ OK\r\n")
    elif plus:
        assert core.state is ServerState.CLOSED
    else:
        assert out == b"a BAD Literal size too large.\r\n"
    core.receive(b"y" * min(size, 4 * max_line))
    assert buffered_input(core) <= max_line + 1


@given(login=st.sampled_from([b"a LOGIN u p\r\n", b"a AUTHENTICATE PLAIN AHUAcA==\r\n"]),
       tail=st.binary(max_size=200), st_data=st.data())
def test_server_pipelined_after_login_is_leftover(login, tail, st_data):
    """Whatever follows a successful login reaches the backend untouched, in any chunking."""
    data = login + tail
    for chunks in ([data], st_data.draw(cuts(data)), byte_by_byte(data)):
        run = run_login_server(make_server(), chunks, accept=[True], refuse=refuse)
        assert [type(e).__name__ for e in run.events] == ["LoginRequest"]
        assert bytes(run.leftover) == tail


@given(tail=imap_session(4), tls=imap_session(4), st_data=st.data())
def test_server_nothing_pipelined_after_starttls_survives(tail, tls, st_data):
    data = b"a STARTTLS\r\n" + tail
    run = same_runs(make_server(), data, tls, st_data.draw(cuts(data)), [], 8192)
    assert run.tls_started
    assert type(run.events[0]).__name__ == "StartTlsRequest"


# --------------------------------------------------------------------------- client (backend side)

BANNERS = st.sampled_from([
    b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+] Dovecot ready.\r\n",
    b"* OK [CAPABILITY IMAP4rev1 ID] ready\r\n",
    b"* OK ready\r\n",
    b"* OK [CAPABILITY] x\r\n",
    b"* PREAUTH hi\r\n",
    b"* BYE go away\r\n",
    b"+ OK\r\n",
    b"garbage\r\n",
])
REPLIES = st.sampled_from([
    b"* CAPABILITY IMAP4rev1 SASL-IR ID\r\n",
    b"* CAPABILITY\r\n",
    b"C OK done\r\n",
    b"C NO no\r\n",
    b"* ID NIL\r\n",
    b"I OK ID completed.\r\n",
    b"I NO [SERVERBUG] oops\r\n",
    b"+ \r\n",
    b"+\r\n",
    b"L OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
    b"L OK Logged in\r\n",
    b"L NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
    b"L NO [UNAVAILABLE] try later\r\n",
    b"L NO [REFERRAL imap://u@[::1]:143/] go\r\n",
    b"L NO [REFERRAL] nowhere\r\n",
    b"L NO [SERVERBUG] bug\r\n",
    b"L NO [X\r\n",
    b"L BAD what\r\n",
    b"* 3 EXISTS\r\n",
    b"* 1 FETCH (BODY {5}\r\nhello)\r\n",
    b"* 1 FETCH (BODY {99999999999}\r\n",
    b"* BYE shutting down\r\n",
    b"Z OK who\r\n",
    b"\r\n",
    b" \r\n",
])


def backend_stream() -> st.SearchStrategy[bytes]:
    return st.tuples(BANNERS, st.lists(st.one_of(REPLIES, nasty(8).map(lambda b: b + b"\r\n"), nasty(6)),
                                        max_size=8)).map(lambda t: t[0] + b"".join(t[1]))


def make_client(max_line: int = 65536) -> ImapLoginClient:
    return ImapLoginClient("user", master_user="master", master_password="secret",
                           id_fields=(("x-originating-ip", "192.0.2.1"),), max_line=max_line)


@given(data=st.one_of(backend_stream(), st.binary(max_size=200)), max_line=st.sampled_from([32, 65536]),
       st_data=st.data())
def test_client_any_backend_bytes(data, max_line, st_data):
    outcomes = [run_login_client(make_client(max_line), chunks)
                for chunks in ([data], st_data.draw(cuts(data)), byte_by_byte(data))]
    result, sent, leftover, returned = outcomes[0]
    for other in outcomes[1:]:
        # What follows the login reply is only defined (and relayed) after a successful login.
        assert other[:2] == outcomes[0][:2] and other[3] == returned
        if isinstance(result, LoggedIn):
            assert other[2] == leftover
    assert result is None or isinstance(result, LoggedIn | LoginFailed)
    assert returned == ([result] if result is not None else [])
    assert well_formed_lines(sent)


@given(untagged=st.integers(min_value=0, max_value=2000))
def test_client_untagged_replies_are_capped(untagged):
    """A backend that sends untagged lines forever does not grow the login's memory without bound."""
    core = make_client(max_line=1024)
    core.receive(b"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n")
    for _ in range(untagged):
        if core.receive(b"* 1 EXISTS\r\n") is not None:
            break
    assert len(core._untagged) <= 1024
    if untagged * len(b"* 1 EXISTS\r\n") > 1024:
        assert isinstance(core.result, LoginFailed) and core.result.kind == "protocol"


# --------------------------------------------------------------------------- syntax


@given(data=st.one_of(st.binary(max_size=80), imap_command()))
def test_parse_response_raises_only_syntax_errors(data):
    try:
        response = imap_syntax.parse_response(data)
    except imap_syntax.ImapSyntaxError:
        return
    assert response.tag and response.raw.endswith(b"\n")


@given(data=st.one_of(st.binary(max_size=80), imap_command()), pos=st.integers(min_value=0, max_value=10))
def test_arg_reader_raises_only_syntax_errors(data, pos):
    for method in ("atom", "quoted", "literal", "string", "astring", "nstring"):
        reader = imap_syntax.ArgReader(data, min(pos, len(data)))
        try:
            value = getattr(reader, method)()
        except imap_syntax.ImapSyntaxError:
            continue
        assert value is None or isinstance(value, bytes)
        assert reader.pos <= len(data)


@given(data=st.one_of(imap_session(), st.binary(max_size=200)), max_size=st.sampled_from([8, 40, 8192]),
       st_data=st.data())
def test_line_assembler_chunking_independent(data, max_size, st_data):
    def messages(chunks):
        lines = imap_syntax.LineAssembler(max_size)
        out = []
        for chunk in chunks:
            lines.feed(chunk)
            while True:
                try:
                    item = lines.next_message()
                except imap_syntax.LineTooLong:
                    return out + ["too long"]
                if item is None:
                    break
                if isinstance(item, imap_syntax.LiteralAnnounced):
                    out.append(item)
                    try:
                        lines.accept_literal()
                    except imap_syntax.LineTooLong:
                        return out + ["too long"]
                    continue
                out.append(item)
            assert lines.buffered + len(lines._partial) <= max_size + 1
        return out

    first = messages([data])
    assert messages(st_data.draw(cuts(data))) == first
    assert messages(byte_by_byte(data)) == first
