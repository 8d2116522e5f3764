"""SMTP wire syntax: framing limits, replies, commands and paths, xtext/XCLIENT, dot transparency."""

from __future__ import annotations

import pytest

from palomar.protocols.smtp_syntax import (
    DotStuffer,
    DotUnstuffer,
    LineReader,
    LineTooLong,
    ReplyReader,
    SmtpSyntaxError,
    ehlo_keywords,
    format_reply,
    format_xclient,
    parse_command,
    parse_mail_from,
    parse_params,
    parse_rcpt_to,
    parse_reply_line,
    reply_line,
    xclient_address,
    xtext_decode,
    xtext_encode,
)

# --------------------------------------------------------------------------- LineReader


def lines_of(reader: LineReader) -> list[bytes | str]:
    out: list[bytes | str] = []
    while True:
        try:
            line = reader.next_line()
        except LineTooLong:
            out.append("TOO-LONG")
            continue
        if line is None:
            return out
        out.append(line)


def test_line_reader_crlf_bare_lf_and_partial() -> None:
    reader = LineReader(100)
    reader.feed(b"NOOP\r\nRSET\nQUI")
    assert lines_of(reader) == [b"NOOP", b"RSET"]
    reader.feed(b"T\r")
    assert lines_of(reader) == []
    reader.feed(b"\n")
    assert lines_of(reader) == [b"QUIT"]


def test_line_reader_exact_limit_is_accepted() -> None:
    reader = LineReader(10)
    reader.feed(b"x" * 10 + b"\r\n" + b"y" * 11 + b"\r\nNOOP\r\n")
    assert lines_of(reader) == [b"x" * 10, "TOO-LONG", b"NOOP"]


def test_line_reader_overlong_line_without_lf_is_dropped_as_it_streams() -> None:
    reader = LineReader(10)
    reader.feed(b"z" * 50)
    assert lines_of(reader) == ["TOO-LONG"]
    assert reader.buffered == 0
    reader.feed(b"z" * 5000)  # still the same line: dropped, not buffered, reported once
    assert lines_of(reader) == []
    assert reader.buffered == 0
    reader.feed(b"zz\r\nNOOP\r\n")
    assert lines_of(reader) == [b"NOOP"]


def test_line_reader_one_byte_at_a_time() -> None:
    reader = LineReader(100)
    got: list[bytes | str] = []
    for byte in b"EHLO a\r\nNOOP\r\n":
        reader.feed(bytes([byte]))
        got += lines_of(reader)
    assert got == [b"EHLO a", b"NOOP"]


def test_line_reader_take_and_unread() -> None:
    reader = LineReader(100)
    reader.feed(b"hello\r\nNOOP\r\n")
    assert reader.take(3) == b"hel"
    reader.unread(b"xx")
    assert lines_of(reader) == [b"xxlo", b"NOOP"]


# --------------------------------------------------------------------------- replies


def replies_of(data: bytes) -> list:
    reader = ReplyReader()
    reader.feed(data)
    out = []
    while (reply := reader.next_reply()) is not None:
        out.append(reply)
    return out


def test_reply_single_line_with_enhanced_code() -> None:
    [reply] = replies_of(b"250 2.1.0 OK\r\n")
    assert (reply.code, reply.enhanced, reply.lines, reply.text) == (250, "2.1.0", ("OK",), "OK")
    assert reply.positive and not reply.transient and not reply.permanent
    assert reply.raw == b"250 2.1.0 OK\r\n"


def test_reply_multi_line_ehlo() -> None:
    data = b"250-mx.example\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250 PIPELINING\r\n"
    [reply] = replies_of(data)
    assert reply.lines == ("mx.example", "8BITMIME", "AUTH PLAIN LOGIN", "PIPELINING")
    assert reply.enhanced is None
    assert reply.raw == data
    assert ehlo_keywords(reply) == {"8BITMIME": [], "AUTH": ["PLAIN", "LOGIN"], "PIPELINING": []}


def test_reply_enhanced_code_repeated_on_each_line_is_stripped() -> None:
    [reply] = replies_of(b"550-5.1.1 first\r\n550 5.1.1 second\r\n")
    assert reply.enhanced == "5.1.1"
    assert reply.lines == ("first", "second")
    assert reply.first_line() == "550-5.1.1 first"


def test_reply_enhanced_code_class_must_match() -> None:
    [reply] = replies_of(b"250 5.1.1 odd\r\n")
    assert reply.enhanced is None
    assert reply.text == "5.1.1 odd"


def test_reply_bare_code_and_334_with_empty_text() -> None:
    first, second = replies_of(b"354\r\n334 \r\n")
    assert (first.code, first.text) == (354, "")
    assert (second.code, second.lines) == (334, ("",))


def test_replies_pipelined_and_split_one_byte_at_a_time() -> None:
    data = b"250 2.1.0 OK\r\n250-a\r\n250 b\r\n550 5.1.1 <x@y> no\r\n"
    reader = ReplyReader()
    got = []
    for byte in data:
        reader.feed(bytes([byte]))
        while (reply := reader.next_reply()) is not None:
            got.append(reply)
    assert [(r.code, r.lines) for r in got] == [(250, ("OK",)), (250, ("a", "b")), (550, ("<x@y> no",))]


@pytest.mark.parametrize("line", [b"25 x", b"abc def", b"250_x", b"650 x", b"", b"2500 x"])
def test_reply_line_invalid(line: bytes) -> None:
    with pytest.raises(SmtpSyntaxError):
        parse_reply_line(line)


def test_reply_code_change_inside_multiline_is_an_error() -> None:
    with pytest.raises(SmtpSyntaxError, match="code changed"):
        replies_of(b"250-a\r\n251 b\r\n")


def test_reply_reader_line_limit() -> None:
    reader = ReplyReader(max_line=20)
    reader.feed(b"250 " + b"x" * 40)
    with pytest.raises(LineTooLong):
        reader.next_reply()


def test_reply_reader_bounds_a_whole_multiline_reply() -> None:
    """Found by fuzzing: continuation lines that never end were buffered without a bound."""
    reader = ReplyReader(max_line=100)
    reader.feed(b"250-a\r\n" * 14)
    assert reader.next_reply() is None
    reader.feed(b"250-a\r\n")
    with pytest.raises(LineTooLong):
        reader.next_reply()
    reader = ReplyReader(max_line=100)
    reader.feed(b"250-a\r\n" * 13 + b"250 b\r\n")
    assert reader.next_reply().lines == ("a",) * 13 + ("b",)


def test_format_reply() -> None:
    assert format_reply(250, "2.0.0", "OK") == b"250 2.0.0 OK\r\n"
    assert format_reply(250, None, ["host", "8BITMIME", "SIZE 100"]) == (
        b"250-host\r\n250-8BITMIME\r\n250 SIZE 100\r\n")
    assert format_reply(550, "5.1.1", ["a", "b"]) == b"550-5.1.1 a\r\n550 5.1.1 b\r\n"
    assert format_reply(334, None, "") == b"334 \r\n"
    with pytest.raises(ValueError):
        format_reply(250, "5.0.0", "mismatch")
    with pytest.raises(ValueError):
        format_reply(250, None, "two\r\nlines")
    with pytest.raises(ValueError):
        format_reply(199, None, "x")


def test_reply_line_checks_caller_replies() -> None:
    assert reply_line("250 2.1.5 OK") == b"250 2.1.5 OK\r\n"
    assert reply_line(b"250 2.1.5 OK\r\n") == b"250 2.1.5 OK\r\n"
    assert reply_line("452-4.2.2 a\r\n452 4.2.2 b") == b"452-4.2.2 a\r\n452 4.2.2 b\r\n"
    for bad in ("hello", "250-no end", "250 a\r\n251 b", "250 a\nb", "250 a\r\n250 b"):
        with pytest.raises(ValueError):
            reply_line(bad)


# --------------------------------------------------------------------------- commands


def test_parse_command() -> None:
    command = parse_command(b"mail FROM:<a@b> SIZE=10")
    assert (command.verb, command.args) == ("MAIL", "FROM:<a@b> SIZE=10")
    assert parse_command(b"QUIT").args == ""
    for bad in (b"", b" NOOP", b"1ABC x", b"NO\x00OP"):
        with pytest.raises(SmtpSyntaxError):
            parse_command(bad)


@pytest.mark.parametrize("args", ['FROM:<"a\rb"@x>', 'FROM:<"a\\\rb"@x>', 'FROM:<"a\0b"@x>', 'FROM:<"a\x7f"@x>',
                                  'FROM:<"a\\\nb"@x>'])
def test_parse_path_refuses_controls_inside_quotes(args: str) -> None:
    """Found by fuzzing: quoted local parts (and their backslash escapes) let CR, LF and NUL through."""
    with pytest.raises(SmtpSyntaxError, match="Invalid character in path"):
        parse_mail_from(args)
    assert parse_mail_from('FROM:<"a\\"b c"@x>') == ('"a\\"b c"@x', {})


def test_parse_mail_from() -> None:
    assert parse_mail_from("FROM:<a@example.com>") == ("a@example.com", {})
    assert parse_mail_from("from:<> BODY=8BITMIME size=123") == ("", {"BODY": "8BITMIME", "SIZE": "123"})
    assert parse_mail_from("FROM: <a@b>") == ("a@b", {})  # a space after the colon is tolerated
    assert parse_mail_from("FROM:<@relay1,@relay2:u@d>") == ("u@d", {})  # source route dropped
    assert parse_mail_from('FROM:<"john doe"@d>') == ('"john doe"@d', {})
    assert parse_mail_from("FROM:<a@[192.0.2.1]> SMTPUTF8") == ("a@[192.0.2.1]", {"SMTPUTF8": None})


@pytest.mark.parametrize("args", [
    "FROM:a@b", "FROM:<a@b", "TO:<a@b>", "FROM:<a b@c>", "FROM:<ab>", "FROM:<a@b>x",
    "FROM:<a@b> SIZE=", "FROM:<a@b> =x", "FROM:<a@b> SIZE=1 size=2", "FROM:<@r>", "FROM:<a@b\x01>",
    'FROM:<"a\x00b"@c>', 'FROM:<"a\\\rb"@c>', 'FROM:<"a\\\x7f"@c>',  # no control character, even quoted
])
def test_parse_mail_from_invalid(args: str) -> None:
    with pytest.raises(SmtpSyntaxError, match="^Invalid FROM: "):
        parse_mail_from(args)


def test_parse_rcpt_to() -> None:
    assert parse_rcpt_to("TO:<u@example.test> NOTIFY=NEVER") == ("u@example.test", {"NOTIFY": "NEVER"})
    assert parse_rcpt_to("TO:<Postmaster>") == ("Postmaster", {})
    assert parse_rcpt_to("to:<ü@bücher.example>") == ("ü@bücher.example", {})
    for bad in ("TO:<>", "TO:<nobody>", "FROM:<a@b>", "TO:"):
        with pytest.raises(SmtpSyntaxError, match="^Invalid TO: "):
            parse_rcpt_to(bad)


def test_parse_params() -> None:
    assert parse_params("") == {}
    assert parse_params("A=1  b X-Y=z") == {"A": "1", "B": None, "X-Y": "z"}
    for bad in ("A=b=c", "-A=1", "A=\x7f"):
        with pytest.raises(SmtpSyntaxError):
            parse_params(bad)


# --------------------------------------------------------------------------- xtext and XCLIENT


def test_xtext_round_trip() -> None:
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_encode("Zm9v=") == "Zm9v+3D"
    assert xtext_encode("é") == "+C3+A9"
    assert xtext_encode("[UNAVAILABLE]") == "[UNAVAILABLE]"
    assert xtext_decode("a+2Bb+3dc+20d") == b"a+b=c d"
    for bad in ("+2", "+ZZ", "a=b", "a b"):
        with pytest.raises(SmtpSyntaxError):
            xtext_decode(bad)


def test_xclient_address_forms() -> None:
    assert xclient_address("2001:db8::5", ipv6_prefix=True) == "IPV6:2001:db8::5"
    assert xclient_address("IPv6:2001:db8::5", ipv6_prefix=False) == "2001:db8::5"
    assert xclient_address("[2001:db8::5]", ipv6_prefix=True) == "IPV6:2001:db8::5"
    assert xclient_address("192.0.2.1", ipv6_prefix=True) == "192.0.2.1"


def test_format_xclient_only_advertised_in_dovecot_order() -> None:
    attrs = {"ADDR": "2001:db8::5", "PORT": "4444", "SESSION": "s1", "HELO": "client example", "TTL": "4",
             "DESTNAME": "not-advertised.example"}
    advertised = ["ADDR", "PORT", "PROTO", "HELO", "LOGIN", "SESSION", "TTL", "TIMEOUT", "FORWARD"]
    assert format_xclient(attrs, advertised) == [
        b"XCLIENT HELO=client+20example SESSION=s1 TTL=4 PORT=4444 ADDR=IPV6:2001:db8::5\r\n"]
    assert format_xclient(attrs, advertised, ipv6_prefix=False)[0].endswith(b" ADDR=2001:db8::5\r\n")
    assert format_xclient({"ADDR": "[UNAVAILABLE]"}, ["ADDR"]) == [b"XCLIENT ADDR=[UNAVAILABLE]\r\n"]
    assert format_xclient(attrs, ["NAME"]) == []


def test_format_xclient_splits_long_lines_under_512_bytes() -> None:
    attrs = {"HELO": "h" * 255, "LOGIN": "l" * 255, "SESSION": "s" * 100, "ADDR": "192.0.2.1"}
    lines = format_xclient(attrs, ["HELO", "LOGIN", "SESSION", "ADDR"])
    assert len(lines) == 2
    assert all(len(line) <= 512 and line.startswith(b"XCLIENT ") for line in lines)
    joined = b" ".join(line[8:-2] for line in lines)
    assert joined == b"HELO=" + b"h" * 255 + b" LOGIN=" + b"l" * 255 + b" SESSION=" + b"s" * 100 + (
        b" ADDR=192.0.2.1")
    with pytest.raises(ValueError, match="HELO"):
        format_xclient({"HELO": "h" * 600}, ["HELO"])


# --------------------------------------------------------------------------- DATA transparency


def unstuff(chunks: list[bytes]) -> tuple[bytes, bytes, bool]:
    decoder = DotUnstuffer()
    content = bytearray()
    rest = bytearray()
    for chunk in chunks:
        data, after = decoder.feed(chunk)
        content += data
        rest += after
    return bytes(content), bytes(rest), decoder.done


def every_split(data: bytes) -> list[list[bytes]]:
    splits = [[data], [bytes([b]) for b in data]]
    splits += [[data[:i], data[i:]] for i in range(1, len(data))]
    return splits


@pytest.mark.parametrize("wire,content,rest", [
    (b"a\r\n.\r\n", b"a\r\n", b""),
    (b".\r\n", b"", b""),
    (b"..x\r\n.\r\nQUIT\r\n", b".x\r\n", b"QUIT\r\n"),
    (b"a\r\n..\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n", b""),
    (b"a\r\n...\r\n.\r\n", b"a\r\n..\r\n", b""),
    (b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n", b""),
    (b"a.\r\n.\r\n", b"a.\r\n", b""),
    (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n", b""),  # bare-LF dot lines are content (no smuggling)
    (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n", b""),
    (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\nb\r\n", b""),  # `.` then bare LF: a dot line, stuffed dot removed
    (b"\r\n.\r\n", b"\r\n", b""),
])
def test_dot_unstuffing_at_every_chunk_boundary(wire: bytes, content: bytes, rest: bytes) -> None:
    for chunks in every_split(wire):
        assert unstuff(chunks) == (content, rest, True), chunks


def test_dot_unstuffing_incomplete_and_size() -> None:
    decoder = DotUnstuffer()
    data, rest = decoder.feed(b"abc\r\n.")
    assert (data, rest, decoder.done) == (b"abc", b"", False)
    data, rest = decoder.feed(b"\r")
    assert (data, decoder.done) == (b"", False)
    data, rest = decoder.feed(b"\nNEXT")
    assert (data, rest, decoder.done) == (b"\r\n", b"NEXT", True)
    assert decoder.size == 5
    assert decoder.feed(b"more") == (b"", b"more")


def stuff(chunks: list[bytes]) -> bytes:
    encoder = DotStuffer()
    return b"".join(encoder.stuff(chunk) for chunk in chunks) + encoder.finish()


@pytest.mark.parametrize("message,wire", [
    (b"a\r\n", b"a\r\n.\r\n"),
    (b"", b".\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"a\r\n.b\r\n..\r\n", b"a\r\n..b\r\n...\r\n.\r\n"),
    (b"no final newline", b"no final newline\r\n.\r\n"),
    (b"a\nb\n", b"a\r\nb\r\n.\r\n"),  # bare LF sent as CRLF
    (b"a\n.\n", b"a\r\n..\r\n.\r\n"),
    (b"cr at end\r", b"cr at end\r\n.\r\n"),
    (b"a\rb\r\n", b"a\rb\r\n.\r\n"),  # a bare CR is left alone
])
def test_dot_stuffing_at_every_chunk_boundary(message: bytes, wire: bytes) -> None:
    for chunks in every_split(message) if message else [[message]]:
        assert stuff(chunks) == wire, chunks


def test_stuffing_then_unstuffing_round_trips() -> None:
    message = b".start\r\nmid\r\n..two\r\n.\r\nend.\r\n"
    content, rest, done = unstuff([stuff([message[:7], message[7:]])])
    assert (content, rest, done) == (message, b"", True)
