"""What the login-phase cores (IMAP, POP3, ManageSieve, Submission) have in common, sans-IO.

Each protocol module keeps its own grammar, reply texts and event classes; this module holds
the machinery that does not depend on the protocol, so a fix to it (the input-buffer limit,
the hand-over of pipelined bytes after the login, the bad-command count) reaches every
protocol at once:

- `LoginServerCore`: the pre-login server a client talks to. It buffers replies, refuses
  to read while a TLS handshake or the caller's login decision is pending, counts bad
  commands, runs the SASL exchange and steps aside after the login, keeping what the
  client pipelined behind it for `leftover()`.
- `LoginClientCore`: the client that logs a user in to a backend. It runs the receive
  loop, turns framing errors and a lost connection into a failed result, and keeps what
  the backend sent after its login reply for `leftover()`.
"""

from __future__ import annotations

import binascii
import enum
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from palomar.protocols import imap_syntax, smtp_syntax
from palomar.protocols.imap_syntax import LineAssembler, LiteralAnnounced, decode
from palomar.protocols.sasl import Challenge, Credentials, SaslServer, SaslStep, b64decode_strict

__all__ = [
    "LINE_TOO_LONG",
    "ClientForwarded",
    "Close",
    "LoginClientCore",
    "LoginFailure",
    "LoginServerCore",
    "MasterLoginMixin",
    "ServerState",
    "forwarded_ip",
    "forwarded_port",
    "next_message_inline",
    "parse_xclient",
    "shorten",
    "text_line",
]

#: Both framing layers' "line too long": the cores treat them alike.
LINE_TOO_LONG: tuple[type[Exception], ...] = (imap_syntax.LineTooLong, smtp_syntax.LineTooLong)

ResultT = TypeVar("ResultT")


def text_line(text: str) -> bytes:
    """One reply line with CRLF; a line break inside would let the text forge further replies."""
    if "\r" in text or "\n" in text:
        raise ValueError("reply text must be a single line")
    return text.encode("utf-8", "surrogateescape") + b"\r\n"


def shorten(raw: bytes, limit: int = 80) -> str:
    """A peer's line cut to a length fit for an error text."""
    text = decode(raw.rstrip(b"\r\n"))
    return text if len(text) <= limit else text[:limit] + "..."


def next_message_inline(lines: LineAssembler) -> bytes | None:
    """The next message with its literals read inline, for peers that send literal bytes
    without waiting for a continuation (ManageSieve clients, Dovecot's replies)."""
    while True:
        item = lines.next_message()
        if not isinstance(item, LiteralAnnounced):
            return item
        lines.accept_literal()


# --------------------------------------------------------------------------- shared events


@dataclass(frozen=True)
class Close:
    """Close the connection after sending data_to_send()."""

    reason: str


class ServerState(enum.Enum):
    COMMAND = "command"
    AUTH_CONTINUE = "auth-continue"
    AWAIT_LOGIN = "await-login"
    AWAIT_TLS = "await-tls"
    LOGGED_IN = "logged-in"
    CLOSED = "closed"


class MasterLoginMixin:
    """`is_master_login` for the LoginRequest events: the caller decides whether a client
    may act as another user, so every protocol's request answers the question alike."""

    username: str
    authzid: str | None

    @property
    def is_master_login(self) -> bool:
        return self.authzid is not None and self.authzid != self.username


@dataclass(frozen=True)
class LoginFailure:
    """A backend login that did not succeed, as the IMAP, POP3 and ManageSieve clients report
    it; each protocol's `LoginFailed` subclasses it to say what its kinds mean.

    `response_code` is the backend's code (None when there was none or no reply caused
    the failure), `referral` the destination of a referral and `line` the backend's reply
    as received, ready to forward."""

    kind: str
    response_code: str | None
    text: str
    referral: str | None = None
    line: bytes = b""


@dataclass(frozen=True)
class ClientForwarded:
    """A peer in login_trusted_networks (a proxy or load balancer in front of palomar) told who
    the real client is: IMAP ID `x-originating-ip` & co, or XCLIENT in the other protocols.

    Dovecot's login processes take these from trusted peers only, and so do the cores: the
    event is only produced for a core made with `trusted=True`. A field left None is unchanged.
    """

    ip: str | None = None
    port: int | None = None
    local_ip: str | None = None
    local_port: int | None = None
    session_id: str | None = None


MAX_SESSION_ID = 64
"""Dovecot's LOGIN_MAX_SESSION_ID_LEN: a longer forwarded session id is ignored."""


def forwarded_ip(value: str) -> str | None:
    """An address as Dovecot reads it (`[::1]`, and SMTP XCLIENT's `IPV6:` prefix, too); None if it
    is not one."""
    if value[:5].upper() == "IPV6:":
        value = value[5:]
    try:
        return str(ipaddress.ip_address(value[1:-1] if value.startswith("[") and value.endswith("]") else value))
    except ValueError:
        return None


def forwarded_port(value: str) -> int | None:
    """A port as Dovecot's net_str2port reads it: 0-65535, digits only."""
    return int(value) if value.isdigit() and int(value) <= 65535 else None


def parse_xclient(args: str) -> ClientForwarded:
    """The `XCLIENT` arguments Dovecot's pop3-, submission- and managesieve-login use (ADDR, PORT,
    SESSION); TTL, FORWARD, HELO and the rest are accepted and not used. Raises ValueError naming
    the parameter (ADDR or PORT) whose value is invalid."""
    fields: dict[str, object] = {}
    for item in args.split():
        key, _, value = item.partition("=")
        key = key.upper()
        if key in ("ADDR", "PORT"):
            parsed = forwarded_ip(value) if key == "ADDR" else forwarded_port(value)
            if parsed is None:
                raise ValueError(key)
            fields["ip" if key == "ADDR" else "port"] = parsed
        elif key == "SESSION" and len(value) <= MAX_SESSION_ID:
            fields["session_id"] = value
    return ClientForwarded(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- server


class LoginServerCore:
    """The protocol-independent half of a pre-login server core.

    A subclass supplies the framing (`_FRAMER`, `_next_input`), the grammar (`_on_command`,
    `_on_sasl_response`) and the wording of the replies the shared steps send (`_input_full`,
    `_too_many_bad`, `_challenge`, `_auth_failed`), and builds its own LoginRequest
    (`_login_request`)."""

    #: Makes the line splitter from max_line; a new one is made after the TLS handshake.
    _FRAMER: ClassVar[Callable[[int], Any]] = LineAssembler
    #: The command that starts TLS, for the error raised on a misplaced tls_started().
    _TLS_COMMAND: ClassVar[str] = "STARTTLS"
    _lines: Any

    def __init__(
        self,
        *,
        starttls: bool,
        secured: bool,
        allow_cleartext: bool,
        greeting: str,
        max_line: int,
        max_bad_commands: int,
        trusted: bool = False,
    ) -> None:
        self.starttls = starttls
        #: The peer is in login_trusted_networks: it may tell the client's real address (XCLIENT, ID).
        self.trusted = trusted
        self.secured = secured
        self.allow_cleartext = allow_cleartext
        self.greeting_text = greeting
        self.max_line = max_line
        self.max_bad_commands = max_bad_commands
        self.state = ServerState.COMMAND
        self.tls_active = False
        self.bad_commands = 0
        self._lines = self._FRAMER(max_line)
        self._out = bytearray()
        self._sasl: SaslServer | None = None
        self._pending_tag: str | None = None
        self._after_login = bytearray()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} state={self.state.value} secured={self.secured}>"

    # ---- what the caller asks

    @property
    def cleartext_allowed(self) -> bool:
        return self.secured or self.allow_cleartext

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def receive(self, data: bytes) -> list[Any]:
        if self.state in (ServerState.CLOSED, ServerState.AWAIT_TLS):
            return []  # bytes before the TLS handshake are dropped: command injection defence
        if self.state is ServerState.LOGGED_IN:
            self._after_login += data
            return []
        self._lines.feed(data)
        if self.state is ServerState.AWAIT_LOGIN:
            events: list[Any] = []
            if self._lines.buffered > max(8 * self.max_line, 65536):
                self._close(self._input_full(), "Input buffer full", events)
            return events
        return self._process()

    def tls_started(self) -> None:
        """The TLS handshake is done; read commands again, now secured."""
        if self.state is not ServerState.AWAIT_TLS:
            raise RuntimeError(f"tls_started() without {self._TLS_COMMAND}")
        self.secured = True
        self.tls_active = True
        self._lines = self._FRAMER(self.max_line)
        self.state = ServerState.COMMAND

    def login_succeeded(self) -> None:
        """The caller has written the backend's OK; from now on the core produces nothing."""
        self._check_pending(self._pending_tag)
        self._pending_tag = None
        self.state = ServerState.LOGGED_IN
        self._after_login[:0] = self._lines.take_buffer()

    def leftover(self) -> bytes:
        """Bytes the client sent after its login command (to relay to the backend); clears them."""
        data = bytes(self._after_login)
        self._after_login.clear()
        return data

    # ---- for the subclasses

    def _check_pending(self, tag: str | None) -> None:
        if self.state is not ServerState.AWAIT_LOGIN or tag != self._pending_tag:
            raise RuntimeError("no login is waiting" if tag is None else "no login is waiting for this tag")

    def _login_refused(self, reply: bytes) -> list[Any]:
        """Queue the refusal and read commands again, pipelined ones included."""
        self._out += reply
        self._pending_tag = None
        self.state = ServerState.COMMAND
        return self._process()

    def _process(self) -> list[Any]:
        events: list[Any] = []
        while self.state in (ServerState.COMMAND, ServerState.AUTH_CONTINUE):
            try:
                item = self._next_input(events)
            except LINE_TOO_LONG:
                self._line_too_long(events)
                continue
            if item is None:
                break
            if self.state is ServerState.AUTH_CONTINUE:
                self._on_sasl_response(item, events)
            else:
                self._on_command(item, events)
        return events

    def _close(self, reply: bytes, reason: str, events: list[Any]) -> None:
        self._out += reply
        self.state = ServerState.CLOSED
        self._lines.reset()
        events.append(Close(reason))

    def _reject_command(self, reply: bytes, events: list[Any]) -> None:
        """Answer an invalid command with `reply`, or close once there were too many."""
        self.bad_commands += 1
        if self.bad_commands >= self.max_bad_commands:
            self._close(self._too_many_bad(), "Too many invalid commands", events)
        else:
            self._out += reply

    def _line_too_long(self, events: list[Any]) -> None:
        """A line exceeded max_line: where the next command starts is unknown, so give up."""
        self._close(self._input_full(), "Input buffer full", events)

    def _start_tls(self, reply: bytes, event: Any, events: list[Any]) -> None:
        """Queue the go-ahead for the handshake and stop reading until tls_started()."""
        self._out += reply
        self._lines.reset()  # anything pipelined in plaintext is discarded
        self.state = ServerState.AWAIT_TLS
        events.append(event)

    def _start_sasl(self, mechanism: str, initial: bytes | None, events: list[Any]) -> None:
        self._sasl = SaslServer(mechanism)
        self._sasl_result(self._sasl.start(initial), events)

    def _sasl_continue(self, response: bytes, events: list[Any], *, aborted: bytes, invalid: bytes) -> None:
        """The client's base64 answer to a challenge; `*` aborts the exchange. `aborted` and
        `invalid` are the protocol's replies to an abort and to bad base64."""
        sasl, self._sasl = self._sasl, None
        assert sasl is not None
        self.state = ServerState.COMMAND
        if response == b"*":
            self._out += aborted
            return
        try:
            data = b64decode_strict(response)
        except binascii.Error:
            self._out += invalid
            return
        self._sasl = sasl
        self._sasl_result(sasl.step(data), events)

    def _sasl_result(self, step: SaslStep, events: list[Any]) -> None:
        sasl = self._sasl
        assert sasl is not None
        if isinstance(step, Challenge):
            self._out += self._challenge(step.data)
            self.state = ServerState.AUTH_CONTINUE
            return
        self._sasl = None
        if not isinstance(step, Credentials):
            self._out += self._auth_failed()
            return
        self._request_login(self._login_request(step, sasl.mechanism), events)

    def _request_login(self, request: Any, events: list[Any]) -> None:
        self._pending_tag = request.tag
        self.state = ServerState.AWAIT_LOGIN
        events.append(request)

    # ---- what the subclasses provide

    def _next_input(self, events: list[Any]) -> bytes | None:
        """The next command line or SASL response, or None to stop reading for now."""
        raise NotImplementedError

    def _on_command(self, line: bytes, events: list[Any]) -> None:
        raise NotImplementedError

    def _on_sasl_response(self, line: bytes, events: list[Any]) -> None:
        raise NotImplementedError

    def _input_full(self) -> bytes:
        """The reply sent when closing because the client sent too much."""
        raise NotImplementedError

    def _too_many_bad(self) -> bytes:
        """The reply sent when closing after max_bad_commands invalid commands."""
        raise NotImplementedError

    def _challenge(self, data: bytes) -> bytes:
        """A SASL challenge in the protocol's framing."""
        raise NotImplementedError

    def _auth_failed(self) -> bytes:
        """The reply to SASL messages that cannot be credentials."""
        raise NotImplementedError

    def _login_request(self, credentials: Credentials, mechanism: str) -> Any:
        """The protocol's LoginRequest event for a completed SASL exchange."""
        raise NotImplementedError


# --------------------------------------------------------------------------- client


class LoginClientCore(Generic[ResultT]):
    """The protocol-independent half of a backend login client.

    A subclass supplies the reader (something with feed() and take_buffer()), `_next_input`
    and `_on_input` for its grammar, `_DONE` (its ClientState.DONE) and `_FAILED` (its
    LoginFailed, built as `_FAILED(kind, None, text)`)."""

    _DONE: ClassVar[enum.Enum]
    _FAILED: ClassVar[Callable[..., Any]]
    #: Reader errors that mean the backend sent something that is not a reply.
    _REPLY_ERRORS: ClassVar[tuple[type[Exception], ...]] = ()

    def __init__(self, username: str, master_user: str, *, state: enum.Enum, reader: Any) -> None:
        if not username or not master_user:
            raise ValueError("username and master_user must not be empty")
        self.username = username
        self.state = state
        self.result: ResultT | None = None
        self._reader = reader
        self._out = bytearray()
        self._leftover = bytearray()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} user={self.username!r} state={self.state.value}>"

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def leftover(self) -> bytes:
        """Bytes the backend sent after the login's last reply; clears them."""
        data = bytes(self._leftover)
        self._leftover.clear()
        return data

    def connection_lost(self) -> ResultT:
        """The backend closed the connection; the result, or a temporary failure if none yet."""
        if self.result is None:
            self._finish(self._FAILED("temp", None, "Backend disconnected during login"))
        assert self.result is not None
        return self.result

    def receive(self, data: bytes) -> ResultT | None:
        """Feed the backend's bytes; returns the result once, when it is known."""
        if self.state is self._DONE:
            self._leftover += data
            return None
        self._reader.feed(data)
        while self.state is not self._DONE:
            try:
                item = self._next_input()
            except LINE_TOO_LONG:
                return self._protocol_error("Backend sent a too long line")
            except self._REPLY_ERRORS as exc:
                return self._protocol_error(f"Invalid reply from backend: {exc}")
            if item is None:
                return None
            self._on_input(item)
        return self.result

    # ---- for the subclasses

    def _finish(self, result: ResultT) -> None:
        self.result = result
        self.state = self._DONE
        self._leftover[:0] = self._reader.take_buffer()

    def _protocol_error(self, text: str) -> ResultT:
        self._finish(self._FAILED("protocol", None, text))
        assert self.result is not None
        return self.result

    def _next_input(self) -> Any:
        """The next complete line or reply from the reader, or None when more bytes are needed."""
        raise NotImplementedError

    def _on_input(self, item: Any) -> None:
        raise NotImplementedError
