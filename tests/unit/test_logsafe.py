"""The log sanitiser (Dovecot's `str_sanitize()` habit) and the formatter that backs it up."""

from __future__ import annotations

import logging
import sys

import pytest

from palomar.logsafe import MAX_LENGTH, OneLineFormatter, safe


@pytest.mark.parametrize("value,expected", [
    ("user1@example.test", "user1@example.test"),
    ("", ""),
    ("a\r\nb", "a??b"),
    ("nul\x00byte", "nul?byte"),
    ("tab\there", "tab?here"),
    ("esc\x1b[31mred", "esc?[31mred"),  # terminal escapes
    ("del\x7f", "del?"),
    ("c1\x85next", "c1?next"),  # NEL, a line break for some readers
    ("ls\u2028ps\u2029", "ls?ps?"),
    ("bad\udcffbyte", "bad?byte"),  # an undecodable byte kept by surrogateescape
    ("münchen.example", "münchen.example"),  # printable non-ASCII stays
    (None, "None"),
    (42, "42"),
    (ValueError("x\ny"), "x?y"),
])
def test_safe_replaces_unsafe_characters(value: object, expected: str) -> None:
    assert safe(value) == expected


@pytest.mark.parametrize("value,limit,expected", [
    ("a" * MAX_LENGTH, MAX_LENGTH, "a" * MAX_LENGTH),
    ("a" * (MAX_LENGTH + 1), MAX_LENGTH, "a" * (MAX_LENGTH - 3) + "..."),
    ("abcdef", 5, "ab..."),
    ("abc\r\ndef", 6, "abc..."),
    ("\r\n\r\n\r\n", 5, "??..."),
    ("abcdef", 2, "..."),  # too small for any text: the ellipsis alone
])
def test_safe_truncates_with_an_ellipsis(value: str, limit: int, expected: str) -> None:
    assert safe(value, limit) == expected


def record(msg: str, *args: object, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("palomar.test", logging.INFO, __file__, 1, msg, args, exc_info)


def test_formatter_keeps_every_message_on_one_line() -> None:
    formatter = OneLineFormatter("%(levelname)s %(name)s: %(message)s")
    line = formatter.format(record("user=%s result=%s", "x\r\nINFO palomar.session: user=admin", "Fail\x00"))
    assert line == "INFO palomar.test: user=x??INFO palomar.session: user=admin result=Fail?"


def test_formatter_keeps_tracebacks_multi_line_but_without_cr_or_nul() -> None:
    formatter = OneLineFormatter("%(message)s")
    try:
        raise RuntimeError("bad\r\x00thing")
    except RuntimeError:
        text = formatter.format(record("failed: %s", "a\nb", exc_info=sys.exc_info()))
    first, *rest = text.split("\n")
    assert first == "failed: a?b"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "RuntimeError: bad??thing"
    assert "\r" not in text and "\x00" not in text
