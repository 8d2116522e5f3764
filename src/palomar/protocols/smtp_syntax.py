"""SMTP-family wire syntax shared by the Submission and LMTP cores: line framing with
limits, replies (multi-line, enhanced status codes), commands with their paths and ESMTP
parameters, XCLIENT formatting (xtext) and the DATA dot transparency in both directions.

Texts come back as `str` decoded as UTF-8 with `surrogateescape`, so 8-bit addresses and
texts survive byte-exactly (`.encode("utf-8", "surrogateescape")`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "COMMAND_LINE_LIMIT",
    "TEXT_LINE_LIMIT",
    "XCLIENT_ORDER",
    "Command",
    "DotStuffer",
    "DotUnstuffer",
    "LineReader",
    "LineTooLong",
    "Reply",
    "ReplyReader",
    "SmtpSyntaxError",
    "decode",
    "ehlo_keywords",
    "format_reply",
    "format_xclient",
    "greeting_reply",
    "hello_name_error",
    "parse_command",
    "parse_mail_from",
    "parse_params",
    "parse_path",
    "parse_rcpt_to",
    "parse_reply_line",
    "reply_line",
    "xclient_address",
    "xtext_decode",
    "xtext_encode",
]

#: RFC 5321 4.5.3.1.4 and .6: a command line, and a reply or text line, including CRLF.
COMMAND_LINE_LIMIT = 512
TEXT_LINE_LIMIT = 1000

#: The order Dovecot's XCLIENT client sends attributes in; others follow in the caller's order.
XCLIENT_ORDER: tuple[str, ...] = (
    "HELO", "PROTO", "LOGIN", "SESSION", "CLIENT-TRANSPORT", "DESTNAME", "TTL", "TIMEOUT",
    "PORT", "ADDR", "DESTPORT", "DESTADDR", "FORWARD",
)
_XCLIENT_LINE_MAX = 510  # without the CRLF, as Dovecot splits them

_VERB = re.compile(rb"[A-Za-z][A-Za-z0-9-]*\Z")
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})\Z")
_PARAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_BARE_LF = re.compile(rb"(?<!\r)\n")


class SmtpSyntaxError(ValueError):
    """The bytes do not follow the SMTP grammar; the message is fit for a 501/500 reply text."""


class LineTooLong(ValueError):
    """A line exceeded the configured maximum; the reader skips the rest of it."""


def decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------- framing


class LineReader:
    """Splits a byte stream into lines (CRLF, or a bare LF tolerated as clients send it).

    `max_line` bounds one line without its ending. An over-long line raises LineTooLong
    once; the rest of it, up to its LF, is then dropped without being buffered, so the
    session can answer `500 5.5.2 Line too long` and carry on with the next line.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    def unread(self, data: bytes) -> None:
        """Put bytes back in front (what followed the end of a DATA body)."""
        self._buf[:0] = data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take(self, size: int) -> bytes:
        """Up to `size` raw bytes from the front (a BDAT chunk)."""
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def take_buffer(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def reset(self) -> None:
        self._buf.clear()
        self._skipping = False

    def peek_line(self) -> bytes | None:
        """The next line without its ending, left in place; None when it is not complete yet, is
        too long, or an over-long line is being skipped (`next_line` deals with those)."""
        if self._skipping:
            return None
        end = self._buf.find(b"\n")
        if end < 0 or end > self.max_line + 1:
            return None
        line = bytes(self._buf[:end])
        return line[:-1] if line.endswith(b"\r") else line

    def next_line(self) -> bytes | None:
        """The next line without its ending, or None when more bytes are needed."""
        while True:
            end = self._buf.find(b"\n")
            if self._skipping:
                if end < 0:
                    self._buf.clear()
                    return None
                del self._buf[: end + 1]
                self._skipping = False
                continue
            if end < 0:
                if len(self._buf) > self.max_line + 1:  # +1: a CR may still be followed by LF
                    self._buf.clear()
                    self._skipping = True
                    raise LineTooLong("line too long")
                return None
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                raise LineTooLong("line too long")
            return line


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class Reply:
    """One complete reply. `lines` are the texts after the code and the enhanced code."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]
    raw: bytes  # exactly as received, every line with CRLF

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def first_line(self) -> str:
        """`code [enhanced] text` of the first line, for logs and one-line errors."""
        return decode(self.raw.split(b"\r\n", 1)[0].rstrip(b"\r\n"))


def parse_reply_line(line: bytes) -> tuple[int, bool, str]:
    """`250-text` -> (250, False, "text"); `250 text` or `250` -> (250, True, ...)."""
    if len(line) < 3 or not line[:3].isdigit() or line[0:1] not in b"2345":
        raise SmtpSyntaxError(f"invalid reply line: {_shorten(line)}")
    sep = line[3:4]
    if sep not in (b"", b" ", b"-"):
        raise SmtpSyntaxError(f"invalid reply line: {_shorten(line)}")
    return int(line[:3]), sep != b"-", decode(line[4:])


def _split_enhanced(code: int, text: str) -> tuple[str | None, str]:
    """`2.1.0 OK` -> ("2.1.0", "OK") when the class matches the reply code's first digit."""
    head, _, rest = text.partition(" ")
    match = _ENHANCED.match(head)
    if match is None or int(match.group(1)) != code // 100:
        return None, text
    return head, rest


class ReplyReader:
    """Assembles reply lines into Reply objects (client side).

    `max_line` bounds one line and also a whole multi-line reply (like Dovecot's
    max_reply_size), so a server whose continuation lines never end cannot make us
    buffer without limit."""

    def __init__(self, max_line: int = 65536) -> None:
        self.max_reply = max_line
        self._lines = LineReader(max_line)
        self._pending: list[tuple[int, str]] = []
        self._raw = bytearray()

    def feed(self, data: bytes) -> None:
        self._lines.feed(data)

    def take_buffer(self) -> bytes:
        """Bytes not yet part of a complete reply line; clears them."""
        return self._lines.take_buffer()

    def next_reply(self) -> Reply | None:
        """The next complete reply or None; raises SmtpSyntaxError or LineTooLong (a line or the
        whole reply over the limit) on bad input."""
        while True:
            line = self._lines.next_line()
            if line is None:
                return None
            code, last, text = parse_reply_line(line)
            if self._pending and self._pending[0][0] != code:
                raise SmtpSyntaxError("reply code changed inside a multi-line reply")
            if len(self._raw) + len(line) + 2 > self.max_reply:
                self._pending.clear()
                self._raw.clear()
                raise LineTooLong("reply too long")
            self._pending.append((code, text))
            self._raw += line + b"\r\n"
            if not last:
                continue
            enhanced, first = _split_enhanced(code, self._pending[0][1])
            texts = [first]
            for _, more in self._pending[1:]:
                more_enhanced, more_text = _split_enhanced(code, more)
                texts.append(more_text if enhanced is not None and more_enhanced == enhanced else more)
            reply = Reply(code, enhanced, tuple(texts), bytes(self._raw))
            self._pending.clear()
            self._raw.clear()
            return reply


def format_reply(code: int, enhanced: str | None, text: str | Sequence[str]) -> bytes:
    """A reply with CRLFs: one line, or `code-...` continuation lines for a sequence of texts.

    The enhanced code, when given, is repeated on every line (RFC 2034)."""
    if not 200 <= code <= 599:
        raise ValueError(f"invalid reply code {code}")
    if enhanced is not None and (not _ENHANCED.match(enhanced) or int(enhanced[0]) != code // 100):
        raise ValueError(f"invalid enhanced status code {enhanced!r}")
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        texts = [""]
    out = bytearray()
    for index, item in enumerate(texts):
        if "\r" in item or "\n" in item:
            raise ValueError("reply text must be a single line")
        sep = " " if index == len(texts) - 1 else "-"
        body = f"{enhanced} {item}" if enhanced is not None else item
        out += encode(f"{code}{sep}{body}") + b"\r\n"
    return bytes(out)


def greeting_reply(hostname: str, greeting: str) -> bytes:
    """The `220 <hostname> <greeting>` a server opens with; raises ValueError for a host name
    that is not one word or a text that cannot be one line (so a bad config fails early)."""
    if not hostname or any(ch.isspace() for ch in hostname):
        raise ValueError("hostname must be one word")
    return format_reply(220, None, f"{hostname} {greeting}")


def reply_line(reply: str | bytes) -> bytes:
    """A caller-given reply (`"250 2.1.5 OK"`, with or without CRLF) checked and CRLF-terminated.

    Multi-line replies are accepted when every line is well formed and only the last one
    has a space after the code."""
    raw = encode(reply) if isinstance(reply, str) else bytes(reply)
    raw = raw.removesuffix(b"\r\n")
    lines = raw.split(b"\r\n")
    codes = set()
    for index, line in enumerate(lines):
        if b"\n" in line or b"\r" in line:
            raise ValueError("reply lines must end with CRLF")
        code, last, _ = parse_reply_line(line)
        if last != (index == len(lines) - 1):
            raise ValueError("only the last reply line may have a space after the code")
        codes.add(code)
    if len(codes) != 1:
        raise ValueError("all lines of a reply must have the same code")
    return raw + b"\r\n"


def ehlo_keywords(reply: Reply) -> dict[str, list[str]]:
    """The extensions of an EHLO/LHLO reply: `{"AUTH": ["PLAIN", "LOGIN"], "PIPELINING": []}`.

    The first line is the server's name and greeting, not an extension."""
    keywords: dict[str, list[str]] = {}
    for line in reply.lines[1:]:
        words = line.split()
        if words:
            keywords[words[0].upper()] = words[1:]
    return keywords


# --------------------------------------------------------------------------- commands


def hello_name_error(name: str) -> str | None:
    """The 501 reply for an unusable EHLO/HELO/LHLO argument (already stripped), or None."""
    if not name:
        return "501 Missing hostname"
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in name):
        return "501 5.5.4 Invalid hostname"
    return None


@dataclass(frozen=True)
class Command:
    """A command line: `verb` upper-cased, `args` the rest after one space (may be empty)."""

    verb: str
    args: str
    raw: bytes


def parse_command(line: bytes) -> Command:
    verb, sep, rest = line.partition(b" ")
    if not _VERB.match(verb):
        raise SmtpSyntaxError("Invalid command syntax")
    return Command(verb.decode("ascii").upper(), decode(rest) if sep else "", line)


def _is_control(char: str) -> bool:
    return ord(char) < 0x20 or ord(char) == 0x7F


def parse_path(text: str, *, allow_empty: bool) -> tuple[str, str]:
    """`<addr> rest` -> (addr, rest). A source route (`<@a,@b:u@d>`) is dropped, as RFC 5321
    tells servers to; `<>` is allowed only where `allow_empty` says so."""
    if not text.startswith("<"):
        raise SmtpSyntaxError("Missing '<' at beginning of path")
    address, in_quote, index = [], False, 1
    while index < len(text):
        char = text[index]
        if in_quote:
            escaped = char == "\\" and index + 1 < len(text)
            if _is_control(text[index + 1] if escaped else char):
                # RFC 5321 qtextSMTP and quoted-pairSMTP are printable only: a CR or NUL in
                # an address would reach logs, replies and the next hop's command line.
                raise SmtpSyntaxError("Invalid character in path")
            if escaped:
                address.append(text[index : index + 2])
                index += 2
                continue
            if char == '"':
                in_quote = False
        elif char == '"':
            in_quote = True
        elif char == ">":
            break
        elif char in "< \t" or _is_control(char):
            raise SmtpSyntaxError("Invalid character in path")
        address.append(char)
        index += 1
    else:
        raise SmtpSyntaxError("Missing '>' at end of path")
    value = "".join(address)
    rest = text[index + 1 :]
    if value.startswith("@"):  # obsolete source route
        route, colon, value = value.partition(":")
        if not colon:
            raise SmtpSyntaxError("Invalid source route")
    if not value:
        if not allow_empty:
            raise SmtpSyntaxError("Empty path not allowed")
        return "", rest
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        raise SmtpSyntaxError("Invalid address")
    if local.startswith('"') != local.endswith('"') or (local.startswith('"') and len(local) < 2):
        raise SmtpSyntaxError("Invalid local part")
    if any(char in domain for char in '"\\()<>,;: ') and not domain.startswith("["):
        raise SmtpSyntaxError("Invalid domain")
    return value, rest


def parse_params(text: str) -> dict[str, str | None]:
    """ESMTP parameters `KEY[=VALUE] ...` -> {KEY upper-cased: value or None}."""
    params: dict[str, str | None] = {}
    for word in text.split(" "):
        if not word:
            continue
        key, eq, value = word.partition("=")
        if not _PARAM_KEY.match(key):
            raise SmtpSyntaxError(f"Invalid parameter {word[:40]!r}")
        if eq and (not value or any(ord(c) < 0x21 or c == "=" or ord(c) == 0x7F for c in value)):
            raise SmtpSyntaxError(f"Invalid {key.upper()} parameter value")
        if key.upper() in params:
            raise SmtpSyntaxError(f"Duplicate {key.upper()} parameter")
        params[key.upper()] = value if eq else None
    return params


def _path_args(args: str, prefix: str) -> str:
    if args[: len(prefix)].upper() != prefix:
        raise SmtpSyntaxError(f"Missing {prefix}")
    rest = args[len(prefix) :]
    return rest[1:] if rest.startswith(" ") else rest  # `FROM: <a>` is common enough to accept


def _params_after_path(rest: str) -> str:
    if rest and not rest.startswith(" "):
        raise SmtpSyntaxError("Invalid character after path")
    return rest.strip(" ")


def parse_mail_from(args: str) -> tuple[str, dict[str, str | None]]:
    """The arguments of MAIL: `FROM:<addr> PARAMS` -> (address, params); `<>` gives ""."""
    try:
        address, rest = parse_path(_path_args(args, "FROM:"), allow_empty=True)
        return address, parse_params(_params_after_path(rest))
    except SmtpSyntaxError as exc:
        raise SmtpSyntaxError(f"Invalid FROM: {exc}") from None


def parse_rcpt_to(args: str) -> tuple[str, dict[str, str | None]]:
    """The arguments of RCPT: `TO:<addr> PARAMS`; `<Postmaster>` is the one domain-less address."""
    try:
        text = _path_args(args, "TO:")
        if text[:12].lower() == "<postmaster>":
            return text[1:11], parse_params(_params_after_path(text[12:]))
        address, rest = parse_path(text, allow_empty=False)
        return address, parse_params(_params_after_path(rest))
    except SmtpSyntaxError as exc:
        raise SmtpSyntaxError(f"Invalid TO: {exc}") from None


# --------------------------------------------------------------------------- xtext and XCLIENT


def xtext_encode(value: str | bytes) -> str:
    """RFC 3461 xtext: bytes outside `!`..`~`, and `+` and `=`, become `+XX` (upper-case hex)."""
    raw = encode(value) if isinstance(value, str) else value
    return "".join(
        chr(byte) if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D) else f"+{byte:02X}" for byte in raw
    )


def xtext_decode(text: str) -> bytes:
    out = bytearray()
    index = 0
    while index < len(text):
        char = text[index]
        if char == "+":
            digits = text[index + 1 : index + 3]
            if len(digits) != 2 or any(c not in "0123456789ABCDEFabcdef" for c in digits):
                raise SmtpSyntaxError("invalid xtext escape")
            out.append(int(digits, 16))
            index += 3
            continue
        if not 0x21 <= ord(char) <= 0x7E or char == "=":
            raise SmtpSyntaxError("invalid xtext character")
        out.append(ord(char))
        index += 1
    return bytes(out)


def xclient_address(ip: str, *, ipv6_prefix: bool) -> str:
    """An address for XCLIENT ADDR/DESTADDR: `IPV6:` before IPv6 toward SMTP servers, none
    toward Dovecot's LMTP (a long-standing Dovecot deviation its own proxy follows)."""
    bare = ip[5:] if ip[:5].upper() == "IPV6:" else ip
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    return f"IPV6:{bare}" if ipv6_prefix and ":" in bare else bare


def format_xclient(
    attributes: Mapping[str, str],
    advertised: Iterable[str],
    *,
    ipv6_prefix: bool = True,
    max_line: int = _XCLIENT_LINE_MAX,
) -> list[bytes]:
    """XCLIENT command lines (with CRLF) carrying the attributes the server advertised.

    Values are xtext-encoded; ADDR and DESTADDR get the IPv6 form the peer expects. The
    attributes are split over several commands when one line would exceed `max_line`
    bytes (each line gets its own 220 reply). Empty when nothing advertised is given."""
    offered = {name.upper() for name in advertised}
    given = {name.upper(): value for name, value in attributes.items()}
    order = [name for name in XCLIENT_ORDER if name in given]
    order += [name for name in given if name not in XCLIENT_ORDER]
    words = []
    for name in order:
        if name not in offered:
            continue
        value = given[name]
        if name in ("ADDR", "DESTADDR") and value.upper() not in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
            value = xclient_address(value, ipv6_prefix=ipv6_prefix)
        words.append(f"{name}={xtext_encode(value)}")
    lines: list[bytes] = []
    current = "XCLIENT"
    for word in words:
        if len(current) + 1 + len(word) > max_line and current != "XCLIENT":
            lines.append(current.encode("ascii") + b"\r\n")
            current = "XCLIENT"
        if len("XCLIENT ") + len(word) > max_line:
            raise ValueError(f"XCLIENT attribute too long: {word.split('=', 1)[0]}")
        current += " " + word
    if current != "XCLIENT":
        lines.append(current.encode("ascii") + b"\r\n")
    return lines


# --------------------------------------------------------------------------- DATA transparency


class DotUnstuffer:
    """Decodes a DATA body as it streams in (RFC 5321 4.5.2): a leading dot is removed from
    every line, and `CRLF . CRLF` ends the body, wherever chunk boundaries fall.

    Only that exact sequence ends it: a dot line after a bare LF (`LF . CRLF`, `LF . LF`)
    is message content, which keeps SMTP smuggling from working through the proxy. The
    body's own line endings are passed on unchanged.
    """

    def __init__(self) -> None:
        self._buf = bytearray(b"\r\n")  # the DATA command's CRLF: a first line may start with a dot
        self._hide = 2
        self.done = False
        self.size = 0

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """(decoded content, bytes after the terminator). Once `done`, everything is left over."""
        if self.done:
            return b"", data
        buf = self._buf
        buf += data
        out = bytearray()
        pos = 0
        rest = b""
        while True:
            hit = buf.find(b"\r\n.", pos)
            if hit < 0:
                keep = 2 if buf.endswith(b"\r\n") else 1 if buf.endswith(b"\r") else 0
                keep = min(keep, len(buf) - pos)
                out += buf[pos : len(buf) - keep]
                pos = len(buf) - keep
                break
            if len(buf) < hit + 5:  # need the two bytes after the dot to decide
                out += buf[pos:hit]
                pos = hit
                break
            out += buf[pos : hit + 2]
            if buf[hit + 3 : hit + 5] == b"\r\n":
                self.done = True
                rest = bytes(buf[hit + 5 :])
                pos = len(buf)
                break
            pos = hit + 3  # drop the stuffed dot
        del buf[:pos]
        if self._hide:
            hidden = min(self._hide, len(out))
            del out[:hidden]
            self._hide -= hidden
        if self.done:
            buf.clear()
        self.size += len(out)
        return bytes(out), rest


class DotStuffer:
    """Encodes a message for DATA as it streams out: bare LFs become CRLF (so the peer cannot
    read a line boundary we did not see), a line starting with a dot gets another one, and
    `finish()` supplies the terminator (adding a missing final CRLF)."""

    def __init__(self) -> None:
        self._line_start = True
        self._last_cr = False

    def stuff(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self._last_cr and data.startswith(b"\n"):
            out = b"\n" + _BARE_LF.sub(b"\r\n", data[1:])
        else:
            out = _BARE_LF.sub(b"\r\n", data)
        out = out.replace(b"\r\n.", b"\r\n..")
        if self._line_start and out.startswith(b"."):
            out = b"." + out
        elif self._last_cr and out.startswith(b"\n."):
            out = b"\n.." + out[2:]
        self._line_start = out.endswith(b"\n")
        self._last_cr = out.endswith(b"\r")
        return out

    def finish(self) -> bytes:
        tail = b".\r\n" if self._line_start else b"\n.\r\n" if self._last_cr else b"\r\n.\r\n"
        self._line_start, self._last_cr = True, False
        return tail


def _shorten(raw: bytes, limit: int = 60) -> str:
    text = decode(raw.rstrip(b"\r\n"))
    return repr(text if len(text) <= limit else text[:limit] + "...")
