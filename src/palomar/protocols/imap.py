"""IMAP login phase, sans-IO: the server side palomar's proxy shows to clients, and the
client side palomar's backend uses to log a user in to its Dovecot as a master user.

Both cores take bytes and return events; the bytes they want sent are collected in
`data_to_send()`. After the login they step aside: whatever the peer pipelined after
the login command is handed back by `leftover()` so it can be relayed, not lost.
Reply texts follow Dovecot's imap-login so clients see what they would see there.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from palomar.protocols.imap_syntax import (
    ArgReader,
    ImapSyntaxError,
    LineAssembler,
    LiteralAnnounced,
    Response,
    decode,
    parse_response,
    quote,
)
from palomar.protocols.login_core import (
    MAX_SESSION_ID,
    ClientForwarded,
    Close,
    LoginClientCore,
    LoginFailure,
    LoginServerCore,
    MasterLoginMixin,
    ServerState,
    forwarded_ip,
    forwarded_port,
    next_message_inline,
    shorten,
)
from palomar.protocols.login_core import text_line as _line
from palomar.protocols.sasl import MECHANISMS, Credentials, plain_initial_response
from palomar.protocols.sasl import b64decode_strict as _b64decode

__all__ = [
    "AUTH_FAILED",
    "DEFAULT_CAPABILITIES",
    "PRIVACY_REQUIRED",
    "SASL_PRIVACY_REQUIRED",
    "ClientForwarded",
    "ClientState",
    "Event",
    "LoginResult",
    "Close",
    "IdReceived",
    "ImapLoginClient",
    "ImapLoginServer",
    "LoggedIn",
    "LoginFailed",
    "LoginRequest",
    "ServerState",
    "StartTlsRequest",
    "client_id_to_forward",
    "forwarded_from_id",
    "id_log_text",
    "login_ok_reply",
    "prelogin_capabilities",
    "rewrite_tag",
    "tagged",
    "untagged",
]

DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "IMAP4rev1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE", "LITERAL+",
)
MAX_TAG_LENGTH = 100
MAX_ID_KEY = 30
MAX_ID_VALUE = 1024
MAX_ID_COMMAND = 65536
"""An ID command may be longer than other commands: RFC 2971 allows 30 pairs of 1,024-octet values
(Dovecot reads ID argument by argument, so its line limit does not apply to it either)."""
MAX_CLIENT_ID = 256
"""Dovecot's LOGIN_MAX_CLIENT_ID_LEN: how much of a client's ID imap_id_retain passes on."""
ID_LOG_VALUE_MAX = 80
"""Dovecot's `ID sent:` log line cuts each value to this many bytes."""
_ID_COMMAND = re.compile(rb"^[^ ]+ ID[ (]", re.IGNORECASE)
#: ID keys a trusted peer uses to tell the real client (Dovecot's imap-login handles these, and
#: never forwards them as the client's own ID).
_FORWARD_KEYS = {
    "x-originating-ip": "ip", "x-originating-port": "port", "x-connected-ip": "local_ip",
    "x-connected-port": "local_port", "x-session-id": "session_id", "x-session-ext-id": "session_id",
}

AUTH_FAILED = "NO [AUTHENTICATIONFAILED] Authentication failed."
PRIVACY_REQUIRED = "NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
SASL_PRIVACY_REQUIRED = "NO [PRIVACYREQUIRED] Plaintext authentication disabled."
"""Dovecot's answer to AUTHENTICATE with a plaintext mechanism before TLS (LOGIN gets PRIVACY_REQUIRED)."""
BAD_COMMAND = "Error in IMAP command received by server."
INPUT_FULL = "Input buffer full, aborting"
_TAG_FORBIDDEN = frozenset(b'+(){ %*"\\')


# --------------------------------------------------------------------------- formatting


def tagged(tag: str, status: str, text: str) -> bytes:
    """`tag STATUS text\\r\\n`, e.g. tagged("a1", "NO", "[AUTHENTICATIONFAILED] Authentication failed.")."""
    return _line(f"{tag} {status} {text}")


def prelogin_capabilities(base: Iterable[str], *, offer_starttls: bool, cleartext_allowed: bool) -> list[str]:
    """The pre-login CAPABILITY list in imap-login's order: the learnt or configured `base`, then
    what the connection decides: STARTTLS before TLS, and AUTH= for the proxy's own mechanisms when
    a password may be sent, else LOGINDISABLED."""
    caps = list(base)
    if offer_starttls:
        caps.append("STARTTLS")
    if cleartext_allowed:
        caps.extend(f"AUTH={mech}" for mech in MECHANISMS)
    else:
        caps.append("LOGINDISABLED")
    return caps


def untagged(text: str) -> bytes:
    return _line(f"* {text}")


def rewrite_tag(backend_line: bytes, client_tag: str, capabilities: Sequence[str] | None = None) -> bytes:
    """Give the backend's tagged reply the client's tag: `L OK [CAPABILITY ...] Logged in`
    becomes `<client_tag> OK [CAPABILITY ...] Logged in`. With `capabilities`, a tagged OK
    lacking a response code gets `[CAPABILITY ...]` inserted, so the client still learns
    the post-login capabilities (as Dovecot's proxy does)."""
    line = backend_line.rstrip(b"\r\n")
    _, sep, rest = line.partition(b" ")
    if not sep or not rest:
        raise ValueError("not a tagged reply line")
    status, _, text = rest.partition(b" ")
    if capabilities is not None and status.upper() == b"OK" and not text.startswith(b"["):
        code = ("[CAPABILITY " + " ".join(capabilities) + "]").encode("ascii")
        rest = status + b" " + code + (b" " + text if text else b"")
    return client_tag.encode("ascii") + b" " + rest + b"\r\n"


def login_ok_reply(backend_line: bytes, client_tag: str, client_used_capability: bool) -> bytes:
    """The client's tagged OK for the backend's `L OK [CAPABILITY ...] Logged in`, as Dovecot words it.

    A client that asked CAPABILITY before STARTTLS may not read capability response codes, so
    Dovecot (imap-login, and its proxy) sends the post-login capabilities as an untagged
    `* CAPABILITY` line and a tagged OK without the code; other clients get the code."""
    line = rewrite_tag(backend_line, client_tag)
    if not client_used_capability:
        return line
    head = client_tag.encode("ascii") + b" OK [CAPABILITY "
    if not line.upper().startswith(head.upper()):
        return line
    end = line.find(b"]", len(head))
    if end < 0:
        return line
    capabilities = line[len(head):end]
    rest = line[end + 1:].lstrip(b" ")
    return b"* CAPABILITY " + capabilities + b"\r\n" + client_tag.encode("ascii") + b" OK " + rest


def id_log_text(params: Iterable[tuple[str, str | None]], keys: str) -> str | None:
    """The text of Dovecot's `ID sent: ...` log line for `imap_id_log = keys` (`*`: all keys,
    else a space-separated list), or None when nothing is to be logged. Control characters and
    invalid UTF-8 become `?` and values are cut to 80 bytes with `...`, as Dovecot's str_sanitize."""
    if not keys.strip():
        return None
    wanted = None if keys.strip() == "*" else {k.lower() for k in keys.split()}
    parts = [f"{sanitize(key, MAX_ID_KEY)}={'NIL' if value is None else sanitize(value, ID_LOG_VALUE_MAX)}"
             for key, value in params if wanted is None or key.lower() in wanted]
    return ", ".join(parts) if parts or wanted is None else None


def sanitize(text: str, max_bytes: int) -> str:
    """Dovecot's str_sanitize: control characters and invalid UTF-8 as `?`, at most `max_bytes`
    bytes, and `...` in place of the cut end."""
    raw = text.encode("utf-8", "surrogateescape")
    chars = raw.decode("utf-8", "replace").replace("\ufffd", "?")
    clean = "".join("?" if ord(ch) < 32 else ch for ch in chars)
    if len(clean.encode()) <= max_bytes:
        return clean
    cut = clean
    while len(cut.encode()) > max_bytes - 3:
        cut = cut[:-1]
    return cut + "..."


def forwarded_from_id(params: Iterable[tuple[str, str | None]]) -> ClientForwarded | None:
    """What a trusted peer's ID says about the real client (x-originating-ip & co), or None.
    Values that do not parse are ignored, as Dovecot does."""
    fields: dict[str, object] = {}
    for key, value in params:
        name = _FORWARD_KEYS.get(key.lower())
        if name is None or value is None:
            continue
        if name in ("ip", "local_ip"):
            parsed: object = forwarded_ip(value)
        elif name in ("port", "local_port"):
            parsed = forwarded_port(value)
        else:
            parsed = value if len(value) <= MAX_SESSION_ID else None
        if parsed is not None:
            fields[name] = parsed
    return ClientForwarded(**fields) if fields else None  # type: ignore[arg-type]


def client_id_to_forward(params: Iterable[tuple[str, str | None]]) -> tuple[tuple[str, str | None], ...]:
    """The client's own ID pairs to pass on to the backend, as Dovecot's imap_id_retain keeps them:
    not the keys that describe the connection (x-originating-ip, x-forward-...), CR and LF dropped
    from the quoted strings, and only while the list stays under 256 bytes (LOGIN_MAX_CLIENT_ID_LEN)."""
    kept: list[tuple[str, str | None]] = []
    length = 0
    for key, value in params:
        lower = key.lower()
        if lower in _FORWARD_KEYS or lower == "x-proxy-ttl" or lower.startswith("x-forward-"):
            continue
        key = _drop_crlf(key)
        value = None if value is None else _drop_crlf(value)
        pair_length = len(quote(key)) + 1 + (3 if value is None else len(quote(value)))
        if length + pair_length + (1 if kept else 0) >= MAX_CLIENT_ID:
            continue
        length += pair_length + (1 if kept else 0)
        kept.append((key, value))
    return tuple(kept)


def _drop_crlf(text: str) -> str:
    return text.replace("\r", "").replace("\n", "").replace("\0", "")


def _valid_tag(raw: bytes) -> str | None:
    """The tag, or None when it must not be echoed (Dovecot answers such lines with `*`)."""
    if not raw or len(raw) > MAX_TAG_LENGTH:
        return None
    if any(b <= 0x20 or b >= 0x7F or b in _TAG_FORBIDDEN for b in raw):
        return None
    return raw.decode("ascii")


# --------------------------------------------------------------------------- server events


@dataclass(frozen=True)
class LoginRequest(MasterLoginMixin):
    """The client asked to log in; answer with login_failed() or login_succeeded().

    `command` is LOGIN or AUTHENTICATE; `mechanism` is the SASL mechanism (the LOGIN
    command counts as PLAIN). `authzid` is set when a PLAIN client asked to act as
    another user (a master-user style login) - the caller decides whether to allow it.
    """

    tag: str
    username: str
    password: str = field(repr=False)
    mechanism: str = "PLAIN"
    command: str = "LOGIN"
    authzid: str | None = None


@dataclass(frozen=True)
class StartTlsRequest:
    """The core has queued `tag OK Begin TLS negotiation now.`; send it, handshake, then tls_started()."""

    tag: str


@dataclass(frozen=True)
class IdReceived:
    """The client's ID parameters (RFC 2971), for logging and passing on; already answered by the
    core. `first` is True for the session's first ID, the one Dovecot logs."""

    tag: str
    params: tuple[tuple[str, str | None], ...]
    first: bool = True


Event = LoginRequest | StartTlsRequest | IdReceived | ClientForwarded | Close


# --------------------------------------------------------------------------- server


class ImapLoginServer(LoginServerCore):
    """Pre-login IMAP server core: answers what it can by itself and hands logins to the caller."""

    _lines: LineAssembler

    def __init__(
        self,
        capabilities: Iterable[str] = DEFAULT_CAPABILITIES,
        *,
        starttls: bool,
        secured: bool,
        allow_cleartext: bool,
        greeting: str = "Palomar ready.",
        max_line: int = 8192,
        max_bad_commands: int = 3,
        server_id: Sequence[tuple[str, str]] = (("name", "palomar"),),
        trusted: bool = False,
    ) -> None:
        self.base_capabilities = tuple(capabilities)
        for cap in self.base_capabilities:
            upper = cap.upper()
            if upper in ("STARTTLS", "LOGINDISABLED") or upper.startswith("AUTH="):
                raise ValueError(f"{cap} is decided by the connection state, not configured")
        _line(greeting)
        super().__init__(starttls=starttls, secured=secured, allow_cleartext=allow_cleartext, greeting=greeting,
                         max_line=max_line, max_bad_commands=max_bad_commands, trusted=trusted)
        self._lines.max_size_for = self._line_limit
        self.server_id = tuple(server_id)
        self._id_seen = False
        #: The client used CAPABILITY before any STARTTLS: it may ignore [CAPABILITY] codes,
        #: so the post-login capabilities should be sent as an untagged line too.
        self.client_used_capability = False
        self._auth_tag = ""  # the tag of the AUTHENTICATE exchange in progress

    # ---- what the caller asks

    def capability_string(self) -> str:
        return " ".join(prelogin_capabilities(self.base_capabilities, offer_starttls=self.starttls and not self.secured,
                                              cleartext_allowed=self.cleartext_allowed))

    def greeting(self) -> bytes:
        return untagged(f"OK [CAPABILITY {self.capability_string()}] {self.greeting_text}")

    def login_failed(self, tag: str, response: str) -> list[Event]:
        """Send `tag <response>` (e.g. AUTH_FAILED) and resume reading commands."""
        self._check_pending(tag)
        return self._login_refused(_line(f"{tag} {response}"))

    # ---- input

    def _next_input(self, events: list[Event]) -> bytes | None:
        while self.state in (ServerState.COMMAND, ServerState.AUTH_CONTINUE):
            item = self._lines.next_message(literals=self.state is ServerState.COMMAND)
            if not isinstance(item, LiteralAnnounced):
                return item
            self._on_literal(item, events)
        return None

    def _line_limit(self, head: bytes) -> int:
        """The size limit of the command starting with `head`: larger for ID."""
        return max(self.max_line, MAX_ID_COMMAND) if _ID_COMMAND.match(head) else self.max_line

    def tls_started(self) -> None:
        super().tls_started()
        self._lines.max_size_for = self._line_limit

    def _input_full(self) -> bytes:
        return untagged(f"BYE {INPUT_FULL}")

    def _too_many_bad(self) -> bytes:
        return untagged("BYE Too many invalid IMAP commands.")

    def _bad_command(self, tag: str | None, events: list[Event], text: str = BAD_COMMAND) -> None:
        self._reject_command(tagged(tag or "*", "BAD", text), events)

    def _on_literal(self, announced: LiteralAnnounced, events: list[Event]) -> None:
        fits = len(announced.head) + announced.size <= self._line_limit(announced.head)
        if not announced.synchronizing:
            # The client sends the bytes anyway; if they cannot fit we cannot resynchronise.
            if fits:
                self._lines.accept_literal()
            else:
                self._close(self._input_full(), "Input buffer full", events)
            return
        raw_tag, _, rest = announced.head.partition(b" ")
        tag = _valid_tag(raw_tag)
        name = rest.split(b" ", 1)[0].upper()
        if tag is not None and name in (b"LOGIN", b"ID") and fits and (
            name == b"ID" or self.cleartext_allowed
        ):
            self._out += b"+ OK\r\n"
            self._lines.accept_literal()
            return
        # Refused: the client waits for "+ OK", so it will not send the literal.
        self._lines.refuse_literal()
        if tag is None or name not in (b"LOGIN", b"ID"):
            self._bad_command(tag, events)
        elif not fits:
            self._bad_command(tag, events, "Literal size too large.")
        else:
            # LOGIN without TLS: refused before the password is sent in the clear.
            self._out += _line(f"{tag} {PRIVACY_REQUIRED}")

    def _on_command(self, message: bytes, events: list[Event]) -> None:
        raw_tag, sep, _ = message.partition(b" ")
        tag = _valid_tag(raw_tag)
        if tag is None or not sep:
            self._bad_command(tag, events)
            return
        reader = ArgReader(message, len(raw_tag) + 1)
        try:
            name = reader.atom().upper().decode("ascii")
        except ImapSyntaxError:
            self._bad_command(tag, events)
            return
        handler = _COMMANDS.get(name)
        if handler is None:
            if tag.upper() == "LOGIN":
                self._out += tagged(tag, "BAD", "First parameter in line is IMAP's command tag, not the "
                                    "command name. Add that before the command, like: a login user pass")
                return
            self._bad_command(tag, events)
            return
        try:
            handler(self, tag, reader, events)
        except ImapSyntaxError:
            self._bad_command(tag, events)

    # ---- commands

    def _cmd_capability(self, tag: str, reader: ArgReader, events: list[Event]) -> None:
        reader.end()
        if not self.tls_active:
            self.client_used_capability = True
        self._out += untagged(f"CAPABILITY {self.capability_string()}")
        self._out += tagged(tag, "OK", "Pre-login capabilities listed, post-login capabilities have more.")

    def _cmd_noop(self, tag: str, reader: ArgReader, events: list[Event]) -> None:
        reader.end()
        self._out += tagged(tag, "OK", "NOOP completed.")

    def _cmd_logout(self, tag: str, reader: ArgReader, events: list[Event]) -> None:
        reader.end()
        self._close(untagged("BYE Logging out") + tagged(tag, "OK", "Logout completed."),
                    "Aborted login (logged out)", events)

    def _cmd_enable(self, tag: str, reader: ArgReader, events: list[Event]) -> None:
        self._out += untagged("ENABLED") + tagged(tag, "OK", "ENABLE ignored in non-authenticated state.")

    def _cmd_starttls(self, tag: str, reader: ArgReader, events: list[Event]) -> None:
        reader.end()
        if self.secured:
            self._out += tagged(tag, "BAD", "TLS is already active.")
            return
        if not self.starttls:
            self._out += tagged(tag, "BAD", "TLS support isn't enabled.")
            return
        self._start_tls(tagged(tag, "OK", "Begin TLS negotiation now."), StartTlsRequest(tag), events)

    def _cmd_id(self, tag: str, reader: ArgReader, events: list[Event]) -> None:
        try:
            params = _parse_id(reader)
        except _IdValueTooLong:
            self._close(self._input_full(), "Input buffer full", events)
            return
        except ImapSyntaxError:
            self._out += tagged(tag, "BAD", "Invalid ID parameters")
            return
        if self.server_id:
            pairs = " ".join(f"{quote(k)} {quote(v)}" for k, v in self.server_id)
            self._out += untagged(f"ID ({pairs})")
        else:
            self._out += untagged("ID NIL")
        self._out += tagged(tag, "OK", "ID completed.")
        first, self._id_seen = not self._id_seen, True
        if first and self.trusted:  # Dovecot takes the client's address from the first ID only
            forwarded = forwarded_from_id(params)
            if forwarded is not None:
                events.append(forwarded)
        events.append(IdReceived(tag, params, first))

    def _cmd_login(self, tag: str, reader: ArgReader, events: list[Event]) -> None:
        if not self.cleartext_allowed:
            self._out += _line(f"{tag} {PRIVACY_REQUIRED}")
            return
        reader.sp()
        user = reader.astring()
        reader.sp()
        password = reader.astring()
        reader.end()
        self._request_login(LoginRequest(tag, decode(user), decode(password), "PLAIN", "LOGIN"), events)

    def _cmd_authenticate(self, tag: str, reader: ArgReader, events: list[Event]) -> None:
        reader.sp()
        mech = reader.atom().upper().decode("ascii")
        initial: bytes | None = None
        if not reader.at_end():
            reader.sp()
            initial = reader.atom()
            reader.end()
        if mech not in MECHANISMS:
            self._out += tagged(tag, "NO", "[ALERT] Unsupported authentication mechanism.")
            return
        if not self.cleartext_allowed:
            self._out += _line(f"{tag} {SASL_PRIVACY_REQUIRED}")
            return
        decoded: bytes | None = None
        if initial is not None:
            try:
                decoded = b"" if initial == b"=" else _b64decode(initial)
            except binascii.Error:
                self._out += tagged(tag, "BAD", "Invalid base64 data in initial response")
                return
        self._auth_tag = tag
        self._start_sasl(mech, decoded, events)

    # ---- SASL

    def _on_sasl_response(self, line: bytes, events: list[Event]) -> None:
        tag = self._auth_tag
        self._sasl_continue(line, events, aborted=tagged(tag, "BAD", "Authentication aborted by client."),
                            invalid=tagged(tag, "BAD", "Invalid base64 data in continued response"))

    def _challenge(self, data: bytes) -> bytes:
        return b"+ " + base64.b64encode(data) + b"\r\n"

    def _auth_failed(self) -> bytes:
        return _line(f"{self._auth_tag} {AUTH_FAILED}")

    def _login_request(self, credentials: Credentials, mechanism: str) -> LoginRequest:
        return LoginRequest(self._auth_tag, credentials.username, credentials.password, mechanism,
                            "AUTHENTICATE", credentials.authzid)


class _IdValueTooLong(ImapSyntaxError):
    """Dovecot reads an ID value into its 1,024-byte buffer: a longer one ends the session."""


def _parse_id(reader: ArgReader) -> tuple[tuple[str, str | None], ...]:
    """`SP ( "(" [string SP nstring *(SP string SP nstring)] ")" / NIL )` with Dovecot's limits."""
    reader.sp()
    if reader.peek() != ord("("):
        if reader.atom().upper() != b"NIL":
            raise ImapSyntaxError("expected a list or NIL")
        reader.end()
        return ()
    reader.expect(b"(")
    params: list[tuple[str, str | None]] = []
    while reader.peek() != ord(")"):
        if params:
            reader.sp()
        key = reader.string()
        reader.sp()
        value = reader.nstring()
        if value is not None and len(value) > MAX_ID_VALUE:
            raise _IdValueTooLong()
        if len(key) > MAX_ID_KEY:
            raise ImapSyntaxError("ID key too long")
        params.append((decode(key), None if value is None else decode(value)))
    reader.expect(b")")
    reader.end()
    return tuple(params)


_COMMANDS = {
    "CAPABILITY": ImapLoginServer._cmd_capability,
    "NOOP": ImapLoginServer._cmd_noop,
    "LOGOUT": ImapLoginServer._cmd_logout,
    "ENABLE": ImapLoginServer._cmd_enable,
    "STARTTLS": ImapLoginServer._cmd_starttls,
    "ID": ImapLoginServer._cmd_id,
    "LOGIN": ImapLoginServer._cmd_login,
    "AUTHENTICATE": ImapLoginServer._cmd_authenticate,
}


# --------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class LoggedIn:
    """The backend accepted the login. `ok_line` is its tagged OK line (with CRLF, tag `L`;
    see rewrite_tag); `untagged` holds the other untagged lines it sent meanwhile, ready to
    forward (its replies to our ID and CAPABILITY, and BYE, are left out)."""

    ok_line: bytes
    capabilities: list[str]
    untagged: bytes = b""


@dataclass(frozen=True)
class LoginFailed(LoginFailure):
    """The login did not succeed.

    kind: `auth` (wrong credentials, or a NO without code), `temp` (UNAVAILABLE, or the
    backend went away: worth retrying), `referral` (the user lives elsewhere: `referral`
    holds the URL), `config` (SERVERBUG), `other` (another response code, to forward
    verbatim) or `protocol` (the backend did not speak IMAP as expected).
    """


LoginResult = LoggedIn | LoginFailed


class ClientState(enum.Enum):
    BANNER = "banner"
    CAPABILITY = "capability"
    AUTHENTICATE = "authenticate"
    DONE = "done"


_TEMP_CODES = frozenset({"UNAVAILABLE"})
_AUTH_CODES = frozenset({"AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED"})


class ImapLoginClient(LoginClientCore[LoginResult]):
    """Logs a user in to a Dovecot backend as a master user (SASL PLAIN with
    authzid=username, authcid=master_user), in Dovecot's proxy order: banner, optional
    `C CAPABILITY`, `I ID (...)` and `L AUTHENTICATE PLAIN` pipelined."""

    _DONE = ClientState.DONE
    _FAILED = LoginFailed

    def __init__(
        self,
        username: str,
        *,
        master_user: str,
        master_password: str,
        id_fields: Sequence[tuple[str, str | None]] = (),
        max_line: int = 65536,
    ) -> None:
        super().__init__(username, master_user, state=ClientState.BANNER, reader=LineAssembler(max_line))
        self._id_line = (
            "I ID (" + " ".join(f"{quote(k)} {'NIL' if v is None else quote(v)}" for k, v in id_fields) + ")"
            if id_fields else None
        )
        self._initial_response = plain_initial_response(username, master_user, master_password)
        self.capabilities: list[str] = []
        self._untagged = bytearray()
        self._awaiting_challenge = False

    # ---- internals

    def _next_input(self) -> bytes | None:
        return next_message_inline(self._reader)

    def _on_input(self, line: bytes) -> None:
        try:
            resp = parse_response(line)
        except ImapSyntaxError:
            self._protocol_error(f"Invalid reply from backend: {shorten(line)}")
            return
        if self.state is ClientState.BANNER:
            self._on_banner(resp)
        elif resp.tag == "*":
            self._on_untagged(resp)
        elif self.state is ClientState.CAPABILITY:
            self._on_capability_reply(resp)
        else:
            self._on_login_reply(resp)

    def _on_banner(self, resp: Response) -> None:
        if resp.tag != "*" or resp.status != "OK":
            self._protocol_error(f"Invalid banner: {shorten(resp.raw)}")
            return
        if resp.code == "CAPABILITY" and resp.code_args:
            self.capabilities = resp.code_args.split()
            self._start_login()
        else:
            self._out += b"C CAPABILITY\r\n"
            self.state = ClientState.CAPABILITY

    def _has(self, capability: str) -> bool:
        return any(cap.upper() == capability for cap in self.capabilities)

    def _start_login(self) -> None:
        if not (self._has("IMAP4REV1") or self._has("IMAP4REV2")):
            self._protocol_error("Backend does not support IMAP4rev1")
            return
        if self._id_line is not None and self._has("ID"):
            self._out += self._id_line.encode("utf-8", "surrogateescape") + b"\r\n"
        if self._has("SASL-IR"):
            self._out += b"L AUTHENTICATE PLAIN " + self._initial_response + b"\r\n"
        else:
            self._out += b"L AUTHENTICATE PLAIN\r\n"
            self._awaiting_challenge = True
        self.state = ClientState.AUTHENTICATE

    def _on_untagged(self, resp: Response) -> None:
        if resp.status == "CAPABILITY":
            self.capabilities = resp.text.split()
        elif resp.status in ("BYE", "ID"):
            pass  # BYE during login is not forwarded; ID answers our own command
        elif len(self._untagged) + len(resp.raw) > self._reader.max_size:
            # Kept until the login's outcome is known: bounded like one message.
            self._protocol_error("Backend sent too many untagged replies during login")
        else:
            self._untagged += resp.raw

    def _on_capability_reply(self, resp: Response) -> None:
        if resp.tag == "C" and resp.status == "OK" and self.capabilities:
            self._start_login()
        else:
            self._protocol_error(f"CAPABILITY failed: {shorten(resp.raw)}")

    def _on_login_reply(self, resp: Response) -> None:
        if resp.tag == "+":
            if not self._awaiting_challenge:
                self._protocol_error("Unexpected continuation from backend")
                return
            self._awaiting_challenge = False
            self._out += self._initial_response + b"\r\n"
        elif resp.tag == "I":
            if resp.status != "OK" and resp.code == "SERVERBUG":
                self._finish(LoginFailed("config", "SERVERBUG", resp.text, line=resp.raw))
        elif resp.tag == "L":
            self._on_tagged_login(resp)
        else:
            self._protocol_error(f"Unexpected reply from backend: {shorten(resp.raw)}")

    def _on_tagged_login(self, resp: Response) -> None:
        if resp.status == "OK":
            if resp.code == "CAPABILITY" and resp.code_args:
                self.capabilities = resp.code_args.split()
            self._finish(LoggedIn(resp.raw, list(self.capabilities), bytes(self._untagged)))
            return
        if resp.status != "NO":
            self._protocol_error(f"Login refused by backend: {shorten(resp.raw)}")
            return
        code = resp.code
        if code is None or code in _AUTH_CODES:
            kind = "auth"
        elif code in _TEMP_CODES:
            kind = "temp"
        elif code == "REFERRAL":
            kind = "referral"
        elif code == "SERVERBUG":
            kind = "config"
        else:
            kind = "other"
        referral = resp.code_args if kind == "referral" else None
        if kind == "referral" and not referral:
            self._protocol_error("REFERRAL without a URL")
            return
        self._finish(LoginFailed(kind, code, resp.text, referral, resp.raw))
