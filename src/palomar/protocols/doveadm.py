"""Dovecot's doveadm TCP protocol (doveadm-server), sans-IO: the server side a proxy speaks to a
`doveadm -S host:port` client, and the reply tracking it needs to relay a backend's answer.

The wire format is Dovecot 2.3's (src/doveadm/client-connection-tcp.c, server-connection.c):

* client `VERSION\\tdoveadm-server\\t1\\t<minor>\\n`; a server answers minor > 0 with
  `VERSION\\tdoveadm-client\\t1\\t2\\n` and then multiplexes its output once authenticated;
  then `-\\n` (authentication needed);
* client `PLAIN\\t<base64(\\0doveadm\\0password)>\\n`, server `+\\n` or `-\\n` and close;
* command lines `<flags>\\t<user>\\t<command name>[\\t<arg>...]\\n`, tab-escaped fields;
* reply: tab-terminated output fields, then `\\n+\\n` or `\\n-<CODE>\\n`. With multiplexing every
  piece of output is a packet: channel id (1 byte: 0 = output, `L` = log lines), length (4 bytes,
  big endian), data.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from palomar.protocols.tabescape import tab_escape, tab_unescape

MAX_LINE = 1024 * 1024
"""Dovecot's doveadm server reads lines of up to 1 MiB (client-connection-tcp.c MAX_INBUF_SIZE)."""
VERSION_PREFIX = b"VERSION\tdoveadm-server\t1\t"
SERVER_VERSION_LINE = b"VERSION\tdoveadm-client\t1\t2\n"
LOG_CHANNEL = ord("L")
LOG_ERROR = b"\x04"
"""doveadm_log_type_to_char(LOG_TYPE_ERROR)."""
USERNAME = b"doveadm"
"""Dovecot's doveadm_username default: the only user a PLAIN login may name."""


class DoveadmProtocolError(Exception):
    """The peer broke the protocol; the text is safe to log (it never holds the password)."""


@dataclass(frozen=True)
class Command:
    """One command line: `raw` (with its LF) is what goes to the backend unchanged."""

    flags: str
    user: str
    name: str
    args: tuple[str, ...]
    raw: bytes


def encode_command(flags: str, user: str, name: str, args: tuple[str, ...]) -> bytes:
    return ("\t".join(tab_escape(f) for f in (flags, user, name, *args)) + "\n").encode("utf-8", "surrogateescape")


def with_target(command: Command, user: str) -> Command:
    """`command` for `user` (the passdb's name for the user it names), re-encoded when that changed."""
    if command.user:
        if command.user == user:
            return command
        return Command(command.flags, user, command.name, command.args,
                       encode_command(command.flags, user, command.name, command.args))
    if command.args == (user,):
        return command
    return Command(command.flags, "", command.name, (user,), encode_command(command.flags, "", command.name, (user,)))


def user_file_as_all_users(command: Command) -> Command:
    """`command` with Dovecot 2.3's `-F ""` option turned into `-A`.

    `doveadm -F FILE -S host` reads FILE itself and sends one command per user, but with `-F` and an
    empty value among the options (doveadm-mail.c full_args); a doveadm server then tries to open
    that empty file name and fails. `-A` on a server means what the client needs there: the
    username column in the output (the client still names the user)."""
    args = list(command.args)
    if "--" not in args:
        return command
    options = args[:args.index("--")]
    for i in range(len(options) - 1):
        if options[i] == "-F" and options[i + 1] == "":
            args[i:i + 2] = ["-A"]
            return Command(command.flags, command.user, command.name, tuple(args),
                           encode_command(command.flags, command.user, command.name, tuple(args)))
    return command


def parse_command(line: bytes) -> Command:
    fields = [tab_unescape(f) for f in line.rstrip(b"\n").decode("utf-8", "surrogateescape").split("\t")]
    if len(fields) < 3:
        raise DoveadmProtocolError("no command given")
    flags, user, name, *args = fields
    unknown = sorted(set(flags) - set("Dv"))
    if unknown:
        raise DoveadmProtocolError(f"unknown flag: {unknown[0]}")
    return Command(flags, user, name, tuple(args), line if line.endswith(b"\n") else line + b"\n")


@dataclass(frozen=True)
class Refused:
    """A command palomar does not forward; `text` goes to the client as a log line, `code` ends it."""

    text: str
    code: str = "USAGE"


_MASK_CHARS = frozenset("*?")
KICK = "kick"
DSYNC_SERVER = "dsync-server"
"""`doveadm sync|backup -u USER tcp:host:port` runs it; after its `+` both sides speak dsync."""


def target_user(command: Command) -> str | Refused:
    """The one user whose backend runs `command`, or why it cannot go through a proxy.

    Mail commands carry the user in their own field (`doveadm -u USER`); the doveadm client
    expands -A, -F and masks itself and sends one line per user, so a mask on the wire comes
    from elsewhere and is refused. `kick` names its user as its only argument."""
    if command.user:
        if _MASK_CHARS & set(command.user):
            return Refused(f"user masks are not supported through a palomar proxy: {command.user} "
                           "(run the command once for each user)")
        return command.user
    if command.name == KICK:
        if len(command.args) != 1 or command.args[0].startswith("-") or _MASK_CHARS & set(command.args[0]) \
                or not command.args[0] or _looks_like_address(command.args[0]):
            return Refused("kick through a palomar proxy takes exactly one user name (no options, masks or "
                           "addresses): doveadm kick USER")
        return command.args[0]
    return Refused(f"{command.name}: not supported through a palomar proxy: only commands for one user "
                   "(-u USER, the HTTP API's user parameter) and kick USER are forwarded to the user's backend")


def _looks_like_address(word: str) -> bool:
    head = word.split("/", 1)[0]
    return head.replace(".", "").isdigit() or (":" in head and "@" not in head)


def frame(minor: int, data: bytes, channel: int = 0) -> bytes:
    """`data` as the server sends it: one multiplex packet when the client's minor is above 0."""
    if minor <= 0 or not data:
        return data
    return struct.pack(">BI", channel, len(data)) + data


def failure_reply(minor: int, code: str, error: str) -> bytes:
    """A failed command's reply: the error as a remote log line (multiplexed clients print it as
    `remote(HOST): Error: ...`), then `\\n-CODE\\n` with no output."""
    log = frame(minor, LOG_ERROR + error.encode() + b"\n", LOG_CHANNEL) if minor > 0 else b""
    return log + frame(minor, f"\n-{code}\n".encode())


@dataclass(frozen=True)
class Version:
    minor: int


@dataclass(frozen=True)
class StartTls:
    """`STARTTLS` before authentication (protocol minor 2 and later clients send it): the caller
    starts TLS on the connection; the client sends its PLAIN line through it."""


@dataclass(frozen=True)
class Credentials:
    password: str

    def __repr__(self) -> str:  # never show the password
        return "Credentials(password=<hidden>)"


Event = Version | StartTls | Credentials | Command


class ServerConnection:
    """The server side up to each command: VERSION, PLAIN, then command lines.

    `receive` returns the events decoded so far; the caller answers authentication with
    `accept()` / `reject()` and takes what to write from `data_to_send()`."""

    def __init__(self, *, tls: bool = False) -> None:
        self._buffer = bytearray()
        self._out = bytearray()
        self.minor: int | None = None
        self.authenticated = False
        self._awaiting_verdict = False
        self.tls = tls

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def take_buffer(self) -> bytes:
        """What the client sent after the last event: a dsync stream once dsync-server runs."""
        data, self._buffer = bytes(self._buffer), bytearray()
        return data

    def receive(self, data: bytes) -> list[Event]:
        self._buffer += data
        events: list[Event] = []
        while not self._awaiting_verdict:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise DoveadmProtocolError("line too long")
                break
            line = bytes(self._buffer[:end + 1])
            del self._buffer[:end + 1]
            event = self._line(line)
            events.append(event)
            if isinstance(event, StartTls):
                if self._buffer:  # bytes sent in plaintext after STARTTLS would pass as sent through TLS
                    raise DoveadmProtocolError("data after STARTTLS before the TLS handshake")
                break
            if isinstance(event, Command):
                break  # the caller runs it before reading further
        return events

    def _line(self, line: bytes) -> Event:
        if self.minor is None:
            if not line.startswith(VERSION_PREFIX):
                raise DoveadmProtocolError("not a doveadm client (no VERSION doveadm-server 1 line)")
            try:
                minor = int(line[len(VERSION_PREFIX):].strip())
            except ValueError:
                raise DoveadmProtocolError("bad VERSION line") from None
            self.minor = minor
            if minor > 0:
                self._out += SERVER_VERSION_LINE
            self._out += b"-\n"
            return Version(minor)
        if not self.authenticated:
            return self._credentials(line.rstrip(b"\r\n"))
        return parse_command(line)

    def _credentials(self, line: bytes) -> Credentials | StartTls:
        if line == b"STARTTLS":
            if self.tls:
                raise DoveadmProtocolError("STARTTLS on a connection that already uses TLS")
            self.tls = True
            return StartTls()
        if not line.startswith(b"PLAIN\t"):
            raise DoveadmProtocolError("non-PLAIN authentication")
        try:
            plain = base64.b64decode(line[6:], validate=True)
        except (binascii.Error, ValueError):
            raise DoveadmProtocolError("invalid base64 in PLAIN") from None
        parts = plain.split(b"\0")
        if len(parts) != 3 or parts[0] or parts[1] != USERNAME:
            raise DoveadmProtocolError("did not authenticate as 'doveadm'")
        self._awaiting_verdict = True
        return Credentials(parts[2].decode("utf-8", "surrogateescape"))

    def accept(self) -> None:
        self._awaiting_verdict = False
        self.authenticated = True
        self._out += b"+\n"

    def reject(self) -> None:
        self._awaiting_verdict = False
        self._out += b"-\n"


class ReplyTracker:
    """Finds where one command's reply ends in a doveadm server's output (framed as `minor` says):
    the first bare LF of the output channel, then the status line. `feed` returns how many of the
    bytes belong to this reply once it is complete, else None."""

    def __init__(self, minor: int, *, stream_follows: bool = False) -> None:
        self.multiplexed = minor > 0
        self.stream_follows = stream_follows
        """dsync-server: the dsync protocol follows the status line on the same channel."""
        self._header = bytearray()
        self._left = 0
        self._channel = 0
        self._printing = True
        self.status: bytes | None = None
        self._status = bytearray()
        self.started = False

    def feed(self, data: bytes) -> int | None:
        self.started = self.started or bool(data)
        if not self.multiplexed:
            return self._payload(data)
        pos = 0
        while pos < len(data):
            if self._left == 0:
                need = 5 - len(self._header)
                self._header += data[pos:pos + need]
                pos += min(need, len(data) - pos)
                if len(self._header) < 5:
                    return None
                self._channel, self._left = struct.unpack(">BI", self._header)
                self._header.clear()
                continue
            chunk = data[pos:pos + self._left]
            pos += len(chunk)
            self._left -= len(chunk)
            used = self._payload(chunk) if self._channel == 0 else None
            if used is not None:
                if not self.stream_follows and (self._left or used != len(chunk)):
                    raise DoveadmProtocolError("output after the reply's status line")
                return pos
        return None

    def _payload(self, data: bytes) -> int | None:
        """Output-channel bytes; the count used once the status line is complete."""
        start = 0
        if self._printing:
            lf = data.find(b"\n")
            if lf < 0:
                return None
            self._printing = False
            start = lf + 1
        lf = data.find(b"\n", start)
        if lf < 0:
            self._status += data[start:]
            return None
        self._status += data[start:lf]
        self.status = bytes(self._status)
        if self.status[:1] not in (b"+", b"-"):
            raise DoveadmProtocolError("broken reply status line")
        return lf + 1
