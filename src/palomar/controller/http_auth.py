"""Who may use the controller's REST API and web UI: credentials, roles, sessions, failure penalty.

Two roles: `readonly` (every GET) and `admin` (GETs and changes). The API takes an
`Authorization: Bearer <token>` or `Basic` header on every request; the web UI logs in once with a
user name and password and then carries a session cookie plus a per-session CSRF token in every
form. Failed credentials go through the proxies' own escalating penalty (`auth.penalty`), per
source address, so a password cannot be guessed at network speed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from palomar.auth.schemes import PasswordSchemeError, is_known_scheme, parse_stored, verify_password

ADMIN = "admin"
READONLY = "readonly"
MIN_TOKEN_LENGTH = 16
MAX_SESSIONS = 1000
"""Sessions kept in memory; the oldest go first, so a flood of logins cannot grow the process."""


class CredentialsError(ValueError):
    """The configured credentials cannot be used (the controller refuses to start)."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == ADMIN


@dataclass(frozen=True)
class Presented:
    """Credentials as a client presented them: a token, or a user name and password."""

    kind: str  # "bearer", "basic" or "form"
    user: str = ""
    secret: str = ""


def parse_authorization(header: str | None) -> Presented | None:
    """`Bearer TOKEN` or `Basic base64(user:password)`; None when absent or malformed."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return Presented("bearer", secret=value)
    if scheme.lower() == "basic" and value:
        try:
            text = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = text.partition(":")
        if sep:
            return Presented("basic", user=user, secret=password)
    return None


class Credentials:
    """The configured users (name -> stored password, role) and bearer tokens (token -> role)."""

    def __init__(self, users: dict[str, tuple[str, str]], tokens: dict[str, str],
                 cert_names: dict[str, str] | None = None) -> None:
        self.users = users
        self.tokens = tokens
        self.cert_names = cert_names or {}
        """Client certificate subject CN -> role (mutual TLS)."""

    @classmethod
    def from_config(cls, cfg: Any) -> Credentials:
        users: dict[str, tuple[str, str]] = {}
        tokens: dict[str, str] = {}
        for role, prefix in ((ADMIN, "controller_http_admin"), (READONLY, "controller_http_readonly")):
            name, stored = str(cfg[f"{prefix}_user"] or ""), str(cfg[f"{prefix}_password"] or "")
            if stored:
                if not name:
                    raise CredentialsError(f"{prefix}_password is set but {prefix}_user is empty")
                if name in users:
                    raise CredentialsError(f"{prefix}_user '{name}' is also the other role's user name")
                try:
                    scheme = parse_stored(stored, "PLAIN").scheme
                except PasswordSchemeError as exc:
                    raise CredentialsError(f"{prefix}_password: {exc}") from None
                if not is_known_scheme(scheme):
                    raise CredentialsError(f"{prefix}_password: unknown password scheme {scheme!r}")
                users[name] = (stored, role)
            token = str(cfg[f"{prefix}_token"] or "")
            if token:
                if len(token) < MIN_TOKEN_LENGTH:
                    raise CredentialsError(f"{prefix}_token is shorter than {MIN_TOKEN_LENGTH} characters")
                if token in tokens:
                    raise CredentialsError("controller_http_admin_token and _readonly_token are the same")
                tokens[token] = role
        cert_names: dict[str, str] = {}
        for role, setting in ((READONLY, "controller_http_ssl_client_readonly_names"),
                              (ADMIN, "controller_http_ssl_client_admin_names")):
            for name in cfg[setting] or []:
                if cert_names.get(name, role) != role:
                    raise CredentialsError(f"client certificate name '{name}' is listed for both roles")
                cert_names[name] = role
        has_ca = bool(cfg["controller_http_ssl_client_ca_file"])
        if cert_names and not has_ca:
            raise CredentialsError("controller_http_ssl_client_*_names need controller_http_ssl_client_ca_file")
        if has_ca and not cert_names:
            raise CredentialsError("controller_http_ssl_client_ca_file is set but no "
                                   "controller_http_ssl_client_*_names: no certificate would be accepted")
        if not users and not tokens and not cert_names:
            raise CredentialsError("controller_http_listen is set but no controller_http_*_password or "
                                   "_token is: nobody could use the API or the web UI")
        return cls(users, tokens, cert_names)

    def by_certificate(self, peercert: dict[str, Any] | None) -> Principal | None:
        """The principal of a client certificate the TLS layer verified against the client CA."""
        if not peercert:
            return None
        names = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
        role = self.cert_names.get(names[-1]) if names else None
        return Principal(f"cert:{names[-1]}", role) if role else None

    def check(self, presented: Presented) -> Principal | None:
        """The principal these credentials prove, or None. Tokens are compared in constant time."""
        if presented.kind == "bearer":
            found = None
            for token, role in self.tokens.items():
                if hmac.compare_digest(token.encode(), presented.secret.encode()):
                    found = Principal("token", role)
            return found
        entry = self.users.get(presented.user)
        if entry is None:
            return None
        stored, role = entry
        try:
            ok = verify_password(stored, presented.secret, username=presented.user, default_scheme="PLAIN")
        except PasswordSchemeError:
            return None
        return Principal(presented.user, role) if ok else None


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf: str
    expires: float


class Sessions:
    """Web UI sessions by random id, in memory, bounded, each with its own CSRF token."""

    def __init__(self, lifetime: float, clock: Callable[[], float] = time.time) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, principal: Principal) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(24), self.clock() + self.lifetime)
        self._sessions[sid] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        if session.expires <= self.clock():
            del self._sessions[sid]
            return None
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)


def csrf_ok(session: Session, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(session.csrf.encode(), str(presented).encode())
