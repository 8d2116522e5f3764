"""SMTP Submission login phase, sans-IO: the server side palomar's proxy shows to mail
clients, and the client side palomar's backend uses to log a user in to Dovecot's
submission-login as a master user, forwarding the client's address with XCLIENT.

Like the IMAP core, both sides take bytes and return events, collect the bytes they want
sent in `data_to_send()`, and step aside after the login: bytes pipelined behind it come
back from `leftover()` to be relayed. Reply texts follow Dovecot's submission-login.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from palomar.protocols.login_core import (
    ClientForwarded,
    Close,
    LoginClientCore,
    LoginServerCore,
    MasterLoginMixin,
    ServerState,
    parse_xclient,
)
from palomar.protocols.sasl import MECHANISMS, Credentials, b64decode_strict, plain_initial_response
from palomar.protocols.smtp_syntax import (
    LineReader,
    Reply,
    ReplyReader,
    SmtpSyntaxError,
    ehlo_keywords,
    format_reply,
    format_xclient,
    greeting_reply,
    hello_name_error,
    parse_command,
    reply_line,
)

__all__ = [
    "AUTH_FAILED",
    "DEFAULT_EHLO_CAPABILITIES",
    "LOGGED_IN",
    "TEMP_FAILED",
    "ClientState",
    "Close",
    "Event",
    "LoggedIn",
    "LoginFailed",
    "LoginRequest",
    "LoginResult",
    "ServerState",
    "StartTlsRequest",
    "SubmissionLoginClient",
    "SubmissionLoginServer",
    "post_login_ehlo_reply",
    "prelogin_ehlo",
]

#: What the proxy offers before login: Dovecot's submission-login in front of a Dovecot submission
#: backend (submission_backend_capabilities unset, no exotic-backend workaround). AUTH, STARTTLS and
#: XCLIENT are added by the connection state, and every keyword goes in Dovecot's order.
DEFAULT_EHLO_CAPABILITIES: tuple[str, ...] = (
    "8BITMIME", "BURL imap", "CHUNKING", "ENHANCEDSTATUSCODES", "SIZE", "PIPELINING",
)
XCLIENT_CAPABILITY = "XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT FORWARD"
"""What Dovecot's submission-login offers a peer in login_trusted_networks."""
_EHLO_ORDER = ("8BITMIME", "AUTH", "BINARYMIME", "BURL", "CHUNKING", "DSN", "ENHANCEDSTATUSCODES", "SIZE",
               "STARTTLS", "PIPELINING", "VRFY", "XCLIENT")
"""The order Dovecot's submission-login lists its EHLO keywords in (others go last)."""

AUTH_FAILED = "535 5.7.8 Authentication failed."
TEMP_FAILED = "454 4.7.0 Account is temporarily unavailable."
"""Dovecot's submission-login when the backend cannot be reached (LOGIN_PROXY_FAILURE_MSG)."""
LOGGED_IN = "235 2.7.0 Logged in."
AUTH_REQUIRED = "530 5.7.0 Authentication required."
ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
OK = "250 2.0.0 OK"
UNKNOWN_COMMAND = "500 5.5.1 Unknown command"
LINE_TOO_LONG = "500 5.5.2 Line too long"
_NOT_CLIENT_CAPABILITIES = frozenset({"AUTH", "STARTTLS", "XCLIENT", "XRCPTFORWARD"})
_NEED_AUTH = frozenset({"MAIL", "RCPT", "DATA", "BDAT", "BURL", "VRFY", "EXPN", "ETRN"})
_AUTH_LINE_MAX = 510  # longer AUTH lines send the initial response after `334 `, as Dovecot does


def _out(reply: str) -> bytes:
    return reply_line(reply)


def prelogin_ehlo(base: Iterable[str], *, offer_starttls: bool, cleartext_allowed: bool, trusted: bool) -> list[str]:
    """The pre-login EHLO keywords in submission-login's order: the learnt or configured `base`
    plus what the connection decides: AUTH with the proxy's own mechanisms when a password may be
    sent (Dovecot leaves it out when TLS is required first), STARTTLS before TLS, XCLIENT for a
    peer in login_trusted_networks."""
    caps = list(base)
    if cleartext_allowed:
        caps.append("AUTH " + " ".join(MECHANISMS))
    if offer_starttls:
        caps.append("STARTTLS")
    if trusted:
        caps.append(XCLIENT_CAPABILITY)
    return sorted(caps, key=_ehlo_rank)


def post_login_ehlo_reply(hostname: str, capabilities: Iterable[str]) -> bytes:
    """The EHLO reply a logged-in client should see: the backend's post-login extensions
    (SIZE, 8BITMIME, PIPELINING, ...) under our host name, without the ones that belong to
    the login phase or the proxy hop (AUTH, STARTTLS, XCLIENT)."""
    kept = [cap for cap in capabilities if cap.split(" ", 1)[0].upper() not in _NOT_CLIENT_CAPABILITIES]
    return format_reply(250, None, [hostname, *kept])


# --------------------------------------------------------------------------- server events


@dataclass(frozen=True)
class LoginRequest(MasterLoginMixin):
    """The client sent AUTH; answer with login_failed() or login_succeeded().

    `ehlo_name` is what the client said in EHLO/HELO (None if it skipped it): the backend
    forwards it with XCLIENT HELO. `authzid` is set when a PLAIN client asked to act as
    another user; the caller decides whether to allow that.
    """

    username: str
    password: str = field(repr=False)
    mechanism: str = "PLAIN"
    ehlo_name: str | None = None
    authzid: str | None = None
    tag: None = None
    """SMTP has no command tags; present so one driver can run every protocol's core alike."""


@dataclass(frozen=True)
class StartTlsRequest:
    """`220 2.0.0 Begin TLS negotiation now.` is queued; send it, handshake, then tls_started()."""


Event = LoginRequest | StartTlsRequest | ClientForwarded | Close


# --------------------------------------------------------------------------- server


class SubmissionLoginServer(LoginServerCore):
    """Pre-login Submission server core: answers EHLO, STARTTLS and the like itself and
    hands AUTH to the caller."""

    _FRAMER = LineReader
    _lines: LineReader

    def __init__(
        self,
        *,
        hostname: str,
        starttls: bool,
        secured: bool,
        allow_cleartext: bool,
        capabilities: Iterable[str] = DEFAULT_EHLO_CAPABILITIES,
        greeting: str = "Palomar ready.",
        max_line: int = 4096,
        max_bad_commands: int = 10,
        trusted: bool = False,
    ) -> None:
        self.base_capabilities = tuple(capabilities)
        for cap in self.base_capabilities:
            if cap.split(" ", 1)[0].upper() in _NOT_CLIENT_CAPABILITIES:
                raise ValueError(f"{cap} is decided by the connection state, not configured")
        greeting_reply(hostname, greeting)  # refuses a bad host name or greeting before anything is sent
        self.hostname = hostname
        super().__init__(starttls=starttls, secured=secured, allow_cleartext=allow_cleartext, greeting=greeting,
                         max_line=max_line, max_bad_commands=max_bad_commands, trusted=trusted)
        self.ehlo_name: str | None = None
        self._skip = 0  # bytes of a refused BDAT chunk still to drop

    # ---- what the caller asks

    def ehlo_capabilities(self) -> list[str]:
        return prelogin_ehlo(self.base_capabilities, offer_starttls=self.starttls and not self.secured,
                             cleartext_allowed=self.cleartext_allowed, trusted=self.trusted)

    def greeting(self) -> bytes:
        return greeting_reply(self.hostname, self.greeting_text)

    def tls_started(self) -> None:
        """The TLS handshake after STARTTLS is done; the client must EHLO again."""
        super().tls_started()
        self.ehlo_name = None

    def login_failed(self, tag: None, reply: str | bytes) -> list[Event]:
        """Send `reply` (AUTH_FAILED, TEMP_FAILED or a backend's reply) and read commands again.

        `tag` is always None (SMTP has none); it keeps the call shape of the other cores."""
        self._check_pending(None)
        return self._login_refused(reply_line(reply))

    def login_succeeded(self, reply: str | bytes | None = None) -> None:
        """The login is done; `reply` (e.g. LOGGED_IN) is queued if the caller has not sent one.
        From now on the core produces nothing."""
        self._check_pending(None)
        if reply is not None:
            self._out += reply_line(reply)
        super().login_succeeded()

    # ---- input

    def _next_input(self, events: list[Event]) -> bytes | None:
        if self._skip:
            self._skip -= len(self._lines.take(self._skip))
            if self._skip:
                return None
        return self._lines.next_line()

    def _line_too_long(self, events: list[Event]) -> None:
        # The reader drops the rest of the line, so the session can carry on.
        self._sasl = None
        self.state = ServerState.COMMAND
        self._bad_command(LINE_TOO_LONG, events)

    def _input_full(self) -> bytes:
        return _out(f"421 4.7.0 {self.hostname} Input buffer full")

    def _too_many_bad(self) -> bytes:
        return _out(f"421 4.7.0 {self.hostname} Too many invalid commands.")

    def _bad_command(self, reply: str, events: list[Event]) -> None:
        self._reject_command(_out(reply), events)

    def _on_command(self, line: bytes, events: list[Event]) -> None:
        try:
            command = parse_command(line)
        except SmtpSyntaxError:
            self._bad_command("500 5.5.2 Invalid command syntax", events)
            return
        verb, args = command.verb, command.args
        if verb in ("EHLO", "HELO"):
            self._cmd_hello(verb, args)
        elif verb == "STARTTLS":
            self._cmd_starttls(args, events)
        elif verb == "AUTH":
            self._cmd_auth(args, events)
        elif verb == "XCLIENT":
            self._cmd_xclient(args, events)
        elif verb in ("RSET", "NOOP"):
            if verb == "RSET" and args:
                self._out += _out("501 5.5.4 Invalid parameters")
            else:
                self._out += _out(OK)
        elif verb == "QUIT":
            self._close(_out("221 2.0.0 Bye"), "Aborted login (logged out)", events)
        elif verb in _NEED_AUTH:
            if verb == "BDAT":
                self._skip_bdat(args)
            self._out += _out(AUTH_REQUIRED)
        else:
            self._bad_command(UNKNOWN_COMMAND, events)

    def _skip_bdat(self, args: str) -> None:
        """A BDAT chunk follows its command whatever we answer; drop it to stay in step."""
        size = args.split(" ", 1)[0]
        if size.isdigit() and len(size) <= 18:
            self._skip = int(size)

    # ---- commands

    def _cmd_hello(self, verb: str, args: str) -> None:
        name = args.strip(" ")
        error = hello_name_error(name)
        if error is not None:
            self._out += _out(error)
            return
        self.ehlo_name = name
        if verb == "HELO":
            self._out += format_reply(250, None, self.hostname)
        else:
            self._out += format_reply(250, None, [self.hostname, *self.ehlo_capabilities()])

    def _cmd_starttls(self, args: str, events: list[Event]) -> None:
        if args:
            self._out += _out("501 5.5.4 Invalid parameters")
        elif self.secured:
            self._out += _out("502 5.5.1 TLS is already active.")
        elif not self.starttls:
            self._out += _out("502 5.5.1 TLS support is not enabled.")
        else:
            self._skip = 0
            self._start_tls(_out("220 2.0.0 Begin TLS negotiation now."), StartTlsRequest(), events)

    def _cmd_xclient(self, args: str, events: list[Event]) -> None:
        """A trusted peer tells the real client; as after Dovecot's XCLIENT, the session starts
        over with a new greeting and the client must EHLO again."""
        if not self.trusted:
            self._out += _out("550 5.7.14 You are not from trusted IP")
            return
        try:
            forwarded = parse_xclient(args)
        except ValueError as exc:
            self._out += _out(f"501 5.5.4 Invalid {exc} parameter")
            return
        self.ehlo_name = None
        self._out += self.greeting()
        events.append(forwarded)

    def _cmd_auth(self, args: str, events: list[Event]) -> None:
        words = args.split(" ")
        mech = words[0].upper()
        if not mech:
            self._out += _out("501 5.5.4 Missing SASL mechanism parameter")
            return
        if len(words) > 2:
            self._out += _out("501 5.5.4 Invalid parameters")
            return
        if mech not in MECHANISMS:
            self._out += _out("504 5.5.4 Unsupported authentication mechanism.")
            return
        if not self.cleartext_allowed:
            self._out += _out(ENCRYPTION_REQUIRED)
            return
        initial: bytes | None = None
        if len(words) == 2:
            try:
                initial = b"" if words[1] == "=" else b64decode_strict(words[1].encode("ascii"))
            except (binascii.Error, UnicodeEncodeError):
                self._out += _out("501 5.5.2 Invalid base64 data in initial response")
                return
        self._start_sasl(mech, initial, events)

    def _on_sasl_response(self, line: bytes, events: list[Event]) -> None:
        self._sasl_continue(line, events, aborted=_out("501 5.5.2 Authentication aborted by client."),
                            invalid=_out("501 5.5.2 Invalid base64 data in continued response"))

    def _challenge(self, data: bytes) -> bytes:
        return b"334 " + base64.b64encode(data) + b"\r\n"

    def _auth_failed(self) -> bytes:
        return _out(AUTH_FAILED)

    def _login_request(self, credentials: Credentials, mechanism: str) -> LoginRequest:
        return LoginRequest(credentials.username, credentials.password, mechanism, self.ehlo_name,
                            credentials.authzid)


def _ehlo_rank(capability: str) -> tuple[int, str]:
    keyword = capability.split(" ", 1)[0].upper()
    return (_EHLO_ORDER.index(keyword) if keyword in _EHLO_ORDER else len(_EHLO_ORDER), keyword)


# --------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class LoggedIn:
    """The backend accepted the login. `reply` is its 235 reply as received; the
    capabilities are those of the last EHLO reply (`post_login_ehlo=True`: the one given
    after the login, with the real SIZE limit), one extension per item as on the wire."""

    ehlo_capabilities: list[str]
    reply: bytes


@dataclass(frozen=True)
class LoginFailed:
    """The login did not succeed.

    kind: `auth` (535), `temp` (4xx, or the backend went away: worth retrying),
    `referral` (`550 5.2.900 [user@]host[:port] Referral`: `referral` holds the target) or
    `protocol` (any other reply, forwardable verbatim from `reply`, or a backend that did
    not speak SMTP as expected). `code` is None when no reply caused the failure.
    """

    kind: str
    code: int | None
    text: str
    referral: str | None = None
    reply: bytes = b""


LoginResult = LoggedIn | LoginFailed


class ClientState(enum.Enum):
    BANNER = "banner"
    EHLO = "ehlo"
    XCLIENT = "xclient"
    XCLIENT_EHLO = "xclient-ehlo"
    AUTHENTICATE = "authenticate"
    POST_EHLO = "post-ehlo"
    DONE = "done"


class SubmissionLoginClient(LoginClientCore[LoginResult]):
    """Logs a user in to Dovecot's submission-login as a master user (SASL PLAIN with
    authzid=username, authcid=master_user) in Dovecot's proxy order: greeting, EHLO,
    XCLIENT with the attributes the backend advertised (each line answered by a new 220
    greeting) pipelined with a second EHLO, then AUTH PLAIN."""

    _DONE = ClientState.DONE
    _FAILED = LoginFailed
    _REPLY_ERRORS = (SmtpSyntaxError,)

    def __init__(
        self,
        username: str,
        *,
        master_user: str,
        master_password: str,
        helo: str,
        xclient: Mapping[str, str] | None = None,
        post_login_ehlo: bool = True,
        max_line: int = 65536,
    ) -> None:
        super().__init__(username, master_user, state=ClientState.BANNER, reader=ReplyReader(max_line))
        if not helo or any(ord(ch) <= 0x20 for ch in helo):
            raise ValueError("helo must be one word")
        self.helo = helo
        self.xclient = dict(xclient or {})
        self.post_login_ehlo = post_login_ehlo
        self._initial_response = plain_initial_response(username, master_user, master_password)
        self.capabilities: list[str] = []
        self.xclient_sent = False
        self._xclient_pending = 0
        self._awaiting_challenge = False
        self._auth_reply: Reply | None = None

    # ---- internals

    def _next_input(self) -> Reply | None:
        return self._reader.next_reply()

    def _fail(self, kind: str, reply: Reply | None, text: str) -> LoginResult:
        if reply is None:
            self._finish(LoginFailed(kind, None, text))
        else:
            self._finish(LoginFailed(kind, reply.code, text, None, reply.raw))
        assert self.result is not None
        return self.result

    def _send_ehlo(self) -> None:
        self._out += f"EHLO {self.helo}\r\n".encode("utf-8", "surrogateescape")

    def _on_input(self, reply: Reply) -> None:
        handler = {
            ClientState.BANNER: self._on_banner,
            ClientState.EHLO: self._on_ehlo,
            ClientState.XCLIENT: self._on_xclient,
            ClientState.XCLIENT_EHLO: self._on_xclient_ehlo,
            ClientState.AUTHENTICATE: self._on_auth,
            ClientState.POST_EHLO: self._on_post_ehlo,
        }[self.state]
        handler(reply)

    def _on_banner(self, reply: Reply) -> None:
        if reply.code != 220:
            kind = "temp" if reply.transient else "protocol"
            self._fail(kind, reply, f"Backend refused us: {reply.first_line()}")
            return
        self._send_ehlo()
        self.state = ClientState.EHLO

    def _ehlo_ok(self, reply: Reply) -> bool:
        if reply.code != 250:
            self._fail("temp" if reply.transient else "protocol", reply, f"EHLO failed: {reply.first_line()}")
            return False
        self.capabilities = list(reply.lines[1:])
        return True

    def _on_ehlo(self, reply: Reply) -> None:
        if not self._ehlo_ok(reply):
            return
        advertised = ehlo_keywords(reply).get("XCLIENT")
        lines = format_xclient(self.xclient, advertised or ()) if advertised else []
        if not lines:
            self._start_auth(reply)
            return
        for line in lines:
            self._out += line
        self._send_ehlo()  # pipelined, as Dovecot's proxy does
        self.xclient_sent = True
        self._xclient_pending = len(lines)
        self.state = ClientState.XCLIENT

    def _on_xclient(self, reply: Reply) -> None:
        if reply.code != 220:
            kind = "temp" if reply.transient else "protocol"
            self._fail(kind, reply, f"XCLIENT failed: {reply.first_line()}")
            return
        self._xclient_pending -= 1
        if not self._xclient_pending:
            self.state = ClientState.XCLIENT_EHLO

    def _on_xclient_ehlo(self, reply: Reply) -> None:
        if self._ehlo_ok(reply):
            self._start_auth(reply)

    def _start_auth(self, ehlo: Reply) -> None:
        mechanisms = [mech.upper() for mech in ehlo_keywords(ehlo).get("AUTH", [])]
        if "PLAIN" not in mechanisms:
            self._fail("protocol", None, "Backend does not offer AUTH PLAIN (TLS required?)")
            return
        line = b"AUTH PLAIN " + self._initial_response
        if len(line) > _AUTH_LINE_MAX:
            self._out += b"AUTH PLAIN\r\n"
            self._awaiting_challenge = True
        else:
            self._out += line + b"\r\n"
        self.state = ClientState.AUTHENTICATE

    def _on_auth(self, reply: Reply) -> None:
        if reply.code == 334:
            if not self._awaiting_challenge or len(reply.lines) != 1:
                self._fail("protocol", reply, "Unexpected AUTH challenge from backend")
                return
            self._awaiting_challenge = False
            self._out += self._initial_response + b"\r\n"
            return
        if 200 <= reply.code < 300:
            if self.post_login_ehlo:
                self._auth_reply = reply
                self._send_ehlo()
                self.state = ClientState.POST_EHLO
            else:
                self._finish(LoggedIn(list(self.capabilities), reply.raw))
            return
        self._finish(_classify_failure(reply))

    def _on_post_ehlo(self, reply: Reply) -> None:
        assert self._auth_reply is not None
        if reply.code != 250:  # e.g. `421 4.4.0 ... Failed to connect to relay server`
            kind = "temp" if reply.transient else "protocol"
            self._fail(kind, reply, f"Backend failed after login: {reply.first_line()}")
            return
        self.capabilities = list(reply.lines[1:])
        self._finish(LoggedIn(list(self.capabilities), self._auth_reply.raw))


def _classify_failure(reply: Reply) -> LoginFailed:
    text = reply.text
    if reply.code == 550 and reply.enhanced == "5.2.900":
        target = text.split(" ", 1)[0]
        if target:
            return LoginFailed("referral", reply.code, text, target, reply.raw)
        return LoginFailed("protocol", reply.code, "Referral without a target", None, reply.raw)
    if reply.code == 535:
        kind = "auth"
    elif reply.transient:
        kind = "temp"
    else:
        kind = "protocol"
    return LoginFailed(kind, reply.code, text, None, reply.raw)

