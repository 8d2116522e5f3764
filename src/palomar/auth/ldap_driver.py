"""Dovecot's ``ldap`` passdb: ``args`` names a ``dovecot-ldap.conf.ext``.

Two ways to check a password, as in Dovecot: a lookup (``pass_filter`` finds the entry,
``pass_attrs`` maps ``userPassword`` to the stored password, which the chain verifies with its
schemes), or ``auth_bind = yes`` (the directory checks it: a bind as the user's DN, found by a
search or built from ``auth_bind_userdn``). ldap3 is synchronous, so every call runs in the
chain's worker threads, over small pools of open connections (searches bound as ``dn``, and
separate ones for the users' binds). ``tls = yes`` is StartTLS; ``ldaps://`` URIs are TLS from
the first byte. Connect and operation timeouts are bounded; a directory that cannot be reached
is a temporary failure, and only ``invalidCredentials`` is a wrong password.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from palomar.auth.driver import DriverLookup, compile_fields
from palomar.auth.ext_file import ExtFileError, read_ext, refuse_unknown, yes_no
from palomar.auth.schemes import is_known_scheme
from palomar.auth.sql_driver import cache_key
from palomar.auth.variables import Template, VariableError

log = logging.getLogger(__name__)
T = TypeVar("T")

LDAP_DEFAULT_SCHEME = "CRYPT"
DEFAULT_PASS_ATTRS = "uid=user,userPassword=password"
DEFAULT_PASS_FILTER = "(&(objectClass=posixAccount)(uid=%u))"
CONNECT_TIMEOUT = 5
OPERATION_TIMEOUT = 5
"""Seconds; ldap3 needs whole seconds for its socket receive timeout."""
POOL_SIZE = 4
"""Open connections per pool (one pool for searches, one for users' binds): at most this many
LDAP operations of one passdb at a time; more wait up to OPERATION_TIMEOUT for a free one."""
INVALID_CREDENTIALS = 49
NO_SUCH_OBJECT = 32
SIZE_LIMIT_EXCEEDED = 4
# Read and left to the backends' Dovecot, which often shares the file: palomar has no userdb.
USERDB_ONLY = frozenset({"user_attrs", "user_filter", "iterate_attrs", "iterate_filter"})
_KNOWN = frozenset({
    "hosts", "uris", "dn", "dnpass", "auth_bind", "auth_bind_userdn", "tls", "tls_ca_cert_file",
    "tls_ca_cert_dir", "tls_cert_file", "tls_key_file", "tls_cipher_suite", "tls_require_cert", "deref",
    "scope", "base", "ldap_version", "pass_attrs", "pass_filter", "default_pass_scheme", "sasl_bind",
    "debug_level", "blocking",
}) | USERDB_ONLY
_SCOPES = {"base": "BASE", "onelevel": "LEVEL", "subtree": "SUBTREE"}
_DEREFS = {"never": "NEVER", "searching": "SEARCH", "finding": "FINDING_BASE", "always": "ALWAYS"}
_REQUIRE_CERT = {"never": ssl.CERT_NONE, "allow": ssl.CERT_NONE, "try": ssl.CERT_REQUIRED,
                 "demand": ssl.CERT_REQUIRED, "hard": ssl.CERT_REQUIRED}


class LdapArgsError(ValueError):
    """The ldap passdb's args file is missing, unreadable or not usable."""


class LdapUnavailable(Exception):
    """No connection could be had in time."""


@dataclass(frozen=True)
class LdapServer:
    host: str
    port: int
    ssl: bool


@dataclass(frozen=True)
class LdapConf:
    servers: tuple[LdapServer, ...]
    base: Template
    dn: str = ""
    dnpass: str = field(default="", repr=False)
    auth_bind: bool = False
    auth_bind_userdn: Template | None = None
    starttls: bool = False
    tls_ca_cert_file: str = ""
    tls_ca_cert_dir: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_cipher_suite: str = ""
    tls_require_cert: str = "demand"
    scope: str = "subtree"
    deref: str = "never"
    pass_attrs: tuple[tuple[str, str, Template | None], ...] = ()
    """(ldap attribute, field name, template for ``=field=value`` entries)."""
    pass_filter: Template = field(default_factory=lambda: Template.parse(DEFAULT_PASS_FILTER))
    default_pass_scheme: str = LDAP_DEFAULT_SCHEME

    @classmethod
    def from_settings(cls, s: dict[str, str], source: str) -> LdapConf:
        try:
            refuse_unknown(s, _KNOWN, source)
            auth_bind = yes_no(s, "auth_bind", False, source)
            starttls = yes_no(s, "tls", False, source)
            if yes_no(s, "sasl_bind", False, source):
                raise LdapArgsError(f"{source}: sasl_bind = yes is not supported (use dn/dnpass)")
            yes_no(s, "blocking", False, source)  # every LDAP call runs in a worker thread anyway
        except ExtFileError as exc:
            raise LdapArgsError(str(exc)) from None
        if s.get("debug_level", "0") != "0":
            raise LdapArgsError(f"{source}: debug_level is not supported (only 0)")
        if s.get("ldap_version", "3") != "3":
            raise LdapArgsError(f"{source}: only ldap_version = 3 is supported")
        servers = parse_servers(s.get("uris", ""), s.get("hosts", ""), source)
        if not s.get("base"):
            raise LdapArgsError(f"{source}: base is not set")
        scope = s.get("scope", "subtree").lower()
        if scope not in _SCOPES:
            raise LdapArgsError(f"{source}: scope must be base, onelevel or subtree")
        deref = s.get("deref", "never").lower()
        if deref not in _DEREFS:
            raise LdapArgsError(f"{source}: deref must be never, searching, finding or always")
        require = s.get("tls_require_cert", "demand").lower()
        if require not in _REQUIRE_CERT:
            raise LdapArgsError(f"{source}: tls_require_cert must be never, allow, try, demand or hard")
        scheme = (s.get("default_pass_scheme") or LDAP_DEFAULT_SCHEME).upper()
        if not is_known_scheme(scheme):
            raise LdapArgsError(f"{source}: unknown default_pass_scheme {scheme!r}")
        try:
            return cls(
                servers=servers, base=Template.parse(s["base"]), dn=s.get("dn", ""), dnpass=s.get("dnpass", ""),
                auth_bind=auth_bind,
                auth_bind_userdn=Template.parse(s["auth_bind_userdn"]) if s.get("auth_bind_userdn") else None,
                starttls=starttls, tls_ca_cert_file=s.get("tls_ca_cert_file", ""),
                tls_ca_cert_dir=s.get("tls_ca_cert_dir", ""), tls_cert_file=s.get("tls_cert_file", ""),
                tls_key_file=s.get("tls_key_file", ""), tls_cipher_suite=s.get("tls_cipher_suite", ""),
                tls_require_cert=require, scope=scope, deref=deref,
                pass_attrs=parse_attrs(s.get("pass_attrs", DEFAULT_PASS_ATTRS)),
                pass_filter=Template.parse(s.get("pass_filter", DEFAULT_PASS_FILTER)),
                default_pass_scheme=scheme,
            )
        except VariableError as exc:
            raise LdapArgsError(f"{source}: {exc}") from None


def parse_servers(uris: str, hosts: str, source: str) -> tuple[LdapServer, ...]:
    """``uris = ldap://h[:port] ldaps://h`` or ``hosts = h[:port] ...`` (one of them is required)."""
    servers: list[LdapServer] = []
    for uri in uris.replace(",", " ").split():
        parts = urlsplit(uri)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise LdapArgsError(f"{source}: uris: {uri!r} is not an ldap:// or ldaps:// URI with a host")
        secure = parts.scheme == "ldaps"
        servers.append(LdapServer(parts.hostname, parts.port or (636 if secure else 389), secure))
    for host in hosts.split():
        name, colon, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
        if colon and not port.isdigit():
            raise LdapArgsError(f"{source}: hosts: bad port in {host!r}")
        servers.append(LdapServer(name, int(port) if colon else 389, False))
    if not servers:
        raise LdapArgsError(f"{source}: set uris or hosts")
    return tuple(servers)


def parse_attrs(text: str) -> tuple[tuple[str, str, Template | None], ...]:
    """``pass_attrs``: ``ldapAttr=field``, ``ldapAttr`` (same name) or ``=field=template``, comma-separated."""
    out: list[tuple[str, str, Template | None]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("="):
            name, _, value = item[1:].partition("=")
            out.append(("", name.strip(), Template.parse(value)))
            continue
        attr, eq, name = item.partition("=")
        out.append((attr.strip(), (name.strip() if eq else attr.strip()), None))
    return tuple(out)


def filter_escape(value: str) -> str:
    """RFC 4515 escaping of a variable inside a search filter, as Dovecot's ldap_escape does."""
    from ldap3.utils.conv import escape_filter_chars

    return escape_filter_chars(value)


def dn_escape(value: str) -> str:
    """RFC 4514 escaping of a variable inside a DN (``base``, ``auth_bind_userdn``)."""
    from ldap3.utils.dn import escape_rdn

    return escape_rdn(value)


def entry_to_lookup(attributes: Mapping[str, list[bytes]], conf: LdapConf,
                    values: Mapping[str, str]) -> DriverLookup:
    """Map one entry's attributes through ``pass_attrs`` (pure): the first value of each.

    ``password`` is the stored password, unless the directory checks it (``auth_bind``).
    """
    lowered = {k.lower(): v for k, v in attributes.items()}
    password: str | None = None
    items: list[tuple[str, str]] = []
    for attr, name, template in conf.pass_attrs:
        if template is not None:
            items.append((name, template.render(values).replace("%", "%%")))
            continue
        raw = lowered.get(attr.lower())
        if not raw:
            continue
        text = raw[0].decode("utf-8", "replace") if isinstance(raw[0], bytes) else str(raw[0])
        if name == "password":
            password = None if conf.auth_bind else text
        elif name == "password_noscheme":
            password = None if conf.auth_bind else f"{{{conf.default_pass_scheme}}}{text}"
        else:
            items.append((name, text.replace("%", "%%")))
    return DriverLookup(found=True, password=password, fields=compile_fields(items))


class _Pool:
    """At most ``size`` open connections; one in use is never shared. A connection that raised is dropped."""

    def __init__(self, factory: Callable[[], Any], size: int = POOL_SIZE) -> None:
        self._factory = factory
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    def run(self, operation: Callable[[Any], T]) -> T:
        """``operation`` on a pooled connection. One that had been idle and fails (the server restarted
        or dropped it since) is replaced by a new one, once, as Dovecot retries a request."""
        if not self._slots.acquire(timeout=OPERATION_TIMEOUT):
            raise LdapUnavailable("no free LDAP connection")
        try:
            try:
                conn, reused = self._idle.get_nowait(), True
            except queue.Empty:
                conn, reused = self._factory(), False
            try:
                result = operation(conn)
            except Exception:
                _unbind(conn)
                if not reused:
                    raise
                conn = self._factory()
                try:
                    result = operation(conn)
                except Exception:
                    _unbind(conn)
                    raise
            self._idle.put(conn)
            return result
        finally:
            self._slots.release()

    def close(self) -> None:
        while True:
            try:
                _unbind(self._idle.get_nowait())
            except queue.Empty:
                return


def _unbind(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.unbind()


def tls_context(conf: LdapConf) -> ssl.SSLContext:
    """The client TLS context of the ldap passdb, from its ``tls_*`` args. The host name is checked
    by the context itself (``check_hostname``) whenever the certificate is required."""
    validate = _REQUIRE_CERT[conf.tls_require_cert]
    try:
        context = ssl.create_default_context(cafile=conf.tls_ca_cert_file or None,
                                             capath=conf.tls_ca_cert_dir or None)
        if conf.tls_cert_file:
            context.load_cert_chain(conf.tls_cert_file, keyfile=conf.tls_key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise LdapArgsError(f"tls_ca_cert_file/tls_ca_cert_dir/tls_cert_file/tls_key_file: {exc}") from None
    context.check_hostname = validate == ssl.CERT_REQUIRED
    context.verify_mode = validate
    if conf.tls_cipher_suite:
        try:
            context.set_ciphers(conf.tls_cipher_suite)
        except ssl.SSLError:
            raise LdapArgsError(f"tls_cipher_suite {conf.tls_cipher_suite!r}: no cipher OpenSSL knows") from None
    return context


def _context_tls(base: type, conf: LdapConf) -> Any:
    """An ``ldap3.Tls`` (passed as `base`: ldap3 is imported late) that wraps sockets with
    `tls_context`. ldap3's own wrapping turns ``check_hostname`` off and checks the name itself with
    ``ssl.match_hostname``, deprecated since Python 3.7 and removed in 3.12; here the context checks
    it during the handshake, against the server's host name (also sent as SNI)."""
    context = tls_context(conf)

    class ContextTls(base):  # type: ignore[misc, valid-type]
        def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
            connection.socket = context.wrap_socket(connection.socket, server_side=False,
                                                    do_handshake_on_connect=do_handshake,
                                                    server_hostname=connection.server.host)

    return ContextTls(validate=context.verify_mode)


class LdapDriver:
    """``driver = ldap``."""

    def __init__(self, conf: LdapConf) -> None:
        import ldap3

        self.conf = conf
        self.default_scheme = conf.default_pass_scheme
        self.checks_password = conf.auth_bind
        self._tls = _context_tls(ldap3.Tls, conf)
        self._search_pool = _Pool(lambda: self._open(conf.dn or None, conf.dnpass or None))
        self._bind_pool = _Pool(lambda: self._open(None, None))
        self._search_attrs = sorted({a for a, _, t in conf.pass_attrs if t is None and a})
        self._attr_names = {a for a, _, t in conf.pass_attrs if t is None}
        self._cache_templates = Template(conf.pass_filter.parts + conf.base.parts
                                         + (conf.auth_bind_userdn.parts if conf.auth_bind_userdn else ()))

    def __repr__(self) -> str:
        return f"LdapDriver(servers={[f'{s.host}:{s.port}' for s in self.conf.servers]})"

    def cache_key(self, values: Mapping[str, str]) -> str:
        return cache_key(self._cache_templates, values)

    def _servers(self) -> Any:
        """New ldap3 server objects for each connection: ldap3 marks an address that once refused a
        connection unusable for good, which would outlast the directory's restart."""
        import ldap3

        servers = [ldap3.Server(s.host, port=s.port, use_ssl=s.ssl, tls=self._tls, get_info=ldap3.NONE,
                                connect_timeout=CONNECT_TIMEOUT) for s in self.conf.servers]
        if len(servers) == 1:
            return servers[0]
        return ldap3.ServerPool(servers, ldap3.ROUND_ROBIN, active=1, exhaust=False)

    def _open(self, user: str | None, password: str | None) -> Any:
        import ldap3

        conn = ldap3.Connection(self._servers(), user=user, password=password, read_only=True,
                                receive_timeout=OPERATION_TIMEOUT, raise_exceptions=False,
                                auto_bind=ldap3.AUTO_BIND_NONE)
        if not conn.open(read_server_info=False) and conn.closed:
            raise LdapUnavailable("cannot connect")
        if self.conf.starttls and not conn.start_tls(read_server_info=False):
            raise LdapUnavailable("StartTLS failed")
        if user is not None and not conn.bind(read_server_info=False):
            raise LdapUnavailable(f"bind as dn failed: {conn.result.get('description')}")
        return conn

    def _search(self, values: Mapping[str, str]) -> tuple[str, dict[str, list[bytes]]] | DriverLookup:
        """The one entry pass_filter finds: (dn, attributes), or the lookup's answer (unknown, error)."""
        import ldap3

        search_filter = self.conf.pass_filter.render(values, filter_escape)
        base = self.conf.base.render(values, dn_escape)

        def search(conn: Any) -> tuple[Any, str, list[dict[str, Any]]]:
            conn.search(base, search_filter, search_scope=getattr(ldap3, _SCOPES[self.conf.scope]),
                        dereference_aliases=getattr(ldap3, "DEREF_" + _DEREFS[self.conf.deref]),
                        attributes=self._search_attrs or ldap3.NO_ATTRIBUTES, size_limit=2,
                        time_limit=OPERATION_TIMEOUT)
            if conn.closed or conn.result is None:
                raise LdapUnavailable("the connection was closed")
            entries = [r for r in (conn.response or []) if r.get("type") == "searchResEntry"]
            return conn.result.get("result"), conn.result.get("description", ""), entries

        code, description, entries = self._search_pool.run(search)
        if code == SIZE_LIMIT_EXCEEDED or len(entries) > 1:
            return DriverLookup(found=False, error="pass_filter matched multiple objects")
        if code == NO_SUCH_OBJECT or (code == 0 and not entries):
            return DriverLookup(found=False)
        if code != 0:
            return DriverLookup(found=False, error=f"search failed: {description}")
        return entries[0]["dn"], dict(entries[0].get("raw_attributes") or {})

    def lookup(self, user: str, values: Mapping[str, str]) -> DriverLookup:
        if self.conf.auth_bind_userdn is not None and not self._attr_names - {"password"}:
            return DriverLookup(found=True)  # nothing to look up: Dovecot does no search either
        try:
            found = self._search(values)
        except Exception as exc:  # ldap3 raises its own exception tree; any of it is a temporary failure
            return DriverLookup(found=False, error=f"ldap: {_describe(exc)}")
        if isinstance(found, DriverLookup):
            return found
        return entry_to_lookup(found[1], self.conf, values)

    def verify_plain(self, user: str, values: Mapping[str, str], password: str) -> DriverLookup:
        """``auth_bind = yes``: bind as the user. Only invalidCredentials is a wrong password."""
        try:
            if self.conf.auth_bind_userdn is not None:
                dn = self.conf.auth_bind_userdn.render(values, dn_escape)
                found = DriverLookup(found=True)
            else:
                searched = self._search(values)
                if isinstance(searched, DriverLookup):
                    return searched
                dn = searched[0]
                found = entry_to_lookup(searched[1], self.conf, values)
            if not password:  # an empty password would be an anonymous bind, which succeeds
                return DriverLookup(found=True, fields=found.fields, verified=False)

            def bind(conn: Any) -> tuple[bool, Any]:
                ok = conn.rebind(user=dn, password=password, read_server_info=False)
                if conn.closed or conn.result is None:
                    raise LdapUnavailable("the connection was closed")
                return ok, conn.result.get("result")

            ok, code = self._bind_pool.run(bind)
        except Exception as exc:
            return DriverLookup(found=False, error=f"ldap: {_describe(exc)}")
        if ok:
            return DriverLookup(found=True, fields=found.fields, verified=True)
        if code == INVALID_CREDENTIALS:
            return DriverLookup(found=True, fields=found.fields, verified=False)
        return DriverLookup(found=False, error=f"ldap: bind failed with result {code}")

    async def aclose(self) -> None:
        self._search_pool.close()
        self._bind_pool.close()


def _describe(exc: BaseException) -> str:
    text = str(exc).split(" - ")[0][:120] if not isinstance(exc, LdapUnavailable) else str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def make_ldap_driver(args: str) -> LdapDriver:
    """``passdb { driver = ldap  args = /etc/dovecot/dovecot-ldap.conf.ext }``."""
    path = args.strip()
    if not path:
        raise LdapArgsError("ldap: args must name the dovecot-ldap.conf.ext file")
    try:
        settings = read_ext(path)
    except ExtFileError as exc:
        raise LdapArgsError(str(exc)) from None
    return LdapDriver(LdapConf.from_settings(settings, path))
