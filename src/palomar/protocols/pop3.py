"""POP3 login phase, sans-IO: the server side palomar's proxy shows to clients, and the
client side palomar's backend uses to log a user in to its Dovecot as a master user.

Same shape as the IMAP core (`palomar.protocols.imap`): bytes in, events out, replies
collected in `data_to_send()`, and whatever the peer pipelined after the login is kept
for `leftover()` so it can be relayed. POP3 has no tags, so the `tag` of a login is
always None. Reply texts follow Dovecot's pop3-login, so clients see what they would
see there (RFC 1939, RFC 2449 CAPA, RFC 5034 AUTH, RFC 3206 response codes).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from palomar.protocols.imap_syntax import LineAssembler, LineTooLong, decode
from palomar.protocols.sasl import (
    MECHANISMS,
    Challenge,
    Credentials,
    SaslServer,
    b64decode_strict,
    plain_initial_response,
)

__all__ = [
    "AUTH_FAILED",
    "PRIVACY_REQUIRED",
    "TEMP_FAILED",
    "ClientState",
    "Close",
    "Event",
    "LoggedIn",
    "LoginFailed",
    "LoginRequest",
    "LoginResult",
    "Pop3LoginClient",
    "Pop3LoginServer",
    "ServerState",
    "StartTlsRequest",
    "auth_error",
    "error_reply",
    "format_xclient",
    "in_use_error",
    "referral_error",
    "temp_error",
]

AUTH_FAILED = "-ERR [AUTH] Authentication failed."
TEMP_FAILED = "-ERR [SYS/TEMP] Account is temporarily unavailable."
PRIVACY_REQUIRED = "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
INPUT_FULL = "-ERR Input buffer full, aborting"
UNKNOWN_COMMAND = "-ERR Unknown command."
TOO_MANY_BAD = "-ERR Too many invalid bad commands."
#: What every pre-login CAPA lists before the state-dependent STLS, USER and SASL lines.
BASE_CAPABILITIES: tuple[str, ...] = ("CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE")

_CODE = re.compile(r"^\[([^\]]*)\]\s?")
_XCLIENT_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")


# --------------------------------------------------------------------------- formatting


def _line(text: str) -> bytes:
    if "\r" in text or "\n" in text:
        raise ValueError("reply text must be a single line")
    return text.encode("utf-8", "surrogateescape") + b"\r\n"


def error_reply(code: str | None, text: str) -> str:
    """`-ERR [CODE] text` (RFC 2449 response code), or `-ERR text` without a code."""
    return f"-ERR [{code}] {text}" if code else f"-ERR {text}"


def auth_error(text: str = "Authentication failed.") -> str:
    """The credentials were wrong: the client should not retry with the same ones."""
    return error_reply("AUTH", text)


def temp_error(text: str = "Account is temporarily unavailable.") -> str:
    """A failure the client may retry later (RFC 3206 SYS/TEMP)."""
    return error_reply("SYS/TEMP", text)


def in_use_error(text: str = "Mailbox is locked by another POP3 session.") -> str:
    """The maildrop is busy or a connection limit was reached (RFC 2449 IN-USE)."""
    return error_reply("IN-USE", text)


def referral_error(target: str, text: str = "Referral") -> str:
    """Dovecot's POP3 referral: `-ERR [REFERRAL/user@host[:port]] Referral`."""
    return error_reply(f"REFERRAL/{target}", text)


# --------------------------------------------------------------------------- server events


@dataclass(frozen=True)
class LoginRequest:
    """The client asked to log in; answer with login_failed() or login_succeeded().

    `command` is PASS (after USER) or AUTH; `mechanism` is the SASL mechanism (USER/PASS
    counts as PLAIN). `authzid` is set when a PLAIN client asked to act as another user.
    """

    tag: None
    username: str
    password: str = field(repr=False)
    mechanism: str = "PLAIN"
    command: str = "PASS"
    authzid: str | None = None

    @property
    def is_master_login(self) -> bool:
        return self.authzid is not None and self.authzid != self.username


@dataclass(frozen=True)
class StartTlsRequest:
    """The core has queued `+OK Begin TLS negotiation now.`; send it, handshake, then tls_started()."""

    tag: None = None


@dataclass(frozen=True)
class Close:
    """Close the connection after sending data_to_send()."""

    reason: str


Event = LoginRequest | StartTlsRequest | Close


class ServerState(enum.Enum):
    COMMAND = "command"
    AUTH_CONTINUE = "auth-continue"
    AWAIT_LOGIN = "await-login"
    AWAIT_TLS = "await-tls"
    LOGGED_IN = "logged-in"
    CLOSED = "closed"


# --------------------------------------------------------------------------- server


class Pop3LoginServer:
    """Pre-login POP3 server core: answers what it can by itself and hands logins to the caller."""

    def __init__(
        self,
        *,
        starttls: bool,
        secured: bool,
        allow_cleartext: bool,
        greeting: str = "Palomar ready.",
        max_line: int = 4096,
        max_bad_commands: int = 3,
    ) -> None:
        _line(greeting)
        self.starttls = starttls
        self.secured = secured
        self.allow_cleartext = allow_cleartext
        self.greeting_text = greeting
        self.max_line = max_line
        self.max_bad_commands = max_bad_commands
        self.state = ServerState.COMMAND
        self.tls_active = False
        self.bad_commands = 0
        self._lines = LineAssembler(max_line)
        self._out = bytearray()
        self._user: str | None = None
        self._sasl: SaslServer | None = None
        self._after_login = bytearray()

    def __repr__(self) -> str:
        return f"<Pop3LoginServer state={self.state.value} secured={self.secured}>"

    # ---- what the caller asks

    @property
    def cleartext_allowed(self) -> bool:
        return self.secured or self.allow_cleartext

    def mechanisms(self) -> tuple[str, ...]:
        """Mechanisms offered now: both send passwords in the clear, so none before TLS if refused."""
        return MECHANISMS if self.cleartext_allowed else ()

    def capabilities(self) -> list[str]:
        caps = list(BASE_CAPABILITIES)
        if self.starttls and not self.secured:
            caps.append("STLS")
        if self.cleartext_allowed:
            caps.append("USER")
        caps.append(" ".join(("SASL", *self.mechanisms())))
        return caps

    def greeting(self) -> bytes:
        return _line(f"+OK {self.greeting_text}")

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def receive(self, data: bytes) -> list[Event]:
        if self.state in (ServerState.CLOSED, ServerState.AWAIT_TLS):
            return []  # bytes before the TLS handshake are dropped: command injection defence
        if self.state is ServerState.LOGGED_IN:
            self._after_login += data
            return []
        self._lines.feed(data)
        if self.state is ServerState.AWAIT_LOGIN:
            events: list[Event] = []
            if self._lines.buffered > max(8 * self.max_line, 65536):
                self._close(INPUT_FULL, "Input buffer full", events)
            return events
        return self._process()

    def tls_started(self) -> None:
        """The TLS handshake after STLS is done; read commands again, now secured."""
        if self.state is not ServerState.AWAIT_TLS:
            raise RuntimeError("tls_started() without STLS")
        self.secured = True
        self.tls_active = True
        self._user = None
        self._lines = LineAssembler(self.max_line)
        self.state = ServerState.COMMAND

    def login_failed(self, tag: None, response: str) -> list[Event]:
        """Send `response` (e.g. AUTH_FAILED, temp_error()) and resume reading commands.

        `tag` is the request's tag, always None in POP3; it is there so one caller can drive
        every protocol's core alike."""
        self._check_pending(tag)
        self._out += _line(response)
        self.state = ServerState.COMMAND
        return self._process()

    def login_succeeded(self) -> None:
        """The caller has written the backend's +OK; from now on the core produces nothing."""
        self._check_pending(None)
        self.state = ServerState.LOGGED_IN
        self._after_login[:0] = self._lines.take_buffer()

    def leftover(self) -> bytes:
        """Bytes the client sent after its login command (to relay to the backend); clears them."""
        data = bytes(self._after_login)
        self._after_login.clear()
        return data

    def _check_pending(self, tag: None) -> None:
        if self.state is not ServerState.AWAIT_LOGIN or tag is not None:
            raise RuntimeError("no login is waiting")

    # ---- input loop

    def _process(self) -> list[Event]:
        events: list[Event] = []
        while self.state in (ServerState.COMMAND, ServerState.AUTH_CONTINUE):
            try:
                line = self._lines.next_message(literals=False)
            except LineTooLong:
                self._close(INPUT_FULL, "Input buffer full", events)
                break
            if line is None:
                break
            assert isinstance(line, bytes)
            if self.state is ServerState.AUTH_CONTINUE:
                self._on_sasl_response(line, events)
            else:
                self._on_command(line, events)
        return events

    def _close(self, reply: str, reason: str, events: list[Event]) -> None:
        self._out += _line(reply)
        self.state = ServerState.CLOSED
        self._lines.reset()
        events.append(Close(reason))

    def _on_command(self, line: bytes, events: list[Event]) -> None:
        name, _, args = line.partition(b" ")
        handler = _COMMANDS.get(name.upper())
        if handler is None:
            self.bad_commands += 1
            self._out += _line(UNKNOWN_COMMAND)
            if self.bad_commands >= self.max_bad_commands:
                self._close(TOO_MANY_BAD, "Too many invalid commands", events)
            return
        handler(self, args, events)

    # ---- commands

    def _cmd_capa(self, args: bytes, events: list[Event]) -> None:
        self._out += b"+OK\r\n" + b"".join(_line(cap) for cap in self.capabilities()) + b".\r\n"

    def _cmd_stls(self, args: bytes, events: list[Event]) -> None:
        if self.secured:
            self._out += _line("-ERR TLS is already active.")
            return
        if not self.starttls:
            self._out += _line("-ERR TLS support isn't enabled.")
            return
        self._out += _line("+OK Begin TLS negotiation now.")
        self._lines.reset()  # anything pipelined in plaintext is discarded
        self.state = ServerState.AWAIT_TLS
        events.append(StartTlsRequest())

    def _cmd_quit(self, args: bytes, events: list[Event]) -> None:
        self._close("+OK Logging out", "Aborted login (logged out)", events)

    def _cmd_user(self, args: bytes, events: list[Event]) -> None:
        if not self.cleartext_allowed:
            self._out += _line(PRIVACY_REQUIRED)
            return
        self._user = decode(args)
        self._out += b"+OK\r\n"

    def _cmd_pass(self, args: bytes, events: list[Event]) -> None:
        if not self.cleartext_allowed:
            self._out += _line(PRIVACY_REQUIRED)
            return
        if not self._user:
            self._out += _line("-ERR No username given.")
            return
        user, self._user = self._user, None
        self._request_login(LoginRequest(None, user, decode(args), "PLAIN", "PASS"), events)

    def _cmd_auth(self, args: bytes, events: list[Event]) -> None:
        if not args:
            # The discovery form some clients use (Outlook): list the mechanisms.
            self._out += b"+OK\r\n" + b"".join(_line(m) for m in self.mechanisms()) + b".\r\n"
            return
        mech_raw, _, initial = args.partition(b" ")
        mech = mech_raw.upper().decode("ascii", "replace")
        if mech not in MECHANISMS:
            self._out += _line("-ERR Unsupported authentication mechanism.")
            return
        if not self.cleartext_allowed:
            self._out += _line(PRIVACY_REQUIRED)
            return
        self._sasl = SaslServer(mech)
        decoded: bytes | None = None
        if initial:
            try:
                decoded = b"" if initial == b"=" else b64decode_strict(initial)
            except binascii.Error:
                self._sasl = None
                self._out += _line(auth_error("Invalid base64 data in initial response"))
                return
        self._sasl_result(self._sasl.start(decoded), "AUTH", events)

    # ---- SASL

    def _on_sasl_response(self, line: bytes, events: list[Event]) -> None:
        assert self._sasl is not None
        self.state = ServerState.COMMAND
        if line == b"*":
            self._sasl = None
            self._out += _line("-ERR Authentication aborted by client.")
            return
        try:
            data = b64decode_strict(line)
        except binascii.Error:
            self._sasl = None
            self._out += _line(auth_error("Invalid base64 data in continued response"))
            return
        self._sasl_result(self._sasl.step(data), "AUTH", events)

    def _sasl_result(self, step: object, command: str, events: list[Event]) -> None:
        sasl = self._sasl
        assert sasl is not None
        if isinstance(step, Challenge):
            self._out += b"+ " + base64.b64encode(step.data) + b"\r\n"
            self.state = ServerState.AUTH_CONTINUE
            return
        self._sasl = None
        if not isinstance(step, Credentials):
            self._out += _line(AUTH_FAILED)
            return
        self._request_login(LoginRequest(None, step.username, step.password, sasl.mechanism, command,
                                         step.authzid), events)

    def _request_login(self, request: LoginRequest, events: list[Event]) -> None:
        self.state = ServerState.AWAIT_LOGIN
        events.append(request)


_COMMANDS = {
    b"CAPA": Pop3LoginServer._cmd_capa,
    b"STLS": Pop3LoginServer._cmd_stls,
    b"QUIT": Pop3LoginServer._cmd_quit,
    b"USER": Pop3LoginServer._cmd_user,
    b"PASS": Pop3LoginServer._cmd_pass,
    b"AUTH": Pop3LoginServer._cmd_auth,
}


# --------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class LoggedIn:
    """The backend accepted the login; `ok_line` is its `+OK ...` line (with CRLF), to forward."""

    ok_line: bytes


@dataclass(frozen=True)
class LoginFailed:
    """The login did not succeed.

    kind: `auth` ([AUTH], or -ERR without a code), `temp` ([SYS/TEMP], or the backend went
    away: worth retrying), `referral` (the user lives elsewhere: `referral` holds
    `[user@]host[:port]`), `config` (the backend refused our XCLIENT: it does not trust us),
    `other` (another code such as IN-USE, to forward verbatim) or `protocol` (the backend
    did not speak POP3 as expected).
    """

    kind: str
    response_code: str | None
    text: str
    referral: str | None = None
    line: bytes = b""


LoginResult = LoggedIn | LoginFailed


class ClientState(enum.Enum):
    BANNER = "banner"
    XCLIENT = "xclient"
    AUTHENTICATE = "authenticate"
    DONE = "done"


class Pop3LoginClient:
    """Logs a user in to a Dovecot POP3 backend as a master user, in Dovecot's proxy order:
    banner, then `XCLIENT ...` (only when the banner says `[XCLIENT]`, i.e. we are trusted)
    pipelined with `AUTH PLAIN <authzid=user, authcid=master_user>`."""

    def __init__(
        self,
        username: str,
        *,
        master_user: str,
        master_password: str,
        xclient: Mapping[str, str] | None = None,
        max_line: int = 65536,
    ) -> None:
        if not username or not master_user:
            raise ValueError("username and master_user must not be empty")
        self.username = username
        self._initial_response = plain_initial_response(username, master_user, master_password)
        self._xclient_line = format_xclient(xclient or {})
        self.state = ClientState.BANNER
        self.result: LoginResult | None = None
        #: The banner offered XCLIENT and we sent the client's address with it.
        self.xclient_sent = False
        self._lines = LineAssembler(max_line)
        self._out = bytearray()
        self._leftover = bytearray()

    def __repr__(self) -> str:
        return f"<Pop3LoginClient user={self.username!r} state={self.state.value}>"

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def leftover(self) -> bytes:
        """Bytes the backend sent after its login reply; clears them."""
        data = bytes(self._leftover)
        self._leftover.clear()
        return data

    def connection_lost(self) -> LoginResult:
        """The backend closed the connection; the result, or a temporary failure if none yet."""
        if self.result is None:
            self._finish(LoginFailed("temp", None, "Backend disconnected during login"))
        assert self.result is not None
        return self.result

    def receive(self, data: bytes) -> LoginResult | None:
        """Feed the backend's bytes; returns the result once, when it is known."""
        if self.state is ClientState.DONE:
            self._leftover += data
            return None
        self._lines.feed(data)
        while self.state is not ClientState.DONE:
            try:
                line = self._lines.next_message(literals=False)
            except LineTooLong:
                return self._protocol_error("Backend sent a too long line")
            if line is None:
                return None
            assert isinstance(line, bytes)
            self._on_line(line + b"\r\n")
        return self.result

    # ---- internals

    def _finish(self, result: LoginResult) -> None:
        self.result = result
        self.state = ClientState.DONE
        self._leftover[:0] = self._lines.take_buffer()

    def _protocol_error(self, text: str) -> LoginResult:
        self._finish(LoginFailed("protocol", None, text))
        assert self.result is not None
        return self.result

    def _on_line(self, raw: bytes) -> None:
        if self.state is ClientState.BANNER:
            self._on_banner(raw)
        elif self.state is ClientState.XCLIENT:
            if raw.startswith(b"+OK"):
                self.state = ClientState.AUTHENTICATE
            else:
                self._finish(LoginFailed("config", None, f"XCLIENT refused: {_shorten(raw)}", line=raw))
        elif raw.startswith(b"+OK"):
            self._finish(LoggedIn(raw))
        elif raw.startswith(b"-ERR"):
            self._on_error(raw)
        else:
            self._protocol_error(f"Unexpected reply from backend: {_shorten(raw)}")

    def _on_banner(self, raw: bytes) -> None:
        if not raw.startswith(b"+OK"):
            self._protocol_error(f"Invalid banner: {_shorten(raw)}")
            return
        advertised = raw.startswith(b"+OK [XCLIENT]")
        if advertised and self._xclient_line is not None:
            self._out += self._xclient_line
            self.xclient_sent = True
            self.state = ClientState.XCLIENT
        else:
            self.state = ClientState.AUTHENTICATE
        self._out += b"AUTH PLAIN " + self._initial_response + b"\r\n"

    def _on_error(self, raw: bytes) -> None:
        text = decode(raw.rstrip(b"\r\n"))[4:].removeprefix(" ")
        match = _CODE.match(text)
        code = match.group(1) if match else None
        if match:
            text = text[match.end():]
        upper = (code or "").upper()
        referral = None
        if code is None or upper == "AUTH":
            kind = "auth"
        elif upper == "SYS/TEMP":
            kind = "temp"
        elif upper.startswith("REFERRAL/"):
            kind, referral, code = "referral", code[len("REFERRAL/"):], "REFERRAL"
            if not referral:
                self._protocol_error("REFERRAL without a destination")
                return
        else:
            kind = "other"
        self._finish(LoginFailed(kind, code, text, referral, raw))


def format_xclient(fields: Mapping[str, str]) -> bytes | None:
    """`XCLIENT KEY=value ...\\r\\n` in Dovecot's form (POP3 and ManageSieve alike: raw values,
    so no spaces or controls in them), or None for no fields. Raises ValueError on bad input."""
    if not fields:
        return None
    parts = []
    for key, value in fields.items():
        if not _XCLIENT_KEY.match(key):
            raise ValueError(f"invalid XCLIENT key {key!r}")
        if not value or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise ValueError(f"invalid XCLIENT value for {key}")
        parts.append(f"{key.upper()}={value}")
    return ("XCLIENT " + " ".join(parts)).encode("utf-8", "surrogateescape") + b"\r\n"


def _shorten(raw: bytes, limit: int = 80) -> str:
    text = decode(raw.rstrip(b"\r\n"))
    return text if len(text) <= limit else text[:limit] + "..."
