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

from palomar.protocols.imap_syntax import LineAssembler, LiteralAnnounced, decode
from palomar.protocols.login_core import (
    ClientForwarded,
    Close,
    LoginClientCore,
    LoginFailure,
    LoginServerCore,
    MasterLoginMixin,
    ServerState,
    parse_xclient,
    shorten,
)
from palomar.protocols.login_core import text_line as _line
from palomar.protocols.sasl import MECHANISMS, Credentials, b64decode_strict, plain_initial_response

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
class LoginRequest(MasterLoginMixin):
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


@dataclass(frozen=True)
class StartTlsRequest:
    """The core has queued `+OK Begin TLS negotiation now.`; send it, handshake, then tls_started()."""

    tag: None = None


Event = LoginRequest | StartTlsRequest | ClientForwarded | Close


# --------------------------------------------------------------------------- server


class Pop3LoginServer(LoginServerCore):
    """Pre-login POP3 server core: answers what it can by itself and hands logins to the caller."""

    _TLS_COMMAND = "STLS"
    _lines: LineAssembler

    def __init__(
        self,
        *,
        starttls: bool,
        secured: bool,
        allow_cleartext: bool,
        greeting: str = "Palomar ready.",
        max_line: int = 4096,
        max_bad_commands: int = 3,
        trusted: bool = False,
    ) -> None:
        _line(greeting)
        super().__init__(starttls=starttls, secured=secured, allow_cleartext=allow_cleartext, greeting=greeting,
                         max_line=max_line, max_bad_commands=max_bad_commands, trusted=trusted)
        self._user: str | None = None

    # ---- what the caller asks

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
        """Dovecot tells a trusted peer that XCLIENT is there with a response code, not in CAPA."""
        return _line(f"+OK [XCLIENT] {self.greeting_text}" if self.trusted else f"+OK {self.greeting_text}")

    def tls_started(self) -> None:
        """The TLS handshake after STLS is done; read commands again, now secured."""
        super().tls_started()
        self._user = None

    def login_failed(self, tag: None, response: str) -> list[Event]:
        """Send `response` (e.g. AUTH_FAILED, temp_error()) and resume reading commands.

        `tag` is the request's tag, always None in POP3; it is there so one caller can drive
        every protocol's core alike."""
        self._check_pending(tag)
        return self._login_refused(_line(response))

    # ---- input

    def _next_input(self, events: list[Event]) -> bytes | None:
        line = self._lines.next_message(literals=False)
        assert not isinstance(line, LiteralAnnounced)
        return line

    def _input_full(self) -> bytes:
        return _line(INPUT_FULL)

    def _too_many_bad(self) -> bytes:
        return _line(TOO_MANY_BAD)

    def _on_command(self, line: bytes, events: list[Event]) -> None:
        name, _, args = line.partition(b" ")
        handler = _COMMANDS.get(name.upper())
        if handler is None:
            # Unlike the other protocols, POP3 answers even the command that ends the session.
            self._out += _line(UNKNOWN_COMMAND)
            self._reject_command(b"", events)
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
        self._start_tls(_line("+OK Begin TLS negotiation now."), StartTlsRequest(), events)

    def _cmd_quit(self, args: bytes, events: list[Event]) -> None:
        self._close(_line("+OK Logging out"), "Aborted login (logged out)", events)

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
            self._out += _line(auth_error("Unsupported authentication mechanism."))
            return
        if not self.cleartext_allowed:  # Dovecot's SASL wording; USER and PASS get PRIVACY_REQUIRED
            self._out += _line(auth_error("Plaintext authentication disabled."))
            return
        decoded: bytes | None = None
        if initial:
            try:
                decoded = b"" if initial == b"=" else b64decode_strict(initial)
            except binascii.Error:
                self._out += _line(auth_error("Invalid base64 data in initial response"))
                return
        self._start_sasl(mech, decoded, events)

    def _cmd_xclient(self, args: bytes, events: list[Event]) -> None:
        if not self.trusted:
            self._out += _line("+OK You are not from trusted IP - ignoring")
            return
        try:
            forwarded = parse_xclient(decode(args))
        except ValueError:
            self._out += _line("-ERR Invalid parameters")
            return
        self._out += _line("+OK Updated")
        events.append(forwarded)

    # ---- SASL

    def _on_sasl_response(self, line: bytes, events: list[Event]) -> None:
        self._sasl_continue(line, events, aborted=_line("-ERR Authentication aborted by client."),
                            invalid=_line(auth_error("Invalid base64 data in continued response")))

    def _challenge(self, data: bytes) -> bytes:
        return b"+ " + base64.b64encode(data) + b"\r\n"

    def _auth_failed(self) -> bytes:
        return _line(AUTH_FAILED)

    def _login_request(self, credentials: Credentials, mechanism: str) -> LoginRequest:
        return LoginRequest(None, credentials.username, credentials.password, mechanism, "AUTH",
                            credentials.authzid)


_COMMANDS = {
    b"CAPA": Pop3LoginServer._cmd_capa,
    b"STLS": Pop3LoginServer._cmd_stls,
    b"QUIT": Pop3LoginServer._cmd_quit,
    b"USER": Pop3LoginServer._cmd_user,
    b"PASS": Pop3LoginServer._cmd_pass,
    b"AUTH": Pop3LoginServer._cmd_auth,
    b"XCLIENT": Pop3LoginServer._cmd_xclient,
}


# --------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class LoggedIn:
    """The backend accepted the login; `ok_line` is its `+OK ...` line (with CRLF), to forward."""

    ok_line: bytes


@dataclass(frozen=True)
class LoginFailed(LoginFailure):
    """The login did not succeed.

    kind: `auth` ([AUTH], or -ERR without a code), `temp` ([SYS/TEMP], or the backend went
    away: worth retrying), `referral` (the user lives elsewhere: `referral` holds
    `[user@]host[:port]`), `config` (the backend refused our XCLIENT: it does not trust us),
    `other` (another code such as IN-USE, to forward verbatim) or `protocol` (the backend
    did not speak POP3 as expected).
    """


LoginResult = LoggedIn | LoginFailed


class ClientState(enum.Enum):
    BANNER = "banner"
    XCLIENT = "xclient"
    AUTHENTICATE = "authenticate"
    DONE = "done"


class Pop3LoginClient(LoginClientCore[LoginResult]):
    """Logs a user in to a Dovecot POP3 backend as a master user, in Dovecot's proxy order:
    banner, then `XCLIENT ...` (only when the banner says `[XCLIENT]`, i.e. we are trusted)
    pipelined with `AUTH PLAIN <authzid=user, authcid=master_user>`."""

    _DONE = ClientState.DONE
    _FAILED = LoginFailed

    def __init__(
        self,
        username: str,
        *,
        master_user: str,
        master_password: str,
        xclient: Mapping[str, str] | None = None,
        max_line: int = 65536,
    ) -> None:
        super().__init__(username, master_user, state=ClientState.BANNER, reader=LineAssembler(max_line))
        self._initial_response = plain_initial_response(username, master_user, master_password)
        self._xclient_line = format_xclient(xclient or {})
        #: The banner offered XCLIENT and we sent the client's address with it.
        self.xclient_sent = False

    # ---- internals

    def _next_input(self) -> bytes | None:
        line = self._reader.next_message(literals=False)
        return None if line is None else line + b"\r\n"

    def _on_input(self, raw: bytes) -> None:
        if self.state is ClientState.BANNER:
            self._on_banner(raw)
        elif self.state is ClientState.XCLIENT:
            if raw.startswith(b"+OK"):
                self.state = ClientState.AUTHENTICATE
            else:
                self._finish(LoginFailed("config", None, f"XCLIENT refused: {shorten(raw)}", line=raw))
        elif raw.startswith(b"+OK"):
            self._finish(LoggedIn(raw))
        elif raw.startswith(b"-ERR"):
            self._on_error(raw)
        else:
            self._protocol_error(f"Unexpected reply from backend: {shorten(raw)}")

    def _on_banner(self, raw: bytes) -> None:
        if not raw.startswith(b"+OK"):
            self._protocol_error(f"Invalid banner: {shorten(raw)}")
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
