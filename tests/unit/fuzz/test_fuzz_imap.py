"""Fuzzing the IMAP login cores (server and backend client) and the IMAP syntax layer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from palomar.protocols import imap_syntax
from palomar.protocols.imap import (
    ImapLoginClient,
    ImapLoginServer,
    LoggedIn,
    LoginFailed,
    ServerState,
)
from unit.fuzz import grammars
from unit.fuzz.drive import buffered_input, same_client_runs
from unit.fuzz.hostile import byte_by_byte, cuts, nasty

# --------------------------------------------------------------------------- strategies

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
    result = same_client_runs(lambda: make_client(max_line), data, st_data.draw(cuts(data)))
    assert result is None or isinstance(result, LoggedIn | LoginFailed)


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


@given(data=st.one_of(st.binary(max_size=80), grammars.imap_command()))
def test_parse_response_raises_only_syntax_errors(data):
    try:
        response = imap_syntax.parse_response(data)
    except imap_syntax.ImapSyntaxError:
        return
    assert response.tag and response.raw.endswith(b"\n")


@given(data=st.one_of(st.binary(max_size=80), grammars.imap_command()), pos=st.integers(min_value=0, max_value=10))
def test_arg_reader_raises_only_syntax_errors(data, pos):
    for method in ("atom", "quoted", "literal", "string", "astring", "nstring"):
        reader = imap_syntax.ArgReader(data, min(pos, len(data)))
        try:
            value = getattr(reader, method)()
        except imap_syntax.ImapSyntaxError:
            continue
        assert value is None or isinstance(value, bytes)
        assert reader.pos <= len(data)


@given(data=st.one_of(grammars.imap_session(), st.binary(max_size=200)), max_size=st.sampled_from([8, 40, 8192]),
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
