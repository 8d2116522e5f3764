"""The local Dovecot CE instance behind `palomar backend`: one standalone dovecot.conf.

The palomar backend has already had the user authenticated by a proxy, so Dovecot must trust
exactly one thing: a login as the master user with the master secret. The master passdb
holds only that user (hashed, never the plain secret). Of the ordinary passdbs, a deny
passdb refuses every login that did not pass the master passdb, and a static passdb then
accepts any target user without a password of its own: an ordinary user/password login
never succeeds.

Rendering is a pure function of `DovecotParams`; `write_instance` is the only I/O.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from palomar.protocols.subaddress import delimiters_problem

CONFIG_NAME = "dovecot.conf"
MASTER_PASSDB_NAME = "master-users.passwd"
LOGIN_CHECK_DICT_NAME = "palomar-login-check.conf.ext"
LOGIN_CHECK_IDLE_MSECS = 60000
"""How long Dovecot's dict client keeps an idle connection to the login check (its default, 0,
reconnects for every lookup: measured 20 connections for 10 logins, 1 with this)."""
DEFAULT_MASTER_USER = "palomar-master"

# A few long-lived login processes serve all connections (Dovecot's "high-performance"
# mode). The client limits are sized for the 20000 open files this class of host allows;
# IMAP sessions: half of the soak's 10,000 (bench/soak.py) per backend, plus headroom.
LOGIN_PROCESSES = 2
LOGIN_CLIENT_LIMIT = 4000
SHARED_CLIENT_LIMIT = 10500
IMAP_PROCESS_LIMIT = 6000
POP3_PROCESS_LIMIT = 1000

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]*$")
_SETTING_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Characters that have a meaning in Dovecot values or passwd-file lines (variables,
# file includes, field separators, comments) are kept out of paths.
_PATH_BAD = re.compile(r"[\s\"'\\%$:#<>{}]")


class DovecotConfigError(ValueError):
    """A parameter that would give Dovecot a broken or unsafe configuration."""


@dataclass(frozen=True)
class DovecotParams:
    """Everything that differs between two backend Dovecot instances.

    `conf_dir` holds the generated dovecot.conf and the master passdb; `mail_root` is the
    one mail directory shared by all backends (homes are `mail_root/<domain>/<user>`).
    Port 0 turns the doveadm HTTP API or the OpenMetrics listener off.
    """

    instance_name: str
    hostname: str
    conf_dir: Path
    base_dir: Path
    state_dir: Path
    log_path: Path
    listen: str
    imap_port: int
    pop3_port: int
    lmtp_port: int
    submission_port: int
    sieve_port: int
    doveadm_http_port: int
    metrics_port: int
    mail_root: Path
    master_password: str = field(repr=False)
    doveadm_password: str = field(repr=False)
    master_user: str = DEFAULT_MASTER_USER
    doveadm_api_key: str = field(default="", repr=False)
    doveadm_tcp_port: int = 0
    """The doveadm TCP listener (doveadm-server protocol) that runs commands proxies forward."""
    trusted_networks: tuple[str, ...] = ("127.0.0.1/32",)
    relay_host: str = "127.0.0.1"
    relay_port: int = 25
    mail_uid: str = "vmail"
    mail_gid: str = "vmail"
    recipient_delimiter: str = "+"
    """Dovecot's recipient_delimiter; the palomar backend splits LMTP recipients with the same one."""
    login_check_socket: Path | None = None
    """`cluster_backend_path = direct`: the UNIX socket where `palomar backend` answers Dovecot's dict
    passdb lookup with its ownership check for every master login (None: the hop path, where the
    backend checks before it logs in and Dovecot accepts any master login)."""
    haproxy_imap_port: int = 0
    """Direct path: IMAP listener proxies reach with a PROXY v2 header (0: none)."""
    haproxy_pop3_port: int = 0
    """Direct path: POP3 listener proxies reach with a PROXY v2 header (0: none)."""
    haproxy_submission_port: int = 0
    """Direct path: Submission listener proxies reach with a PROXY v2 header (0: none)."""
    haproxy_sieve_port: int = 0
    """Direct path: ManageSieve listener proxies reach with a PROXY v2 header (0: none)."""
    haproxy_trusted_networks: tuple[str, ...] = ()
    """Direct path: the proxies' addresses, the only ones whose PROXY header Dovecot believes (a network
    covering every address is refused: anyone could then claim any client address)."""
    haproxy_listen: str = ""
    """Direct path: the address the haproxy listeners bind to, reachable from the proxies ("": `listen`).
    Everything else stays on `listen`, the loopback address only the local `palomar backend` uses."""
    haproxy_tls: tuple[Path, Path] | None = None
    """Direct path with TLS (`cluster_hop_ssl = yes`): the certificate and key the haproxy listeners
    serve after the PROXY header (the backend's hop certificate); None: plaintext listeners."""
    extra_settings: tuple[tuple[str, str], ...] = ()
    """Further top-level Dovecot settings (name, value), written last: e.g. `imap_capability` with
    `+XFOO`, which tests use to tell one backend's capabilities from the defaults."""

    def __post_init__(self) -> None:
        _check_params(self)

    @property
    def config_path(self) -> Path:
        return self.conf_dir / CONFIG_NAME

    @property
    def master_passdb_path(self) -> Path:
        return self.conf_dir / MASTER_PASSDB_NAME

    @property
    def login_check_dict_path(self) -> Path:
        return self.conf_dir / LOGIN_CHECK_DICT_NAME

    def listeners(self) -> dict[str, int]:
        """Every TCP port this instance listens on (on `listen`), by service name."""
        ports = {
            "imap": self.imap_port,
            "pop3": self.pop3_port,
            "lmtp": self.lmtp_port,
            "submission": self.submission_port,
            "sieve": self.sieve_port,
            "doveadm_http": self.doveadm_http_port,
            "doveadm_tcp": self.doveadm_tcp_port,
            "metrics": self.metrics_port,
            **{f"{protocol}_haproxy": port for protocol, port in self.haproxy_ports().items()},
        }
        return {name: port for name, port in ports.items() if port}

    def haproxy_ports(self) -> dict[str, int]:
        """The direct path's listeners with `haproxy = yes`, by protocol (0: none)."""
        return {"imap": self.haproxy_imap_port, "pop3": self.haproxy_pop3_port,
                "submission": self.haproxy_submission_port, "sieve": self.haproxy_sieve_port}


@dataclass(frozen=True)
class InstanceFiles:
    config: Path
    master_passdb: Path


def _check_params(p: DovecotParams) -> None:
    for label, value in (("instance_name", p.instance_name), ("mail_uid", p.mail_uid),
                         ("mail_gid", p.mail_gid)):
        if not _NAME_RE.match(value):
            raise DovecotConfigError(f"{label} {value!r}: use letters, digits, '.', '_' and '-' only")
    if not _HOST_RE.match(p.hostname):
        raise DovecotConfigError(f"hostname {p.hostname!r} is not a host name")
    if not _USER_RE.match(p.master_user):
        raise DovecotConfigError(f"master user {p.master_user!r}: use letters, digits and ._@+- only")
    try:
        listen = ipaddress.ip_address(p.listen)
    except ValueError:
        raise DovecotConfigError(f"listen address {p.listen!r} is not an IP address") from None
    if not listen.is_loopback:
        raise DovecotConfigError(f"listen address {p.listen} is not a loopback address")
    if p.haproxy_listen:
        if not any(p.haproxy_ports().values()):
            raise DovecotConfigError("haproxy listen address without haproxy listeners")
        try:
            ipaddress.ip_address(p.haproxy_listen)
        except ValueError:
            raise DovecotConfigError(f"haproxy listen address {p.haproxy_listen!r} is not an IP address") from None
    for label, path in (("conf_dir", p.conf_dir), ("base_dir", p.base_dir), ("state_dir", p.state_dir),
                        ("log_path", p.log_path), ("mail_root", p.mail_root)):
        if not Path(path).is_absolute():
            raise DovecotConfigError(f"{label} {str(path)!r} must be an absolute path")
        if _PATH_BAD.search(str(path)):
            raise DovecotConfigError(f"{label} {str(path)!r} contains a character Dovecot would interpret")
    required = {"imap": p.imap_port, "pop3": p.pop3_port, "lmtp": p.lmtp_port,
                "submission": p.submission_port, "sieve": p.sieve_port}
    optional = {"doveadm_http": p.doveadm_http_port, "doveadm_tcp": p.doveadm_tcp_port, "metrics": p.metrics_port,
                **{f"{protocol}_haproxy": port for protocol, port in p.haproxy_ports().items()}}
    for name, port in {**required, **optional}.items():
        low = 1 if name in required else 0
        if not isinstance(port, int) or not low <= port <= 65535:
            raise DovecotConfigError(f"{name} port {port!r} is out of range")
    used = [port for port in {**required, **optional}.values() if port]
    if len(used) != len(set(used)):
        raise DovecotConfigError("two services of one instance share a port")
    if not 1 <= p.relay_port <= 65535:
        raise DovecotConfigError(f"relay port {p.relay_port!r} is out of range")
    if not _HOST_RE.match(p.relay_host):
        raise DovecotConfigError(f"relay host {p.relay_host!r} is not a host name or address")
    if not p.trusted_networks:
        raise DovecotConfigError("trusted_networks must name the palomar backend's address")
    if any(p.haproxy_ports().values()) and (p.login_check_socket is None
                                                        or not p.haproxy_trusted_networks):
        raise DovecotConfigError("haproxy listeners need the login check socket and haproxy_trusted_networks: "
                                 "proxies reach Dovecot directly only with palomar deciding every login")
    for label, path in (("haproxy TLS certificate", p.haproxy_tls[0]), ("haproxy TLS key", p.haproxy_tls[1])) \
            if p.haproxy_tls else ():
        if not Path(path).is_absolute() or _PATH_BAD.search(str(path)):
            raise DovecotConfigError(f"{label} {str(path)!r} must be an absolute path without characters Dovecot "
                                     "would interpret")
    socket = p.login_check_socket
    if socket is not None and (not Path(socket).is_absolute() or _PATH_BAD.search(str(socket))):
        raise DovecotConfigError(f"login check socket {str(p.login_check_socket)!r} must be an absolute "
                                     "path without characters Dovecot would interpret")
    for net in (*p.trusted_networks, *p.haproxy_trusted_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise DovecotConfigError(f"trusted network {net!r} is not an address or network") from None
    everyone = [net for net in p.haproxy_trusted_networks if ipaddress.ip_network(net, strict=False).prefixlen == 0]
    if everyone:
        raise DovecotConfigError(f"haproxy_trusted_networks {everyone[0]} trusts every address: name the proxies' "
                                 "networks, whose PROXY header Dovecot believes")
    for label, secret in (("master password", p.master_password), ("doveadm password", p.doveadm_password)):
        if not secret:
            raise DovecotConfigError(f"{label} is empty")
    for name, value in p.extra_settings:
        if not _SETTING_RE.match(name):
            raise DovecotConfigError(f"extra setting name {name!r} is not a Dovecot setting name")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise DovecotConfigError(f"extra setting {name} contains a control character")
    problem = delimiters_problem(p.recipient_delimiter)
    if problem is not None:
        raise DovecotConfigError(problem)
    for label, secret in (("master password", p.master_password), ("doveadm password", p.doveadm_password),
                          ("doveadm API key", p.doveadm_api_key)):
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in secret):
            raise DovecotConfigError(f"{label} contains a control character")


def _quote(value: str) -> str:
    """A Dovecot config string literal: taken verbatim, no variables, no `<file` include."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def hash_password(password: str, salt: bytes | None = None) -> str:
    """Dovecot `{SSHA512}`: base64(SHA-512(password + salt) + salt).

    The master secret is a long random machine secret checked on every proxied login, so a
    fast salted hash is enough; slow schemes protect guessable human passwords.
    """
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.sha512(password.encode() + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode("ascii")


def master_passwd_line(user: str, password: str) -> str:
    """One passwd-file line for the master passdb, with a hashed password.

    No `allow_nets` here: Dovecot checks it against the forwarded client address (rip),
    not the palomar backend's own; `login_trusted_networks` is what limits forwarding.
    """
    if not _USER_RE.match(user):
        raise DovecotConfigError(f"master user {user!r}: use letters, digits and ._@+- only")
    if not password:
        raise DovecotConfigError("master password is empty")
    return f"{user}:{hash_password(password)}\n"


def render(p: DovecotParams) -> str:
    """The complete dovecot.conf of one backend instance."""
    trusted = " ".join(p.trusted_networks)
    doveadm_keys = f"doveadm_password = {_quote(p.doveadm_password)}\n"
    if p.doveadm_api_key:
        doveadm_keys += f"doveadm_api_key = {_quote(p.doveadm_api_key)}\n"
    extra = "".join(f"{name} = {_quote(value)}\n" for name, value in p.extra_settings)
    haproxy = (f"# Proxies connect straight to Dovecot (cluster_backend_path = direct): their PROXY v2\n"
               f"# header is believed from these addresses only.\n"
               f"haproxy_trusted_networks = {' '.join(p.haproxy_trusted_networks)}\n"
               if p.haproxy_trusted_networks else "")
    return f"""\
# Dovecot CE backend instance {p.instance_name}, generated by `palomar backend dovecot-config`.
# Only the local `palomar backend` talks to it: it logs users in as the master user.
instance_name = {p.instance_name}
hostname = {p.hostname}
base_dir = {p.base_dir}
state_dir = {p.state_dir}
log_path = {p.log_path}
listen = {p.listen}

protocols = imap pop3 lmtp sieve submission

{_tls(p)}disable_plaintext_auth = no
auth_mechanisms = plain login

# The palomar backend forwards the client's address (IMAP ID x-originating-ip, XCLIENT);
# it is believed only from these networks and becomes rip= in the log.
login_trusted_networks = {trusted}
imap_id_log = *
auth_verbose = yes
verbose_proctitle = yes
{haproxy}
# Only the master user can log in: SASL PLAIN authzid=<user> authcid={p.master_user}.
auth_username_format = %Lu
auth_master_user_separator = *
passdb {{
  driver = passwd-file
  args = {p.master_passdb_path}
  master = yes
  result_success = continue
}}
# Everyone who has not logged in as the master user is refused here ...
passdb {{
  driver = static
  args = nopassword=y
  deny = yes
  skip = authenticated
}}
{_target_passdb(p)}{_login_check_userdb(p)}userdb {{
  driver = static
  args = uid={p.mail_uid} gid={p.mail_gid} home={p.mail_root}/%Ld/%Ln allow_all_users=yes
}}

# One mail directory shared by every backend (NFS in production).
mail_location = sdbox:~/mail
mmap_disable = yes
mail_max_userip_connections = 200
namespace inbox {{
  inbox = yes
  separator = /
}}
lda_mailbox_autocreate = yes
recipient_delimiter = {_quote(p.recipient_delimiter)}
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
}}
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
}}

submission_relay_host = {p.relay_host}
submission_relay_port = {p.relay_port}

service imap-login {{
  inet_listener imap {{
    port = {p.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
{_haproxy_listener("imap", p)}  service_count = 0
  process_min_avail = {LOGIN_PROCESSES}
  client_limit = {LOGIN_CLIENT_LIMIT}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {p.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
{_haproxy_listener("pop3", p)}  service_count = 0
  process_min_avail = 1
}}
service submission-login {{
  inet_listener submission {{
    port = {p.submission_port}
  }}
{_haproxy_listener("submission", p)}}}
service managesieve-login {{
  inet_listener sieve {{
    port = {p.sieve_port}
  }}
{_haproxy_listener("sieve", p)}}}
service lmtp {{
  inet_listener lmtp {{
    port = {p.lmtp_port}
  }}
}}
service imap {{
  process_limit = {IMAP_PROCESS_LIMIT}
}}
service pop3 {{
  process_limit = {POP3_PROCESS_LIMIT}
}}
# Every session process keeps connections to anvil, auth and stats: the default
# client_limit of 1000 stalls new sessions beyond 1000.
service anvil {{
  client_limit = {SHARED_CLIENT_LIMIT}
}}
service auth {{
  client_limit = {SHARED_CLIENT_LIMIT}
}}

# doveadm HTTP API: POST /doveadm/v1 (Basic doveadm:<password> or X-Dovecot-API <key>);
# doveadm TCP (doveadm-server protocol, PLAIN doveadm:<password>): commands proxies forward.
{doveadm_keys}service doveadm {{
  inet_listener http {{
    port = {p.doveadm_http_port}
  }}
  inet_listener tcp {{
    port = {p.doveadm_tcp_port}
  }}
}}

# OpenMetrics: GET /metrics on the stats HTTP listener.
metric auth_success {{
  filter = event=auth_request_finished AND success=yes
}}
metric auth_failure {{
  filter = event=auth_request_finished AND NOT success=yes
}}
metric imap_command {{
  filter = event=imap_command_finished
  group_by = cmd_name tagged_reply_state
}}
metric mail_delivery {{
  filter = event=mail_delivery_finished
}}
service stats {{
  client_limit = {SHARED_CLIENT_LIMIT}
  inet_listener http {{
    port = {p.metrics_port}
  }}
}}
{extra}"""


def _target_passdb(p: DovecotParams) -> str:
    """The passdb that decides a master login's target user: any user (the hop path: the backend
    service checked ownership before it logged in), or palomar's login check (the direct path)."""
    if p.login_check_socket is None:
        return """\
# ... and after a master login, any target user is accepted without a password of its own.
# (Dovecot ignores skip = unauthenticated on the first passdb, hence the deny passdb above.)
passdb {
  driver = static
  args = nopassword=y
  skip = unauthenticated
}
"""
    return f"""\
# ... and after a master login, `palomar backend` decides whether this backend serves the target
# user (its ownership check, over the dict protocol): nopassword, or nologin + reason.
passdb {{
  driver = dict
  args = {p.login_check_dict_path}
  skip = unauthenticated
}}
"""


def _login_check_userdb(p: DovecotParams) -> str:
    """Direct path: the session's process asks palomar once more right before the session starts
    (the move fence's last word, login_check.py); `{}` lets the static userdb below answer."""
    if p.login_check_socket is None:
        return ""
    return f"""\
userdb {{
  driver = dict
  args = {p.login_check_dict_path}
  result_success = continue-ok
  result_failure = return-fail
}}
"""


def login_check_dict(p: DovecotParams) -> str:
    """The dict passdb's own file: the UNIX socket of the login check and the key it is asked."""
    return f"""\
# The ownership check of `palomar backend` (cluster_backend_path = direct). Dovecot's dict client
# closes an idle connection at once by default (idle_msecs=0): one UNIX connection per lookup.
uri = proxy:idle_msecs={LOGIN_CHECK_IDLE_MSECS}:{p.login_check_socket}:palomar
password_key = passdb/%{{session}}
user_key = userdb/%{{session}}
iterate_disable = yes
"""


def _tls(p: DovecotParams) -> str:
    if p.haproxy_tls is None:
        return "# Loopback only: plaintext authentication, no TLS.\nssl = no\n"
    cert, key = p.haproxy_tls
    return f"""\
# TLS only on the proxies' haproxy listeners (the direct path, after the PROXY header); the palomar
# backend's own loopback logins stay plaintext.
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
"""


def direct_listeners_note(p: DovecotParams) -> str | None:
    """What the direct path's listeners bind to, for `palomar backend dovecot-config` to say: an empty
    `cluster_backend_direct_listen` means `cluster_backend_dovecot_host`, a loopback address that only
    proxies on the same host reach, which is easy to miss on real hosts. None without direct listeners."""
    ports = ", ".join(f"{protocol} {port}" for protocol, port in p.haproxy_ports().items() if port)
    if not ports:
        return None
    tls = "TLS" if p.haproxy_tls is not None else "plaintext"
    if p.haproxy_listen:
        return f"direct-path listeners ({ports}; {tls}, PROXY header) bind to {p.haproxy_listen}"
    return (f"direct-path listeners ({ports}; {tls}, PROXY header) bind to {p.listen}: cluster_backend_direct_listen "
            f"is empty, which means cluster_backend_dovecot_host, a loopback address; only proxies on this host reach "
            f"them (set cluster_backend_direct_listen to an address the proxies reach)")


def _haproxy_listener(protocol: str, p: DovecotParams) -> str:
    port = p.haproxy_ports()[protocol]
    if not port:
        return ""
    address = f"    address = {p.haproxy_listen}\n" if p.haproxy_listen else ""
    return f"""\
  inet_listener {protocol}_haproxy {{
{address}    port = {port}
    haproxy = yes
    ssl = {"yes" if p.haproxy_tls is not None else "no"}
  }}
"""


def write_instance(p: DovecotParams, internal_group: str = "dovecot") -> InstanceFiles:
    """Write dovecot.conf (0600, it holds the doveadm secrets) and the master passdb.

    Dovecot's auth process runs as the internal user, so the passdb is 0640 with group
    `internal_group` when we run as root and that group exists, else 0600.
    """
    p.conf_dir.mkdir(parents=True, exist_ok=True)
    gid = _group_id(internal_group) if os.geteuid() == 0 else None
    passdb_mode = 0o640 if gid is not None else 0o600
    _write_private(p.master_passdb_path, master_passwd_line(p.master_user, p.master_password),
                   mode=passdb_mode, gid=gid)
    if p.login_check_socket is not None:
        _write_private(p.login_check_dict_path, login_check_dict(p), mode=passdb_mode, gid=gid)
    _write_private(p.config_path, render(p), mode=0o600, gid=None)
    return InstanceFiles(config=p.config_path, master_passdb=p.master_passdb_path)


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _write_private(path: Path, text: str, mode: int, gid: int | None) -> None:
    """Replace `path` atomically; the file is never readable beyond `mode`, not even briefly."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            if gid is not None:
                os.fchown(out.fileno(), 0, gid)
            os.fchmod(out.fileno(), mode)
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
