"""The server side of Dovecot's dict protocol (`proxy:` dict URIs), sans-IO: just enough to answer
Dovecot's dict passdb/userdb lookups (docs/design/login-path-cost.md, "One Python process").

Dovecot 2.3's dict client (src/lib-dict/dict-client.c) writes one line per command, fields
separated by TAB and escaped with `str_tabescape` (\\x01 then 0, 1, t, r, n for NUL, \\x01, TAB,
CR, LF):

* `H<major>\\t<minor>\\t<value type>\\t<user>\\t<dict name>` once per connection (major 3), no reply;
* `L<key>\\t<user>` a lookup: the reply is `O<value>` (found), `N` (not found) or `F<error>`.

Replies go in the order of the lookups (the client matches them to its oldest pending command).
Any other command (iterate, transactions) closes the connection: this dict is read-only, and some of
those commands get no reply, so answering them would put every later reply out of step.
"""

from __future__ import annotations

from dataclasses import dataclass

from palomar.protocols.tabescape import BadEscape, tab_escape, tab_unescape

MAJOR_VERSION = "3"
MAX_LINE = 64 * 1024
"""DICT_CLIENT_MAX_LINE_LENGTH: the client never sends more in one line."""



class DictProtocolError(Exception):
    """A line the dict client would never send: the connection is closed. The text is safe to log."""


@dataclass(frozen=True)
class Lookup:
    """`L`: the value of `key` (e.g. `shared/passdb/<user>`) for `user` (the login's user name)."""

    key: str
    user: str


class DictServerConnection:
    """One client connection: feed bytes, get the commands whose lines are complete.

    A line the client would never send sets `error` (safe to log): the commands before it are
    still returned, to be answered, and the connection is then closed."""

    def __init__(self) -> None:
        self._buffer = b""
        self.greeted = False
        self.error: str | None = None

    def receive(self, data: bytes) -> list[Lookup]:
        self._buffer += data
        commands: list[Lookup] = []
        while self.error is None:
            line, found, rest = self._buffer.partition(b"\n")
            if not found:
                if len(self._buffer) > MAX_LINE:
                    self.error = "dict line too long"
                return commands
            self._buffer = rest
            try:
                command = self._line(line)
            except DictProtocolError as exc:
                self.error = str(exc)
                return commands
            if command is not None:
                commands.append(command)
        return commands

    def _line(self, line: bytes) -> Lookup | None:
        if len(line) > MAX_LINE:
            raise DictProtocolError("dict line too long")
        if not line:
            raise DictProtocolError("empty dict line")
        try:
            text = line.decode()
        except UnicodeDecodeError:
            raise DictProtocolError("dict line that is not UTF-8") from None
        try:
            kind, fields = text[:1], [tab_unescape(f, strict=True) for f in text[1:].split("\t")]
        except BadEscape:
            raise DictProtocolError("bad escape in a dict line") from None
        if kind == "H":
            if self.greeted:
                raise DictProtocolError("second dict handshake")
            if fields[0] != MAJOR_VERSION:
                raise DictProtocolError(f"dict protocol major version {fields[0][:8]!r}, expected 3")
            self.greeted = True
            return None
        if not self.greeted:
            raise DictProtocolError("dict command before the handshake")
        if kind == "L":
            if len(fields) < 2:
                raise DictProtocolError("dict lookup without a user field")
            return Lookup(fields[0], fields[1])
        raise DictProtocolError(f"dict command {kind!r} is not served (a read-only login check)")


def found(value: bytes) -> bytes:
    return b"O" + tab_escape(value.decode()).encode() + b"\n"


NOT_FOUND = b"N\n"


def failed(reason: str) -> bytes:
    """`F<error>`: Dovecot logs the error and fails the login temporarily."""
    return b"F" + tab_escape(reason).encode() + b"\n"
