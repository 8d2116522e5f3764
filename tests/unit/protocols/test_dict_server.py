"""The dict protocol server core against the lines Dovecot 2.3's dict client writes (dict-client.c)."""

from __future__ import annotations

import pytest

from palomar.protocols.dict_server import (
    NOT_FOUND,
    DictServerConnection,
    Lookup,
    failed,
    found,
)
from palomar.protocols.tabescape import tab_escape, tab_unescape

# What Dovecot 2.3.19's dict passdb sent in an experiment (handshake and lookup in one read).
DOVECOT_LINES = b"H3\t2\t0\t\tpalomar\nLshared/passdb/alice@example.test\talice@example.test\n"


def test_dovecots_handshake_and_lookup() -> None:
    conn = DictServerConnection()
    assert conn.receive(DOVECOT_LINES) == [Lookup("shared/passdb/alice@example.test", "alice@example.test")]
    assert conn.error is None


def test_lines_split_anywhere_give_the_same_commands() -> None:
    for cut in range(1, len(DOVECOT_LINES)):
        conn = DictServerConnection()
        commands = conn.receive(DOVECOT_LINES[:cut]) + conn.receive(DOVECOT_LINES[cut:])
        assert commands == [Lookup("shared/passdb/alice@example.test", "alice@example.test")], cut


@pytest.mark.parametrize(("raw", "value"), [
    (b"plain", b"plain"),
    (b"a\x01tb", b"a\tb"),
    (b"\x010\x011\x01r\x01n", b"\x00\x01\r\n"),
    (b"palomar-referral\x01t127.0.0.9", b"palomar-referral\t127.0.0.9"),
])
def test_tab_escapes_round_trip(raw: bytes, value: bytes) -> None:
    assert tab_unescape(raw.decode(), strict=True) == value.decode()
    assert tab_escape(value.decode()) == raw.decode()


def test_hostile_user_bytes_stay_one_field() -> None:
    conn = DictServerConnection()
    hostile = "x\ty\r\n\"}{\x00\x01@example.test"
    line = b"H3\t2\t0\t\tp\nLshared/passdb/s\t" + tab_escape(hostile).encode() + b"\n"
    assert conn.receive(line) == [Lookup("shared/passdb/s", hostile)]


@pytest.mark.parametrize(("lines", "error"), [
    (b"Lshared/passdb/s\tu\n", "before the handshake"),
    (b"H2\t0\t0\t\tp\n", "major version"),
    (b"H3\t2\t0\t\tp\nH3\t2\t0\t\tp\n", "second dict handshake"),
    (b"H3\t2\t0\t\tp\nLshared/passdb/s\n", "without a user"),
    (b"H3\t2\t0\t\tp\nLshared/passdb/s\tbad\x01zescape\n", "bad escape"),
    (b"H3\t2\t0\t\tp\nLshared/passdb/s\t\xff\xfe\n", "not UTF-8"),
    (b"H3\t2\t0\t\tp\n\n", "empty"),
    (b"H3\t2\t0\t\tp\nL" + b"x" * 70000, "too long"),
])
def test_lines_a_dict_client_never_sends_set_an_error(lines: bytes, error: str) -> None:
    conn = DictServerConnection()
    assert conn.receive(lines) == []
    assert conn.error is not None and error in conn.error
    assert conn.receive(b"Lshared/passdb/s\tu\n") == []  # nothing more is read


def test_commands_before_a_bad_line_are_still_answered() -> None:
    conn = DictServerConnection()
    commands = conn.receive(DOVECOT_LINES + b"Lk\tbad\x01z\nLk\tlater\n")
    assert commands == [Lookup("shared/passdb/alice@example.test", "alice@example.test")]
    assert conn.error == "bad escape in a dict line"


def test_other_commands_close_the_connection() -> None:
    """A transaction's begin gets no reply in Dovecot's protocol: answering it would put every later
    reply out of step, so the read-only login check refuses the connection instead."""
    conn = DictServerConnection()
    assert conn.receive(b"H3\t2\t0\t\tp\nB1\nLk\tu\n") == []
    assert conn.error is not None and "'B'" in conn.error


def test_replies() -> None:
    assert found(b'{"nopassword": "y"}') == b'O{"nopassword": "y"}\n'
    assert found(b"a\tb\nc") == b"Oa\x01tb\x01nc\n"
    assert NOT_FOUND == b"N\n"
    assert failed("GeoDB down\n") == b"FGeoDB down\x01n\n"
