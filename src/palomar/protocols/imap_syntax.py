"""IMAP wire syntax shared by the login cores: framing with literals, argument tokens,
quoting and response lines (RFC 3501 / RFC 9051 grammar, the parts a login needs).

Strings come back as `str` decoded as UTF-8 with `surrogateescape`, so that 8-bit
user names and passwords survive byte-exactly (`.encode("utf-8", "surrogateescape")`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ArgReader",
    "ImapSyntaxError",
    "LineAssembler",
    "LineTooLong",
    "LiteralAnnounced",
    "Response",
    "decode",
    "parse_response",
    "quote",
]

# Any number of digits: a size too large to be real is still a literal (refused as too
# large, as Dovecot does), not a plain line whose "literal" bytes would be read as commands.
_LITERAL_AT_END = re.compile(rb"\{(\d+)(\+?)\}$")
_LITERAL_HERE = re.compile(rb"\{(\d+)\+?\}\r\n")
_MAX_LITERAL_DIGITS = 20
# atom-specials: ( ) { SP CTL % * " \ ]  (and 8-bit is not an atom char either)
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')


class ImapSyntaxError(ValueError):
    """The bytes do not follow the IMAP grammar."""


class LineTooLong(ValueError):
    """A line, or a command with its literals, exceeds the configured size."""


def decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def literal_size(digits: bytes) -> int:
    """The size a literal marker announces; absurdly long numbers saturate instead of
    costing a conversion of thousands of digits (they cannot fit any limit either way)."""
    digits = digits.lstrip(b"0") or b"0"
    return int(digits) if len(digits) <= _MAX_LITERAL_DIGITS else 10**_MAX_LITERAL_DIGITS


def is_atom_char(byte: int) -> bool:
    return 0x20 < byte < 0x7F and byte not in _ATOM_SPECIALS


def quote(value: str) -> str:
    """An IMAP quoted string; values that need a literal (CR, LF, NUL) are refused."""
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError("value cannot be sent as a quoted string")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- framing


@dataclass(frozen=True)
class LiteralAnnounced:
    """A line ended with `{n}` / `{n+}`; the caller accepts or refuses the literal."""

    size: int
    synchronizing: bool
    head: bytes  # the message so far, up to and including the `{n}` marker


class LineAssembler:
    """Splits a byte stream into IMAP messages, keeping literals inside them.

    A message is returned without its final line ending; a literal appears as
    `{n}\\r\\n` followed by its n raw bytes, exactly where the tokenizer expects it.
    `max_size` bounds one message including its literals, so a peer cannot make
    us buffer without limit.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        #: A per-message limit chosen from the message's first bytes (IMAP's ID may be longer).
        self.max_size_for: Callable[[bytes], int] | None = None
        self._buf = bytearray()
        self._partial = bytearray()
        self._literal_left = 0
        self._announced: LiteralAnnounced | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    def take_buffer(self) -> bytes:
        """Unparsed bytes (not yet part of a message); clears them."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def reset(self) -> None:
        self._buf.clear()
        self._partial.clear()
        self._literal_left = 0
        self._announced = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_message(self, *, literals: bool = True) -> bytes | LiteralAnnounced | None:
        """The next complete message, a literal announcement, or None (need more bytes).

        Raises LineTooLong when the message cannot fit in max_size.
        """
        if self._announced is not None:
            raise RuntimeError("accept_literal() or refuse_literal() first")
        while True:
            if self._literal_left:
                take = min(self._literal_left, len(self._buf))
                self._partial += self._buf[:take]
                del self._buf[:take]
                self._literal_left -= take
                if self._literal_left:
                    return None
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._partial) + len(self._buf) > self._limit() + 1:
                    raise LineTooLong("line too long")
                return None
            limit = self._limit()
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(self._partial) + len(line) > limit:
                raise LineTooLong("line too long")
            match = _LITERAL_AT_END.search(line) if literals else None
            if match is None:
                message = bytes(self._partial) + line
                self._partial.clear()
                return message
            self._partial += line + b"\r\n"
            self._announced = LiteralAnnounced(
                size=literal_size(match.group(1)), synchronizing=not match.group(2), head=bytes(self._partial)
            )
            return self._announced

    def accept_literal(self) -> None:
        """Read the announced literal's bytes as part of the message."""
        if self._announced is None:
            raise RuntimeError("no literal announced")
        if len(self._partial) + self._announced.size > self._limit():
            raise LineTooLong("literal too long")
        self._literal_left = self._announced.size
        self._announced = None

    def _limit(self) -> int:
        if self.max_size_for is None:
            return self.max_size
        # Only the first max_size bytes decide: a head longer than the normal limit is classified
        # the same way whether it arrived in one read or byte by byte.
        head = min(64, self.max_size)
        return self.max_size_for(bytes(self._partial[:head]) if self._partial else bytes(self._buf[:head]))

    def refuse_literal(self) -> None:
        """Drop the message so far (a synchronizing literal we will not wait for)."""
        self._announced = None
        self._partial.clear()


# --------------------------------------------------------------------------- tokens


class ArgReader:
    """Reads IMAP arguments from one assembled message."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def expect(self, char: bytes) -> None:
        if self.data[self.pos : self.pos + 1] != char:
            raise ImapSyntaxError(f"expected {char.decode()!r}")
        self.pos += 1

    def sp(self) -> None:
        self.expect(b" ")

    def end(self) -> None:
        if not self.at_end():
            raise ImapSyntaxError("unexpected extra arguments")

    def rest(self) -> bytes:
        data = self.data[self.pos :]
        self.pos = len(self.data)
        return data

    def atom(self, *, allow_bracket: bool = False) -> bytes:
        start = self.pos
        data = self.data
        while self.pos < len(data) and (
            is_atom_char(data[self.pos]) or (allow_bracket and data[self.pos] == ord("]"))
        ):
            self.pos += 1
        if self.pos == start:
            raise ImapSyntaxError("expected an atom")
        return data[start : self.pos]

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        data = self.data
        while self.pos < len(data):
            byte = data[self.pos]
            self.pos += 1
            if byte == 0x22:  # closing quote
                return bytes(out)
            if byte == 0x5C:  # backslash escapes only \ and "
                if self.pos >= len(data) or data[self.pos] not in (0x22, 0x5C):
                    raise ImapSyntaxError("bad escape in quoted string")
                out.append(data[self.pos])
                self.pos += 1
                continue
            if byte in (0x00, 0x0A, 0x0D):
                raise ImapSyntaxError("control character in quoted string")
            out.append(byte)
        raise ImapSyntaxError("unterminated quoted string")

    def literal(self) -> bytes:
        match = _LITERAL_HERE.match(self.data, self.pos)
        if match is None:
            raise ImapSyntaxError("bad literal")
        size = literal_size(match.group(1))
        start = match.end()
        if start + size > len(self.data):
            raise ImapSyntaxError("truncated literal")
        self.pos = start + size
        return self.data[start : self.pos]

    def string(self) -> bytes:
        char = self.peek()
        if char == 0x22:
            return self.quoted()
        if char == 0x7B:
            return self.literal()
        raise ImapSyntaxError("expected a string")

    def astring(self) -> bytes:
        if self.peek() in (0x22, 0x7B):
            return self.string()
        return self.atom(allow_bracket=True)

    def nstring(self) -> bytes | None:
        if self.peek() in (0x22, 0x7B):
            return self.string()
        word = self.atom()
        if word.upper() != b"NIL":
            raise ImapSyntaxError("expected a string or NIL")
        return None


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True)
class Response:
    """One response line: `tag` is "*" for untagged, "+" for a continuation request."""

    tag: str
    status: str  # OK NO BAD BYE PREAUTH, another untagged keyword, or "" for "+"
    code: str | None  # response code name, upper-cased ("CAPABILITY", "REFERRAL")
    code_args: str | None
    text: str
    raw: bytes  # the line as received, with CRLF


def _split_code(rest: str) -> tuple[str | None, str | None, str]:
    """`[CODE args] text` -> (CODE, args, text). Brackets nest, for IPv6 URLs."""
    if not rest.startswith("["):
        return None, None, rest
    depth = 0
    for index, char in enumerate(rest):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                inner = rest[1:index]
                text = rest[index + 1 :].removeprefix(" ")
                name, _, args = inner.partition(" ")
                return name.upper(), (args if args else None), text
    raise ImapSyntaxError("unterminated response code")


def parse_response(line: bytes) -> Response:
    """Parse a response line (with or without CRLF)."""
    raw = line if line.endswith(b"\n") else line + b"\r\n"
    text = decode(line.rstrip(b"\r\n"))
    if text.startswith("+"):
        return Response("+", "", None, None, text[1:].removeprefix(" "), raw)
    tag, sep, rest = text.partition(" ")
    if not sep or not tag:
        raise ImapSyntaxError("response without tag")
    status, _, rest = rest.partition(" ")
    status = status.upper()
    if not status:
        raise ImapSyntaxError("response without status")
    if status in ("OK", "NO", "BAD", "BYE", "PREAUTH"):
        code, code_args, rest = _split_code(rest)
    else:
        code = code_args = None
    return Response(tag, status, code, code_args, rest, raw)
