"""A chain of passdbs with Dovecot's semantics: order, result rules, skip, fields, rename.

The proxy authenticates every login here and takes its routing hints (``proxy``, ``host``,
``port``, ``destuser``, ``nologin``...) from the returned fields, so the rules follow
Dovecot's auth-request logic closely: a configuration that works with Dovecot's auth
process behaves the same here. A step runs inline when it costs microseconds (a passwd-file
already in memory, a PLAIN or salted-digest comparison); a file (re)read or a slow hash
(ARGON2, crypt, PBKDF2 take milliseconds of CPU) runs in a worker thread so it cannot stall
the event loop. A thread hand-off costs more than a cheap step itself.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from palomar.auth.cache import AuthCache
from palomar.auth.driver import DriverLookup, PassdbDriver, compile_fields, parse_field_list
from palomar.auth.ldap_driver import LdapArgsError, make_ldap_driver
from palomar.auth.passwd_file import PasswdArgsError, PasswdFileDriver
from palomar.auth.schemes import PasswordSchemeError, hash_password, is_cheap, verify_password
from palomar.auth.sql_driver import SqlArgsError, make_sql_driver
from palomar.auth.static_driver import StaticArgsError, StaticDriver
from palomar.auth.variables import Template, VariableError, user_values
from palomar.logsafe import safe

log = logging.getLogger(__name__)

AuthStatus = Literal["ok", "failed", "unknown_user", "nologin", "tempfail"]

DEFAULT_USERNAME_FORMAT = "%Lu"
# Dovecot's auth_username_chars default.
DEFAULT_USERNAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@"
MAX_USERNAME_LENGTH = 255
_ILLEGAL_PASSWORD_CHARS = frozenset("\x01\t\r\n")
_SECRET_FIELDS = frozenset({"pass", "password"})
# Fields that steer the passdb itself and are not part of the reply.
_CONSUMED_FIELDS = frozenset({"password", "user", "nopassword", "noauthenticate", "allow_nets"})
DRIVERS = ("passwd-file", "static", "sql", "ldap")
# What the auth cache keeps of a password an LDAP server accepted (Dovecot keeps SHA1, unsalted).
CACHED_PASSWORD_SCHEME = "SSHA512"
# Scheme of a `password` given in a passdb's fields/default_fields/override_fields without `{SCHEME}`.
CONFIG_PASSWORD_SCHEME = "PLAIN"
_E = TypeVar("_E", bound=enum.StrEnum)


class PassdbConfigError(ValueError):
    """A passdb block cannot be used; the message names the passdb and the problem."""


class Rule(enum.StrEnum):
    """``result_success`` / ``result_failure`` / ``result_internalfail`` values."""

    RETURN = "return"
    RETURN_OK = "return-ok"
    RETURN_FAIL = "return-fail"
    CONTINUE = "continue"
    CONTINUE_OK = "continue-ok"
    CONTINUE_FAIL = "continue-fail"


class Skip(enum.StrEnum):
    """``skip``: whether to bypass a passdb depending on the authentication state so far."""

    NEVER = "never"
    AUTHENTICATED = "authenticated"
    UNAUTHENTICATED = "unauthenticated"


@dataclass(frozen=True)
class AuthRequest:
    """One login attempt. ``backend_host`` feeds ``%{backend_host}`` (probe accounts)."""

    username: str
    password: str | None = field(default=None, repr=False)
    service: str = "imap"
    remote_ip: str | None = None
    local_ip: str | None = None
    secured: bool = False
    mechanism: str = "PLAIN"
    backend_host: str | None = None
    master_user: str | None = None


@dataclass(frozen=True)
class AuthResult:
    """The chain's verdict.

    ``fields`` are the passdb extra fields for the caller (``proxy``, ``host``, ``port``,
    ``destuser``, ``pass``, ``reason``...); a boolean field is true when its key is present,
    whatever its value (see ``flag``). ``reason`` is meant for the client only when
    ``status`` is ``nologin``; otherwise it is a short note for logs.
    """

    status: AuthStatus
    user: str
    fields: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    passdb_name: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def flag(self, name: str) -> bool:
        """Dovecot's boolean field rule: present means true (``proxy``, ``proxy=y``, ``nodelay=no``)."""
        return name in self.fields

    def __repr__(self) -> str:
        shown = {k: ("<hidden>" if k in _SECRET_FIELDS else v) for k, v in self.fields.items()}
        return (f"AuthResult(status={self.status!r}, user={self.user!r}, fields={shown!r}, "
                f"reason={self.reason!r}, passdb_name={self.passdb_name!r})")


class _Outcome(enum.Enum):
    OK = "ok"
    MISMATCH = "mismatch"
    UNKNOWN = "unknown"
    INTERNAL = "internal"
    DISABLED = "disabled"
    NEXT = "next"


@dataclass
class _Step:
    outcome: _Outcome
    fields: dict[str, str] = field(default_factory=dict, repr=False)
    detail: str | None = None


@dataclass(frozen=True)
class _BlockField:
    key: str
    modifier: str | None  # None, "default" or "remove"
    value: Template = field(repr=False)


@dataclass(frozen=True)
class Passdb:
    """One configured passdb, compiled: driver built, templates parsed, rules resolved."""

    name: str
    driver: PassdbDriver
    default_fields: tuple[tuple[str, Template], ...] = field(default=(), repr=False)
    fields: tuple[_BlockField, ...] = field(default=(), repr=False)
    override_fields: tuple[tuple[str, Template], ...] = field(default=(), repr=False)
    master: bool = False
    deny: bool = False
    skip: Skip = Skip.NEVER
    result_success: Rule = Rule.RETURN_OK
    result_failure: Rule = Rule.CONTINUE
    result_internalfail: Rule = Rule.CONTINUE

    @classmethod
    def from_settings(cls, item: Any, index: int = 0) -> Passdb:
        """Build from a config object with Dovecot's passdb attributes (duck-typed)."""
        driver_name = str(getattr(item, "driver", "") or "")
        name = str(getattr(item, "name", "") or "") or f"{driver_name or 'passdb'}#{index}"
        try:
            return cls(
                name=name,
                driver=make_driver(driver_name, str(getattr(item, "args", "") or "")),
                default_fields=_field_string(getattr(item, "default_fields", "")),
                fields=_field_block(getattr(item, "fields", None) or {}),
                override_fields=_field_string(getattr(item, "override_fields", "")),
                master=_truthy(getattr(item, "master", False)),
                deny=_truthy(getattr(item, "deny", False)),
                skip=_enum(Skip, getattr(item, "skip", None), Skip.NEVER, "skip"),
                result_success=_enum(Rule, getattr(item, "result_success", None), Rule.RETURN_OK,
                                     "result_success"),
                result_failure=_enum(Rule, getattr(item, "result_failure", None), Rule.CONTINUE,
                                     "result_failure"),
                result_internalfail=_enum(Rule, getattr(item, "result_internalfail", None), Rule.CONTINUE,
                                          "result_internalfail"),
            )
        except (PassdbConfigError, PasswdArgsError, StaticArgsError, SqlArgsError, LdapArgsError, VariableError,
                ValueError) as exc:
            raise PassdbConfigError(f"passdb {name}: {exc}") from None


def make_driver(driver: str, args: str) -> PassdbDriver:
    """The driver object for ``driver = NAME``; unknown names are a configuration error."""
    if driver == "passwd-file":
        return PasswdFileDriver(args)
    if driver == "static":
        return StaticDriver(args)
    if driver == "sql":
        return make_sql_driver(args)
    if driver == "ldap":
        return make_ldap_driver(args)
    raise PassdbConfigError(f"unsupported passdb driver {driver!r} (supported: {', '.join(DRIVERS)})")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "y", "true", "1", "on")
    return bool(value)


def _enum(kind: type[_E], value: Any, default: _E, setting: str) -> _E:
    if value is None or value == "":
        return default
    try:
        return kind(str(value).strip().lower())
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise PassdbConfigError(f"{setting} = {value!r} is not one of: {allowed}") from None


def _field_string(value: Any) -> tuple[tuple[str, Template], ...]:
    """``default_fields``/``override_fields``: a 2.3 ``"k=v k2"`` string or a 2.4 ``{ k = v }`` block."""
    if isinstance(value, Mapping):
        items = [(str(k), "" if v is None else str(v)) for k, v in value.items()]
    else:
        items = parse_field_list(str(value or ""))
    try:
        return compile_fields(items)
    except VariableError as exc:
        raise PassdbConfigError(f"field {exc}") from None


def _field_block(block: Mapping[str, Any]) -> tuple[_BlockField, ...]:
    out = []
    for raw_key, value in block.items():
        key, _, modifier = str(raw_key).partition(":")
        if modifier not in ("", "default", "remove") or not key:
            raise PassdbConfigError(f"fields: bad field name {raw_key!r}")
        try:
            template = Template.parse("" if value is None else str(value))
        except VariableError as exc:
            raise PassdbConfigError(f"fields: {key}: {exc}") from None
        out.append(_BlockField(key, modifier or None, template))
    return tuple(out)


def request_values(user: str, req: AuthRequest) -> dict[str, str]:
    """The variables a passdb template can use for this request and (current) user."""
    values = user_values(user)
    values.update(
        service=req.service,
        rip=req.remote_ip or "",
        lip=req.local_ip or "",
        real_rip=req.remote_ip or "",
        real_lip=req.local_ip or "",
        mech=req.mechanism,
        secured="secured" if req.secured else "",
        password=req.password or "",
        backend_host=req.backend_host or "",
        master_user=req.master_user or "",
        login_user=user if req.master_user else "",
    )
    return values


def ip_allowed(nets: str, remote_ip: str | None) -> bool:
    """Dovecot's ``allow_nets``: comma/space separated CIDRs; ``local`` matches a non-IP client."""
    ip = _parse_ip(remote_ip)
    for net in re.split(r"[,\s]+", nets.strip()):
        if not net:
            continue
        if net == "local":
            if ip is None:
                return True
            continue
        try:
            network = ipaddress.ip_network(net, strict=False)
        except ValueError:
            log.warning("allow_nets: ignoring invalid network %r", net)
            continue
        if ip is not None and ip.version == network.version and ip in network:
            return True
    return False


def _parse_ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


async def _driver_lookup(pdb: Passdb, user: str, req: AuthRequest, values: Mapping[str, str],
                         verify: bool) -> DriverLookup:
    """Ask the driver, the cheapest way it offers: inline, as a coroutine, or in a worker thread.

    A driver that checks passwords itself (LDAP ``auth_bind``) is asked to, when one is to be checked."""
    driver = pdb.driver
    try:
        if verify and getattr(driver, "checks_password", False):
            return await asyncio.to_thread(driver.verify_plain, user, values, req.password or "")  # type: ignore[attr-defined]
        lookup_nowait = getattr(driver, "lookup_nowait", None)
        found = lookup_nowait(user, values) if lookup_nowait is not None else None
        if found is not None:
            return found
        lookup_async = getattr(driver, "lookup_async", None)
        if lookup_async is not None:
            return await lookup_async(user, values)
        return await asyncio.to_thread(driver.lookup, user, values)
    except Exception as exc:  # a driver bug must become a temporary failure, not a crash
        log.error("passdb %s: lookup failed: %s", pdb.name, type(exc).__name__)
        return DriverLookup(found=False, error="lookup error")


async def _evaluate(pdb: Passdb, found: DriverLookup, user: str, req: AuthRequest, values: Mapping[str, str],
                    verify: bool) -> _Step:
    """The step's outcome from the driver's answer: inline when cheap, a slow hash in a thread."""
    step = _evaluate_now(pdb, found, user, req, values, verify, inline=True)
    if step is None:
        step = await asyncio.to_thread(_evaluate_now, pdb, found, user, req, values, verify, False)
        assert step is not None
    return step


def _evaluate_now(pdb: Passdb, found: DriverLookup, user: str, req: AuthRequest, values: Mapping[str, str],
                  verify: bool, inline: bool) -> _Step | None:
    """Fields and the password check for one driver answer (and the check when ``verify``).

    With ``inline`` it gives up (None) before a slow password scheme; the caller then runs it
    again without ``inline`` in a worker thread.
    """
    if found.error:
        log.error("passdb %s: %s", pdb.name, found.error)
        return _Step(_Outcome.INTERNAL, detail="passdb unavailable")
    if not found.found:
        return _Step(_Outcome.UNKNOWN, detail="unknown user")

    # Layers, lowest priority first: default_fields, the driver's entry, fields {}, override_fields.
    fields: dict[str, str] = {k: t.render(values) for k, t in pdb.default_fields}
    password_from_config = "password" in fields
    if found.password is not None:
        fields["password"], password_from_config = found.password, False
    for k, t in found.fields:
        fields[k] = t.render(values)
        password_from_config = password_from_config and k != "password"
    for bf in pdb.fields:
        if bf.modifier == "remove":
            fields.pop(bf.key, None)
        elif bf.modifier != "default" or bf.key not in fields:
            fields[bf.key] = bf.value.render(values)
            password_from_config = password_from_config or bf.key == "password"
    for k, t in pdb.override_fields:
        fields[k] = t.render(values)
        password_from_config = password_from_config or k == "password"

    stored = fields.pop("password", None)
    if verify and found.verified is False:
        return _Step(_Outcome.MISMATCH, detail="password mismatch")
    if verify and found.verified is None and "nopassword" not in fields:
        if req.password is None or not stored:
            return _Step(_Outcome.MISMATCH, detail="no password" if not stored else "password mismatch")
        # A password written in the configuration (the seed's shared probe password) is
        # cleartext unless it names a scheme; one from the driver uses the driver's default.
        default_scheme = CONFIG_PASSWORD_SCHEME if password_from_config else pdb.driver.default_scheme
        if inline and not is_cheap(stored, default_scheme):
            return None
        try:
            matched = verify_password(stored, req.password, username=user, default_scheme=default_scheme)
        except PasswordSchemeError as exc:
            log.error("passdb %s: user %s: %s", pdb.name, safe(user), exc)
            return _Step(_Outcome.INTERNAL, detail="bad stored password")
        if not matched:
            return _Step(_Outcome.MISMATCH, detail="password mismatch")
    nets = fields.get("allow_nets")
    if nets is not None and not ip_allowed(nets, req.remote_ip):
        return _Step(_Outcome.MISMATCH, detail="allow_nets mismatch")
    if "noauthenticate" in fields:
        return _Step(_Outcome.NEXT, fields)
    return _Step(_Outcome.OK, fields)


@dataclass
class _ChainEnd:
    outcome: _Outcome
    user: str
    fields: dict[str, str]
    passdb_name: str | None
    detail: str | None


class PassdbChain:
    """The configured passdbs, tried in order; master passdbs form their own chain."""

    def __init__(
        self,
        passdbs: Sequence[Passdb],
        *,
        username_format: str = DEFAULT_USERNAME_FORMAT,
        username_chars: str = DEFAULT_USERNAME_CHARS,
        cache: AuthCache | None = None,
    ) -> None:
        self.cache = cache
        self.passdbs = tuple(p for p in passdbs if not p.master)
        self.master_passdbs = tuple(p for p in passdbs if p.master)
        try:
            self._username_format = Template.parse(username_format)
        except VariableError as exc:
            raise PassdbConfigError(f"auth_username_format: {exc}") from None
        self._username_chars = frozenset(username_chars)

    @classmethod
    def from_settings(
        cls,
        passdbs: Iterable[Any],
        *,
        username_format: str = DEFAULT_USERNAME_FORMAT,
        username_chars: str = DEFAULT_USERNAME_CHARS,
        cache: AuthCache | None = None,
    ) -> PassdbChain:
        """Compile config objects (attributes ``name, driver, args, fields, ...``) in order."""
        compiled = [Passdb.from_settings(item, i) for i, item in enumerate(passdbs)]
        return cls(compiled, username_format=username_format, username_chars=username_chars, cache=cache)

    async def warm(self) -> None:
        """Let the drivers prepare before the first login (index a passwd-file), off the loop."""
        for pdb in (*self.passdbs, *self.master_passdbs):
            warm = getattr(pdb.driver, "warm", None)
            if warm is not None:
                await asyncio.to_thread(warm)

    async def aclose(self) -> None:
        """Close the drivers' database connections (at shutdown)."""
        for pdb in (*self.passdbs, *self.master_passdbs):
            close = getattr(pdb.driver, "aclose", None)
            if close is not None:
                await close()

    def __repr__(self) -> str:
        return f"PassdbChain({[p.name for p in self.passdbs]}, master={[p.name for p in self.master_passdbs]})"

    def normalize_username(self, username: str) -> str | None:
        """``auth_username_chars`` check, then ``auth_username_format``; None when not acceptable."""
        if not username or len(username) > MAX_USERNAME_LENGTH:
            return None
        if self._username_chars and any(c not in self._username_chars for c in username):
            return None
        return self._username_format.render(user_values(username))

    async def authenticate(self, req: AuthRequest) -> AuthResult:
        """Verify ``req.password`` for ``req.username`` (or for ``req.master_user`` on a master login)."""
        user = self.normalize_username(req.username)
        if user is None:
            log.debug("auth failed: invalid user name %s", safe(req.username))
            return AuthResult("failed", req.username, reason="invalid user name")
        if req.password is None or any(c in _ILLEGAL_PASSWORD_CHARS for c in req.password):
            log.debug("auth failed for %s: missing password or password with illegal characters", safe(user))
            return AuthResult("failed", user, reason="invalid password")
        if req.master_user is not None:
            return await self._master_login(user, req)
        if not self.passdbs:
            return AuthResult("tempfail", user, reason="no passdbs configured")
        end = await self._run_chain(self.passdbs, user, req, verify=True)
        return self._finish(end)

    async def lookup(self, username: str, req: AuthRequest | None = None) -> AuthResult:
        """Find ``username`` without checking a password (LMTP recipients, probes, kicks).

        Renames, fields, ``allow_nets`` (against ``req.remote_ip``) and ``nologin`` apply as
        for a login.
        """
        base = req or AuthRequest(username)
        user = self.normalize_username(username)
        if user is None:
            return AuthResult("failed", username, reason="invalid user name")
        if not self.passdbs:
            return AuthResult("tempfail", user, reason="no passdbs configured")
        end = await self._run_chain(self.passdbs, user, base, verify=False)
        return self._finish(end)

    async def _master_login(self, user: str, req: AuthRequest) -> AuthResult:
        master = self.normalize_username(req.master_user or "")
        if master is None or not self.master_passdbs:
            log.debug("master login as %s refused: no master passdbs or invalid master name", safe(user))
            return AuthResult("failed", user, reason="master login not available")
        end = await self._run_chain(self.master_passdbs, master, req, verify=True)
        if end.outcome is not _Outcome.OK:
            result = self._finish(end)
            status: AuthStatus = "tempfail" if result.status == "tempfail" else "failed"
            return AuthResult(status, user, reason=f"master user: {result.reason}", passdb_name=end.passdb_name)
        # The master's password is verified; the target user only needs to exist.
        target = await self._run_chain(self.passdbs, user, req, verify=False)
        return self._finish(target)

    def _cache_key(self, pdb: Passdb, values: Mapping[str, str], req: AuthRequest) -> str | None:
        """The cache key of this step, or None when it bypasses the cache (as master logins do in Dovecot)."""
        key_of = getattr(pdb.driver, "cache_key", None)
        if self.cache is None or key_of is None or req.master_user is not None:
            return None
        return f"{pdb.name}\0{key_of(values)}"

    async def _passdb_step(self, pdb: Passdb, user: str, req: AuthRequest, verify: bool) -> _Step:
        """One passdb: from the auth cache when it can answer, else from the driver (then cached)."""
        values = request_values(user, req)
        key = self._cache_key(pdb, values, req)
        cache = self.cache
        entry = None
        needs_driver = verify and getattr(pdb.driver, "checks_password", False)
        if cache is not None and key is not None:
            entry = cache.get(key)
            if entry is not None and needs_driver and entry.lookup.found and entry.lookup.password is None:
                entry = None  # the directory must check this password: no hash of it is cached yet
            if entry is not None and not entry.expired(cache.now()):
                step = await _evaluate(pdb, entry.lookup, user, req, values, verify)
                # A mismatch after a success (or past the negative TTL): the password may have changed,
                # ask the database.
                if not (step.outcome is _Outcome.MISMATCH
                        and (entry.last_success or cache.now() >= entry.negative_expires)):
                    cache.hits += 1
                    if verify:
                        entry.last_success = step.outcome is _Outcome.OK
                    return step
            cache.misses += 1
        found = await _driver_lookup(pdb, user, req, values, verify)
        if found.error and entry is not None:
            log.warning("passdb %s: %s; using the cached entry of %s", pdb.name, found.error, safe(user))
            return await _evaluate(pdb, entry.lookup, user, req, values, verify)
        step = await _evaluate(pdb, found, user, req, values, verify)
        if cache is not None and key is not None and not found.error:
            if found.verified is True:  # keep a hash of the password the directory accepted
                found = DriverLookup(True, hash_password(CACHED_PASSWORD_SCHEME, req.password or ""), found.fields)
            if found.verified is None:
                cache.put(key, found, success=verify and step.outcome is _Outcome.OK)
        return step

    def _next_index(self, passdbs: Sequence[Passdb], start: int, success: bool) -> int | None:
        for i in range(start, len(passdbs)):
            skip = passdbs[i].skip
            if skip is Skip.AUTHENTICATED and success:
                continue
            if skip is Skip.UNAUTHENTICATED and not success:
                continue
            return i
        return None

    async def _run_chain(self, passdbs: Sequence[Passdb], user: str, req: AuthRequest, *, verify: bool) -> _ChainEnd:
        success = False
        seen_internal = False
        password_verified = False
        fields: dict[str, str] = {}
        success_name: str | None = None
        idx = self._next_index(passdbs, 0, success)
        if idx is None:
            log.error("all password databases were skipped")
            return _ChainEnd(_Outcome.INTERNAL, user, {}, None, "all passdbs skipped")
        while True:
            pdb = passdbs[idx]
            check = verify and not password_verified and not pdb.deny
            step = await self._passdb_step(pdb, user, req, check)
            outcome = step.outcome
            if pdb.deny and outcome is not _Outcome.UNKNOWN:
                if outcome is not _Outcome.INTERNAL:
                    log.debug("user %s found in deny passdb %s", safe(user), pdb.name)
                    outcome = _Outcome.DISABLED
                return _ChainEnd(outcome, user, fields, pdb.name, "denied" if outcome is _Outcome.DISABLED
                                 else step.detail)
            if outcome is _Outcome.OK:
                rule = pdb.result_success
            elif outcome is _Outcome.INTERNAL:
                rule = pdb.result_internalfail
            elif outcome is _Outcome.NEXT:
                rule = Rule.CONTINUE
            else:
                rule = pdb.result_failure

            proceed = rule in (Rule.CONTINUE, Rule.CONTINUE_OK, Rule.CONTINUE_FAIL)
            if rule in (Rule.RETURN_OK, Rule.CONTINUE_OK):
                success = True
            elif rule in (Rule.RETURN_FAIL, Rule.CONTINUE_FAIL):
                success = False
            if rule is Rule.CONTINUE_OK or (rule is Rule.CONTINUE and outcome is _Outcome.OK):
                password_verified = True

            if outcome in (_Outcome.OK, _Outcome.NEXT):
                new_user = step.fields.get("user")
                if new_user:
                    user = new_user
                fields.update(step.fields)
                if outcome is _Outcome.OK:
                    success_name = pdb.name
            if outcome is not _Outcome.OK:  # the session's one line carries the final reason
                log.debug("passdb %s: %s: %s", pdb.name, safe(user), step.detail or outcome.value)

            next_idx = self._next_index(passdbs, idx + 1, success)
            if proceed and next_idx is not None:
                seen_internal = seen_internal or outcome is _Outcome.INTERNAL
                idx = next_idx
                continue
            name, detail = pdb.name, step.detail
            if outcome is _Outcome.NEXT:
                log.error("passdb %s: last passdb had noauthenticate, cannot authenticate %s", pdb.name,
                          safe(user))
                outcome, detail = _Outcome.INTERNAL, "last passdb had noauthenticate"
            elif success:
                outcome, name = _Outcome.OK, success_name or pdb.name
            elif seen_internal:
                outcome = _Outcome.INTERNAL
            return _ChainEnd(outcome, user, fields, name, detail)

    def _finish(self, end: _ChainEnd) -> AuthResult:
        reply = {k: v for k, v in end.fields.items() if k not in _CONSUMED_FIELDS}
        if end.outcome is _Outcome.OK:
            if "nologin" in reply:
                return AuthResult("nologin", end.user, reply, reply.get("reason") or None, end.passdb_name)
            return AuthResult("ok", end.user, reply, None, end.passdb_name)
        status: AuthStatus = {
            _Outcome.MISMATCH: "failed",
            _Outcome.DISABLED: "failed",
            _Outcome.UNKNOWN: "unknown_user",
            _Outcome.INTERNAL: "tempfail",
        }.get(end.outcome, "failed")  # type: ignore[assignment]
        return AuthResult(status, end.user, {}, end.detail, end.passdb_name)
