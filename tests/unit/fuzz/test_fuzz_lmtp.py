"""Fuzzing the LMTP cores (the proxy's server side, the backend's client side) and the
SMTP-family syntax they share."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from palomar.protocols import smtp_syntax
from palomar.protocols.lmtp import (
    RCPT_OK,
    Close,
    CommandReply,
    DataAborted,
    DataChunk,
    DataEnd,
    DataStart,
    DeliveryReply,
    LmtpClient,
    LmtpFailure,
    LmtpServer,
    MailFrom,
    RcptRequest,
    Ready,
    ServerState,
)
from unit.fuzz.hostile import LINE_ENDS, byte_by_byte, cuts, more, nasty, overlong, well_formed_lines, word

ADDRESSES = st.one_of(
    st.sampled_from([b"<a@b.test>", b"<>", b"<Postmaster>", b"<postmaster@x>", b"<@r1,@r2:u@d>", b'<"a b"@x>',
                     b'<"a\\"b"@x>', b'<"a\rb"@x>', b'<"a\\\rb"@x>', b'<"a\0b"@x>', b'<"a>b"@x>', b"<a@[::1]>",
                     b"<\xc3\xa9@x>", b"<a@b", b"a@b", b"<a@@b>", b"<a\tb@x>", b'<"@x>', b'<""@x>']),
    st.tuples(nasty(6), nasty(6)).map(lambda t: b"<" + t[0] + b"@" + t[1] + b">"),
)
PARAMS = st.lists(st.sampled_from([b"SIZE=10", b"SIZE=99999999999999999999999", b"SIZE=", b"SIZE", b"BODY=8BITMIME",
                                   b"BODY=x", b"SMTPUTF8", b"SMTPUTF8=1", b"RET=FULL", b"ENVID=x", b"NOTIFY=NEVER",
                                   b"NOTIFY=SUCCESS,FAILURE", b"NOTIFY=", b"ORCPT=rfc822;a@b", b"ORCPT=x", b"X=\x00",
                                   b"=", b"size=1"]), max_size=3).map(b" ".join)


@st.composite
def lmtp_command(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "VRFY", "QUIT", "junk"]))
    end = draw(LINE_ENDS)
    if kind == "LHLO":
        return b"LHLO " + draw(st.one_of(word(), nasty(4))) + end
    if kind in ("MAIL", "RCPT"):
        head = b"MAIL FROM:" if kind == "MAIL" else b"RCPT TO:"
        params = draw(PARAMS)
        return head + draw(ADDRESSES) + (b" " + params if params else b"") + end
    if kind == "DATA":
        body = draw(st.lists(st.one_of(nasty(8), st.sampled_from([b"\r\n.", b".\r\n", b"\r\n..\r\n", b"\n.\r\n"])),
                             max_size=6).map(b"".join))
        return b"DATA" + end + body + draw(st.sampled_from([b"\r\n.\r\n", b"", b"\n.\n"]))
    if kind == "BDAT":
        payload = draw(nasty(8))
        size = draw(st.sampled_from([str(len(payload)).encode(), b"0", b"3", b"-1", b"99999999999999999999", b"x"]))
        return b"BDAT " + size + draw(st.sampled_from([b"", b" LAST", b" last", b" MORE"])) + end + payload
    if kind == "junk":
        return draw(nasty(10)) + end
    return kind.encode() + draw(st.sampled_from([b"", b" x"])) + end


def lmtp_session(max_commands: int = 10) -> st.SearchStrategy[bytes]:
    opening = st.sampled_from([b"", b"LHLO client\r\n", b"LHLO client\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"])
    return st.tuples(opening, st.lists(lmtp_command(), max_size=max_commands)).map(lambda t: t[0] + b"".join(t[1]))


def delivered(events: list, core: LmtpServer) -> list:
    """The events as a consumer keeps them: DataChunk boundaries follow the input's chunking,
    and chunks before a DataAborted are dropped (how many came first depends on the chunking
    too), so each DataEnd is paired with the bytes the message had, and an unfinished
    message's bytes come last unless it is already too big."""
    out: list = []
    body = bytearray()
    for event in events:
        if isinstance(event, DataChunk):
            body += event.data
            continue
        if isinstance(event, DataStart | DataAborted):
            body.clear()
        out.append((event, bytes(body)) if isinstance(event, DataEnd) else event)
    too_big = core._tx is not None and core._tx.too_big
    out.append(b"" if too_big else bytes(body))
    return out


def run_server(chunks, accept, *, extensions, max_size, max_line, max_buffer=1 << 20):
    core = LmtpServer(hostname="proxy.test", capabilities=extensions, max_size=max_size, max_line=max_line,
                      max_recipients=3, max_bad_commands=6, max_buffer=max_buffer)
    output = bytearray(core.greeting())
    events: list = []
    answers = iter(accept)
    for chunk in chunks:
        if core.state is ServerState.CLOSED:
            break
        queue = core.receive(chunk)
        while queue:
            event = queue.pop(0)
            events.append(event)
            if isinstance(event, MailFrom | RcptRequest):
                assert not any(ch in event.address for ch in "\r\n\0"), event
            if isinstance(event, RcptRequest):
                queue.extend(core.rcpt_reply(RCPT_OK if next(answers, True) else "550 5.1.1 <x> unknown"))
            elif isinstance(event, DataEnd):
                queue.extend(core.data_replies(["250 2.0.0 <x> Saved"] * len(event.recipients)))
        output += core.data_to_send()
        if core.state is ServerState.COMMAND:
            assert core._lines.buffered <= max_line + 1
        if core.state is ServerState.DATA:
            assert core._lines.buffered == 0 and len(core._unstuffer._buf) <= 4
    return delivered(events, core), bytes(output)


@given(data=st.one_of(lmtp_session(), st.binary(max_size=300)), accept=st.lists(st.booleans(), max_size=4),
       extensions=st.sets(st.sampled_from(["CHUNKING", "SMTPUTF8", "DSN"])),
       max_size=st.sampled_from([None, 5, 1000]), max_line=st.sampled_from([24, 4096]), st_data=st.data())
@more(4)
def test_server_hostile_sessions(data, accept, extensions, max_size, max_line, st_data):
    options = {"extensions": extensions, "max_size": max_size, "max_line": max_line}
    first = run_server([data], accept, **options)
    assert run_server(st_data.draw(cuts(data)), accept, **options) == first
    assert run_server(byte_by_byte(data), accept, **options) == first
    events, output = first
    assert well_formed_lines(output), output
    assert sum(isinstance(e, Close) for e in events) <= 1


@given(st_data=st.data())
def test_server_flood_while_paused_closes(st_data):
    core = LmtpServer(hostname="proxy.test", max_buffer=1000)
    events = core.receive(b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
    assert isinstance(events[-1], RcptRequest) and core.paused
    flood = st_data.draw(overlong(1000))
    core.receive(flood)
    if len(flood) > 1000:
        assert core.state is ServerState.CLOSED and core._lines.buffered == 0
    else:
        assert core._lines.buffered == len(flood)


REPLIES = st.sampled_from([
    b"220 backend LMTP ready\r\n", b"250-backend\r\n250-XCLIENT ADDR PORT\r\n250 PIPELINING\r\n", b"250 backend\r\n",
    b"250 2.1.0 OK\r\n", b"250 2.1.5 OK\r\n", b"550 5.1.1 unknown\r\n", b"354 go\r\n", b"354-a\r\n354 b\r\n",
    b"250 2.0.0 Saved\r\n", b"452 4.2.2 full\r\n", b"421 4.3.2 bye\r\n", b"220 2.0.0 xclient ok\r\n",
    b"999 x\r\n", b"25\r\n", b"250-a\r\n251 b\r\n",
])


@given(handshake=st.lists(st.one_of(REPLIES, nasty(6)), max_size=5).map(b"".join),
       replies=st.lists(st.one_of(REPLIES, nasty(6)), max_size=6).map(b"".join),
       deliveries=st.lists(REPLIES, max_size=4).map(b"".join), body=nasty(10), rcpts=st.integers(1, 3),
       st_data=st.data())
@more(2)
def test_client_any_server_bytes(handshake, replies, deliveries, body, rcpts, st_data):
    """Handshake, then a pipelined transaction, then the message: each phase's events do
    not depend on how the server's bytes were split."""

    def play(split):
        core = LmtpClient(lhlo_name="proxy", xclient={"ADDR": "192.0.2.1", "PORT": "25"})
        transcript: list = []
        for phase, data in enumerate((handshake, replies, deliveries)):
            if phase == 1:
                if not core.ready:
                    break
                core.mail_from("a@b")
                for index in range(rcpts):
                    core.rcpt(f"r{index}@d")
                core.data_start()
            if phase == 2:
                if not core.data_open:
                    break
                core.data_chunk(body)
                core.data_end()
            for chunk in split(data):
                transcript.extend(core.receive(chunk))
            transcript.append(core.data_to_send())
        transcript.extend(core.connection_lost())
        return transcript

    first = play(lambda data: [data])
    assert play(lambda data: st_data.draw(cuts(data))) == first
    assert play(byte_by_byte) == first
    for item in first:
        assert isinstance(item, bytes | Ready | CommandReply | DeliveryReply | LmtpFailure)
        if isinstance(item, bytes):
            assert well_formed_lines(item)


# --------------------------------------------------------------------------- smtp_syntax


@given(line=st.one_of(lmtp_command(), st.binary(max_size=60)))
@more(2)
def test_command_parsers_raise_only_syntax_errors(line):
    try:
        command = smtp_syntax.parse_command(line.rstrip(b"\r\n"))
    except smtp_syntax.SmtpSyntaxError:
        return
    for parse in (smtp_syntax.parse_mail_from, smtp_syntax.parse_rcpt_to, smtp_syntax.parse_params,
                  smtp_syntax.xtext_decode):
        try:
            result = parse(command.args)
        except smtp_syntax.SmtpSyntaxError:
            continue
        if parse in (smtp_syntax.parse_mail_from, smtp_syntax.parse_rcpt_to):
            assert not any(ch in result[0] for ch in "\r\n\0")


@given(data=st.binary(max_size=200))
def test_xtext_round_trip(data):
    assert smtp_syntax.xtext_decode(smtp_syntax.xtext_encode(data)) == data


@given(message=st.lists(st.one_of(nasty(8), st.sampled_from([b".", b"\r\n.", b"\n.", b"\r\n.\r\n"])),
                        max_size=10).map(b"".join), st_data=st.data())
def test_dot_stuffing_round_trip_in_any_chunking(message, st_data):
    """What the stuffer sends, the unstuffer gives back (bare LFs as CRLF), however both are split."""
    stuffer = smtp_syntax.DotStuffer()
    wire = b"".join(stuffer.stuff(chunk) for chunk in st_data.draw(cuts(message))) + stuffer.finish()
    unstuffer = smtp_syntax.DotUnstuffer()
    content, rest = bytearray(), b""
    for chunk in st_data.draw(cuts(wire + b"NEXT")):
        got, rest_now = unstuffer.feed(chunk)
        content += got
        rest += rest_now
    assert unstuffer.done and rest == b"NEXT"
    base = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    normal = base + b"\r\n" if base and not base.endswith(b"\r\n") else base
    # a final bare CR is completed to the message's last line end, not given one of its own
    assert bytes(content) == normal or (message.endswith(b"\r") and bytes(content) == base + b"\n")


@given(data=st.binary(max_size=200), st_data=st.data())
def test_dot_unstuffer_chunking_independent(data, st_data):
    def unstuff(chunks):
        unstuffer = smtp_syntax.DotUnstuffer()
        content, rest = bytearray(), bytearray()
        for chunk in chunks:
            got, tail = unstuffer.feed(chunk)
            content += got
            rest += tail
            assert len(unstuffer._buf) <= 4
        return bytes(content), bytes(rest), unstuffer.done

    first = unstuff([data])
    assert unstuff(st_data.draw(cuts(data))) == first
    assert unstuff(byte_by_byte(data)) == first


@given(data=st.one_of(st.lists(REPLIES, max_size=5).map(b"".join), st.binary(max_size=200)),
       max_line=st.sampled_from([8, 64, 65536]), st_data=st.data())
def test_reply_reader_chunking_independent(data, max_line, st_data):
    def replies(chunks):
        reader = smtp_syntax.ReplyReader(max_line)
        out: list = []
        for chunk in chunks:
            reader.feed(chunk)
            while True:
                try:
                    reply = reader.next_reply()
                except (smtp_syntax.SmtpSyntaxError, smtp_syntax.LineTooLong) as exc:
                    return [*out, type(exc).__name__]
                if reply is None:
                    break
                out.append(reply)
        return out

    first = replies([data])
    assert replies(st_data.draw(cuts(data))) == first
    assert replies(byte_by_byte(data)) == first
