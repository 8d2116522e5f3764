"""Shared IMAP syntax: framing with literals, tokens, quoting, response lines."""

from __future__ import annotations

import pytest

from palomar.protocols.imap_syntax import (
    ArgReader,
    ImapSyntaxError,
    LineAssembler,
    LineTooLong,
    LiteralAnnounced,
    parse_response,
    quote,
)


def test_assembler_keeps_literals_inside_the_message():
    lines = LineAssembler(100)
    lines.feed(b"a LOGIN {3}\r\nx\ny {2+}\r\n\r\n\r\nnext\r\n")
    announced = lines.next_message()
    assert announced == LiteralAnnounced(3, True, b"a LOGIN {3}\r\n")
    lines.accept_literal()
    announced = lines.next_message()
    assert isinstance(announced, LiteralAnnounced) and not announced.synchronizing
    lines.accept_literal()
    message = lines.next_message()
    assert message == b"a LOGIN {3}\r\nx\ny {2+}\r\n\r\n"
    reader = ArgReader(message, 8)
    assert reader.astring() == b"x\ny"
    reader.sp()
    assert reader.astring() == b"\r\n"
    assert reader.at_end()
    assert lines.next_message() == b"next"
    assert lines.next_message() is None


def test_assembler_must_be_told_about_an_announced_literal():
    lines = LineAssembler(100)
    lines.feed(b"a ID {1}\r\n")
    assert isinstance(lines.next_message(), LiteralAnnounced)
    with pytest.raises(RuntimeError):
        lines.next_message()


def test_assembler_limits_literal_size():
    lines = LineAssembler(20)
    lines.feed(b"a ID {30}\r\n")
    lines.next_message()
    with pytest.raises(LineTooLong):
        lines.accept_literal()


def test_quote_escapes_and_refuses_line_breaks():
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(ValueError):
        quote("a\nb")


@pytest.mark.parametrize("data", [b'"abc', b'"a\\b"', b'"a\x00"', b"{3}\r\nab", b"{x}\r\n", b"("])
def test_bad_strings(data):
    with pytest.raises(ImapSyntaxError):
        ArgReader(data).astring()


def test_nstring():
    assert ArgReader(b"nil").nstring() is None
    assert ArgReader(b'""').nstring() == b""
    with pytest.raises(ImapSyntaxError):
        ArgReader(b"value").nstring()


def test_parse_response_lines():
    resp = parse_response(b"L NO [REFERRAL imap://[2001:db8::1]:143/] go there\r\n")
    assert (resp.tag, resp.status, resp.code, resp.code_args, resp.text) == (
        "L", "NO", "REFERRAL", "imap://[2001:db8::1]:143/", "go there")
    resp = parse_response(b"* ok [ALERT] x")
    assert (resp.status, resp.code, resp.code_args, resp.raw) == ("OK", "ALERT", None, b"* ok [ALERT] x\r\n")
    resp = parse_response(b"* 3 EXISTS")
    assert (resp.status, resp.code, resp.text) == ("3", None, "EXISTS")
    assert parse_response(b"+ abc").tag == "+"
    with pytest.raises(ImapSyntaxError):
        parse_response(b"L")
    with pytest.raises(ImapSyntaxError):
        parse_response(b"L OK [UNTERMINATED text")
