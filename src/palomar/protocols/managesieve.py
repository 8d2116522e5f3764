"""ManageSieve (RFC 5804) login phase, sans-IO: the server side palomar's proxy shows to
clients, and the client side palomar's backend uses to log a user in to its Dovecot
(Pigeonhole managesieve-login) as a master user.

Same shape as the IMAP and POP3 cores: bytes in, events out, replies collected in
`data_to_send()`, pipelined bytes after the login kept for `leftover()`. ManageSieve has
no tags, so the `tag` of a login is always None. Strings are IMAP-like (quoted, or a
`{n+}`/`{n}` literal); replies are `OK|NO|BYE [(CODE ...)] ["text"]`. Reply texts follow
Dovecot's managesieve-login.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from palomar.protocols.imap_syntax import (
    ArgReader,
    ImapSyntaxError,
    LineAssembler,
    decode,
    quote,
)
from palomar.protocols.login_core import (
    ClientForwarded,
    Close,
    LoginClientCore,
    LoginFailure,
    LoginServerCore,
    MasterLoginMixin,
    ServerState,
    next_message_inline,
    parse_xclient,
    shorten,
)
from palomar.protocols.login_core import text_line as _line
from palomar.protocols.pop3 import format_xclient
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
    "ServerState",
    "SieveLoginClient",
    "SieveLoginServer",
    "SieveResponse",
    "SieveSyntaxError",
    "StartTlsRequest",
    "parse_capability_line",
    "parse_response",
    "prelogin_capabilities",
    "referral_response",
    "response",
]

AUTH_FAILED = 'NO "Authentication failed."'
TEMP_FAILED = 'NO (TRYLATER) "Account is temporarily unavailable."'
PRIVACY_REQUIRED = ('NO (ENCRYPT-NEEDED) '
                    '"Plaintext authentication disallowed on non-secure (SSL/TLS) connections."')
BAD_COMMAND = "Error in MANAGESIEVE command received by server."
INPUT_FULL = "Input buffer full, aborting"


class SieveSyntaxError(ValueError):
    """The bytes do not follow the ManageSieve grammar."""


# --------------------------------------------------------------------------- formatting


def response(status: str, text: str | None = None, code: str | None = None) -> str:
    """`STATUS [(CODE)] ["text"]`, e.g. response("NO", "Try later.", "TRYLATER").

    `code` is written as given inside the parentheses, so it may carry arguments that are
    already quoted: `TAG "t1"`, `REFERRAL "sieve://host"`."""
    parts = [status]
    if code:
        parts.append(f"({code})")
    if text is not None:
        parts.append(quote(text))
    return " ".join(parts)


def referral_response(url: str, text: str = "Try this server instead.") -> str:
    """`NO (REFERRAL "sieve://host[:port]") "text"`: the user's scripts live on another server."""
    return response("NO", text, f"REFERRAL {quote(url)}")


def _capability_line(name: str, value: str | None) -> bytes:
    return _line(quote(name) if value is None else f"{quote(name)} {quote(value)}")


def prelogin_capabilities(implementation: str, sieve_extensions: str, notify_methods: str | None, *,
                          offer_starttls: bool, mechanisms: tuple[str, ...],
                          trusted: bool) -> list[tuple[str, str | None]]:
    """The greeting's capability lines in managesieve-login's order. SIEVE and NOTIFY are learnt or
    configured; the rest is the proxy's own: its IMPLEMENTATION, its SASL mechanisms (`"SASL" ""` is
    allowed, STARTTLS being offered then), STARTTLS before TLS, VERSION, XCLIENT for trusted peers."""
    caps: list[tuple[str, str | None]] = [("IMPLEMENTATION", implementation), ("SIEVE", sieve_extensions)]
    if notify_methods:
        caps.append(("NOTIFY", notify_methods))
    caps.append(("SASL", " ".join(mechanisms)))
    if offer_starttls:
        caps.append(("STARTTLS", None))
    caps.append(("VERSION", "1.0"))
    if trusted:
        caps.append(("XCLIENT", None))
    return caps


def parse_capability_line(message: bytes) -> tuple[str, str | None]:
    """`"NAME" ["value"]` of a greeting or CAPABILITY reply (name upper-cased); SieveSyntaxError if not."""
    reader = ArgReader(message)
    try:
        name = decode(reader.string()).upper()
        value = None
        if not reader.at_end():
            reader.sp()
            value = decode(reader.string())
        reader.end()
    except ImapSyntaxError as exc:
        raise SieveSyntaxError(str(exc)) from None
    return name, value


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True)
class SieveResponse:
    """One `OK`/`NO`/`BYE` reply; `code` upper-cased (`TRYLATER`, `REFERRAL`, `QUOTA/MAXSIZE`)."""

    status: str
    code: str | None
    code_args: tuple[str, ...]
    text: str
    raw: bytes  # the message as received, with CRLF


def parse_response(message: bytes) -> SieveResponse:
    """Parse `OK|NO|BYE [SP "(" code *(SP arg) ")"] [SP string]` (a message, literals inline)."""
    reader = ArgReader(message)
    try:
        status = reader.atom().upper().decode("ascii")
        if status not in ("OK", "NO", "BYE"):
            raise SieveSyntaxError(f"not a response: {status}")
        code: str | None = None
        args: list[str] = []
        text = ""
        if not reader.at_end():
            reader.sp()
            if reader.peek() == ord("("):
                reader.expect(b"(")
                code = reader.atom().upper().decode("ascii")
                while reader.peek() == ord(" "):
                    reader.sp()
                    args.append(decode(reader.string() if reader.peek() in (0x22, 0x7B) else reader.atom()))
                reader.expect(b")")
                if not reader.at_end():
                    reader.sp()
            if not reader.at_end():
                text = decode(reader.string())
        reader.end()
    except ImapSyntaxError as exc:
        raise SieveSyntaxError(str(exc)) from None
    return SieveResponse(status, code, tuple(args), text, message + b"\r\n")


# --------------------------------------------------------------------------- server events


@dataclass(frozen=True)
class LoginRequest(MasterLoginMixin):
    """The client asked to log in (AUTHENTICATE); answer with login_failed() or login_succeeded().

    `authzid` is set when a PLAIN client asked to act as another user."""

    tag: None
    username: str
    password: str = field(repr=False)
    mechanism: str = "PLAIN"
    command: str = "AUTHENTICATE"
    authzid: str | None = None


@dataclass(frozen=True)
class StartTlsRequest:
    """The core has queued `OK "Begin TLS negotiation now."`; send it, handshake, then tls_started()."""

    tag: None = None


Event = LoginRequest | StartTlsRequest | ClientForwarded | Close


# --------------------------------------------------------------------------- server


class SieveLoginServer(LoginServerCore):
    """Pre-login ManageSieve server core: answers what it can by itself and hands logins to the caller."""

    _lines: LineAssembler

    def __init__(
        self,
        *,
        starttls: bool,
        secured: bool,
        allow_cleartext: bool,
        sieve_extensions: str,
        implementation: str = "palomar",
        notify_methods: str | None = None,
        greeting: str = "Palomar ready.",
        max_line: int = 8192,
        max_bad_commands: int = 3,
        trusted: bool = False,
    ) -> None:
        for text in (sieve_extensions, implementation, notify_methods or "", greeting):
            quote(text)  # refuses CR, LF and NUL before anything is sent
        super().__init__(starttls=starttls, secured=secured, allow_cleartext=allow_cleartext, greeting=greeting,
                         max_line=max_line, max_bad_commands=max_bad_commands, trusted=trusted)
        self.sieve_extensions = sieve_extensions
        self.implementation = implementation
        self.notify_methods = notify_methods

    # ---- what the caller asks

    def mechanisms(self) -> tuple[str, ...]:
        """Both mechanisms send passwords in the clear: none before TLS when that is refused."""
        return MECHANISMS if self.cleartext_allowed else ()

    def capabilities(self) -> list[tuple[str, str | None]]:
        return prelogin_capabilities(self.implementation, self.sieve_extensions, self.notify_methods,
                                     offer_starttls=self.starttls and not self.secured,
                                     mechanisms=self.mechanisms(), trusted=self.trusted)

    def capability_lines(self) -> bytes:
        return b"".join(_capability_line(name, value) for name, value in self.capabilities())

    def greeting(self) -> bytes:
        return self.capability_lines() + _line(response("OK", self.greeting_text))

    def tls_started(self) -> None:
        """The TLS handshake after STARTTLS is done: queue the capabilities again (RFC 5804 §2.2,
        now without STARTTLS and with the mechanisms) and read commands, now secured."""
        super().tls_started()
        self._out += self.capability_lines() + _line(response("OK", "TLS negotiation successful."))

    def login_failed(self, tag: None, reply: str) -> list[Event]:
        """Send `reply` (e.g. AUTH_FAILED, TEMP_FAILED, referral_response()) and resume reading commands.

        `tag` is the request's tag, always None here; it is there so one caller can drive
        every protocol's core alike."""
        self._check_pending(tag)
        return self._login_refused(_line(reply))

    # ---- input

    def _next_input(self, events: list[Event]) -> bytes | None:
        # Clients send literal bytes without waiting (RFC 5804 wants `{n+}`; Dovecot reads
        # `{n}` the same way), so a literal that does not fit leaves no way to find the
        # next command: give up.
        return next_message_inline(self._lines)

    def _bye(self, text: str) -> bytes:
        return _line(response("BYE", text))

    def _input_full(self) -> bytes:
        return self._bye(INPUT_FULL)

    def _too_many_bad(self) -> bytes:
        return self._bye("Too many invalid MANAGESIEVE commands.")

    def _bad_command(self, events: list[Event]) -> None:
        self._reject_command(_line(response("NO", BAD_COMMAND)), events)

    def _on_command(self, message: bytes, events: list[Event]) -> None:
        reader = ArgReader(message)
        try:
            name = reader.atom().upper()
        except ImapSyntaxError:
            self._bad_command(events)
            return
        handler = _COMMANDS.get(name)
        if handler is None:
            self._bad_command(events)
            return
        try:
            handler(self, reader, events)
        except ImapSyntaxError:
            self._bad_command(events)

    # ---- commands

    def _cmd_capability(self, reader: ArgReader, events: list[Event]) -> None:
        reader.end()
        self._out += self.capability_lines() + _line(response("OK", "Capability completed."))

    def _cmd_noop(self, reader: ArgReader, events: list[Event]) -> None:
        if reader.at_end():
            self._out += _line(response("OK", "NOOP Completed"))
            return
        reader.sp()
        echo = decode(reader.string())
        reader.end()
        if any(ch in echo for ch in "\r\n\0"):
            # Pigeonhole would echo such a tag as a literal; refusing it keeps every reply
            # one line, so no client-chosen bytes can ever start a line of ours.
            self._out += _line(response("NO", "Invalid echo tag."))
            return
        self._out += _line(response("OK", "Done", f"TAG {quote(echo)}"))

    def _cmd_logout(self, reader: ArgReader, events: list[Event]) -> None:
        reader.end()
        self._close(_line(response("OK", "Logout completed.")), "Aborted login (logged out)", events)

    def _cmd_starttls(self, reader: ArgReader, events: list[Event]) -> None:
        reader.end()
        if self.secured:
            self._out += _line(response("NO", "TLS is already active."))
            return
        if not self.starttls:
            self._out += _line(response("NO", "TLS support isn't enabled."))
            return
        self._start_tls(_line(response("OK", "Begin TLS negotiation now.")), StartTlsRequest(), events)

    def _cmd_xclient(self, reader: ArgReader, events: list[Event]) -> None:
        if not self.trusted:
            self._out += _line(response("NO", "You are not from trusted IP"))
            return
        try:
            forwarded = parse_xclient(decode(reader.data[reader.pos:]))
        except ValueError:
            self._bad_command(events)
            return
        self._out += _line(response("OK", "Updated"))
        events.append(forwarded)

    def _cmd_authenticate(self, reader: ArgReader, events: list[Event]) -> None:
        reader.sp()
        mech = decode(reader.string()).upper()
        initial: bytes | None = None
        if not reader.at_end():
            reader.sp()
            initial = reader.string()
        reader.end()
        if not mech:
            raise ImapSyntaxError("empty mechanism")
        if mech not in MECHANISMS:
            self._out += _line(response("NO", "Unsupported authentication mechanism."))
            return
        if not self.cleartext_allowed:
            self._out += _line(PRIVACY_REQUIRED)
            return
        decoded: bytes | None = None
        if initial is not None:
            try:
                decoded = b64decode_strict(initial)
            except binascii.Error:
                self._out += _line(response("NO", "Invalid base64 data in initial response"))
                return
        self._start_sasl(mech, decoded, events)

    # ---- SASL

    def _on_sasl_response(self, message: bytes, events: list[Event]) -> None:
        assert self._sasl is not None
        self.state = ServerState.COMMAND
        if not message:
            self._sasl = None
            self._out += _line(response("NO", "Received empty AUTHENTICATE client response line."))
            return
        reader = ArgReader(message)
        try:
            value = reader.string()
            reader.end()
        except ImapSyntaxError:
            self._sasl = None
            self._out += _line(response("NO", "Invalid AUTHENTICATE client response."))
            return
        self._sasl_continue(value, events, aborted=_line(response("NO", "Authentication aborted by client.")),
                            invalid=_line(response("NO", "Invalid base64 data in continued response")))

    def _challenge(self, data: bytes) -> bytes:
        return _line(quote(base64.b64encode(data).decode("ascii")))

    def _auth_failed(self) -> bytes:
        return _line(AUTH_FAILED)

    def _login_request(self, credentials: Credentials, mechanism: str) -> LoginRequest:
        return LoginRequest(None, credentials.username, credentials.password, mechanism, "AUTHENTICATE",
                            credentials.authzid)


_COMMANDS = {
    b"CAPABILITY": SieveLoginServer._cmd_capability,
    b"NOOP": SieveLoginServer._cmd_noop,
    b"LOGOUT": SieveLoginServer._cmd_logout,
    b"STARTTLS": SieveLoginServer._cmd_starttls,
    b"AUTHENTICATE": SieveLoginServer._cmd_authenticate,
    b"XCLIENT": SieveLoginServer._cmd_xclient,
}


# --------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class LoggedIn:
    """The backend accepted the login. `ok_line` is its OK reply (with CRLF), to forward;
    `capabilities` its pre-login capability list, names upper-cased (`SIEVE` holds the
    extensions the proxy may want to advertise)."""

    ok_line: bytes
    capabilities: dict[str, str | None]


@dataclass(frozen=True)
class LoginFailed(LoginFailure):
    """The login did not succeed.

    kind: `auth` (NO without a code, or AUTH-TOO-WEAK), `temp` (TRYLATER, a BYE, or the
    backend went away: worth retrying), `referral` (the user lives elsewhere: `referral`
    holds the sieve URL), `config` (the backend refused our XCLIENT or offers no PLAIN),
    `other` (another code, to forward verbatim) or `protocol` (the backend did not speak
    ManageSieve as expected).
    """


LoginResult = LoggedIn | LoginFailed


class ClientState(enum.Enum):
    CAPABILITIES = "capabilities"
    XCLIENT = "xclient"
    AUTHENTICATE = "authenticate"
    DONE = "done"


class SieveLoginClient(LoginClientCore[LoginResult]):
    """Logs a user in to Dovecot's managesieve-login as a master user, in Dovecot's proxy
    order: read the capability greeting, then `XCLIENT ...` (only when `"XCLIENT"` is
    advertised, i.e. we are trusted) pipelined with `AUTHENTICATE "PLAIN" "<b64>"`."""

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
        super().__init__(username, master_user, state=ClientState.CAPABILITIES, reader=LineAssembler(max_line))
        self._initial_response = plain_initial_response(username, master_user, master_password)
        self._xclient_line = format_xclient(xclient or {})
        self.capabilities: dict[str, str | None] = {}
        self._capability_bytes = 0
        #: The greeting offered XCLIENT and we sent the client's address with it.
        self.xclient_sent = False

    # ---- internals

    def _next_input(self) -> bytes | None:
        return next_message_inline(self._reader)

    def _on_input(self, message: bytes) -> None:
        if self.state is ClientState.CAPABILITIES and message[:1] in (b'"', b"{"):
            self._on_capability(message)
            return
        try:
            resp = parse_response(message)
        except SieveSyntaxError:
            self._protocol_error(f"Invalid reply from backend: {shorten(message)}")
            return
        if self.state is ClientState.CAPABILITIES:
            self._on_greeting_end(resp)
        elif self.state is ClientState.XCLIENT:
            if resp.status == "OK":
                self.state = ClientState.AUTHENTICATE
            else:
                self._finish(LoginFailed("config", resp.code, f"XCLIENT refused: {resp.text}", line=resp.raw))
        elif resp.status == "OK":
            self._finish(LoggedIn(resp.raw, dict(self.capabilities)))
        else:
            self._on_failure(resp)

    def _on_capability(self, message: bytes) -> None:
        try:
            name, value = parse_capability_line(message)
        except SieveSyntaxError:
            self._protocol_error(f"Invalid capability line: {shorten(message)}")
            return
        self._capability_bytes += len(message)
        if self._capability_bytes > self._reader.max_size:
            # Kept until the greeting ends: bounded like one message.
            self._protocol_error("Backend sent too long a capability list")
            return
        self.capabilities[name] = value

    def _on_greeting_end(self, resp: SieveResponse) -> None:
        if resp.status != "OK":
            self._on_failure(resp)
            return
        mechanisms = (self.capabilities.get("SASL") or "").upper().split()
        if not mechanisms:
            self._finish(LoginFailed("config", None, "Server has disabled authentication (TLS required?)"))
            return
        if "PLAIN" not in mechanisms:
            self._finish(LoginFailed("config", None, "Backend does not offer SASL PLAIN"))
            return
        if "XCLIENT" in self.capabilities and self._xclient_line is not None:
            self._out += self._xclient_line
            self.xclient_sent = True
            self.state = ClientState.XCLIENT
        else:
            self.state = ClientState.AUTHENTICATE
        self._out += b'AUTHENTICATE "PLAIN" "' + self._initial_response + b'"\r\n'

    def _on_failure(self, resp: SieveResponse) -> None:
        code = resp.code
        referral = None
        if code == "REFERRAL":
            if not resp.code_args:
                self._protocol_error("REFERRAL without a URL")
                return
            kind, referral = "referral", resp.code_args[0]
        elif code == "TRYLATER" or (code is None and resp.status == "BYE"):
            kind = "temp"
        elif code is None or code == "AUTH-TOO-WEAK":
            kind = "auth"
        else:
            kind = "other"
        self._finish(LoginFailed(kind, code, resp.text, referral, resp.raw))
