"""Cross-setting rules that need no network: what each role requires, TLS, HAProxy, doveadm, ports.

Pure: takes a loaded (not yet returned) Config and returns the problems found, each
located at the line that makes the requirement apply.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import TYPE_CHECKING

from palomar.auth.variables import Template, VariableError
from palomar.config import settings as reg
from palomar.config.director_transition import load_transition
from palomar.config.errors import ConfigError, Issue, Location
from palomar.config.model import ListenerSettings, ServiceSettings
from palomar.protocols.prelogin_caps import CapabilitySettings, settings_problems
from palomar.protocols.subaddress import delimiters_problem
from palomar.proxy.workers import LOGIN_SERVICES, MAX_WORKERS

if TYPE_CHECKING:
    from palomar.config.loader import Config

DERIVED_SECRETS = ("cluster_hop_secret", "cluster_backend_dovecot_master_password")
_REQUIRED = {
    "proxy": ("cluster_local_site", "cluster_hop_secret"),
    "backend": ("cluster_backend_name", "cluster_local_site", "cluster_hop_secret",
                "cluster_backend_dovecot_master_password"),
}


def cross_check(cfg: Config, main: Location) -> list[Issue]:
    """Every cross-setting problem of `cfg`; `main` locates problems that belong to no single line."""
    issues: list[Issue] = []
    role_at = cfg.role_location or main
    for name in _REQUIRED.get(cfg.role or "", ()):
        if not cfg[name]:
            hint = " (or doveadm_password, from which it is derived)" if name in DERIVED_SECRETS else ""
            issues.append(Issue(role_at, f"{name}: required on a {cfg.role} (@cluster_defaults = {cfg.role})"
                                         f"{hint}"))
    if cfg.role == "proxy" and cfg["cluster_proxy_check_backends"]:
        for name in ("cluster_backend_test_username", "cluster_backend_test_password"):
            if not cfg[name]:
                at = cfg.location("cluster_proxy_check_backends") or role_at
                issues.append(Issue(at, f"{name}: required to probe backends "
                                        "(or set cluster_proxy_check_backends = no)"))
    issues += _geodb(cfg)
    issues += _tls(cfg, role_at)
    issues += _hop_tls(cfg, role_at)
    issues += _backend_path(cfg, role_at)
    issues += _listeners(cfg)
    issues += _doveadm_ssl(cfg)
    issues += _backend_listeners(cfg)
    issues += _processes(cfg, role_at)
    issues += _address_rules(cfg, main)
    issues += _capability_rules(cfg, main)
    issues += _director_transition(cfg)
    return issues


def _director_transition(cfg: Config) -> list[Issue]:
    """The problems of the director transition file, if one is named (it is read here)."""
    path = cfg["cluster_director_transition_config"]
    if not path:
        return []
    try:
        load_transition(path)
    except ConfigError as exc:
        at = cfg.location("cluster_director_transition_config")
        return [Issue(at, f"cluster_director_transition_config: {issue}") for issue in exc.issues]
    return []


def _capability_rules(cfg: Config, main: Location) -> list[Issue]:
    """The pre-login capability settings (protocols/prelogin_caps.py), each problem at its setting."""
    issues = []
    for problem in settings_problems(CapabilitySettings.from_config(cfg)):
        name = problem.split(":", 1)[0]
        issues.append(Issue(cfg.location(name) or main, problem))
    return issues


def _address_rules(cfg: Config, main: Location) -> list[Issue]:
    """recipient_delimiter and auth_username_format are checked here, not at the first delivery or login."""
    issues = []
    problem = delimiters_problem(cfg["recipient_delimiter"])
    if problem is not None:
        issues.append(Issue(cfg.location("recipient_delimiter") or main, problem))
    try:
        Template.parse(cfg["auth_username_format"])
    except VariableError as exc:
        issues.append(Issue(cfg.location("auth_username_format") or main, f"auth_username_format: {exc}"))
    return issues


def _processes(cfg: Config, role_at: Location) -> list[Issue]:
    """Worker processes and client_limit: refuse what palomar would silently not do
    (docs/design/proxy-workers.md has the mapping of Dovecot's service settings)."""
    issues: list[Issue] = []
    for service in cfg.services.values():
        at = cfg.service_locations.get(service.name) or role_at
        where = f"service {service.name}"
        workers_here = cfg.role == "proxy" and service.name in LOGIN_SERVICES
        if not workers_here and (service.process_limit != 1 or service.process_min_avail > 1):
            issues.append(Issue(at, f"{where}: process_limit and process_min_avail are only used on a proxy's "
                                    f"{', '.join(LOGIN_SERVICES)} services (worker processes); remove them here"))
        elif service.process_limit > MAX_WORKERS or service.process_min_avail > MAX_WORKERS:
            issues.append(Issue(at, f"{where}: at most {MAX_WORKERS} worker processes"))
        elif service.process_limit > 1 and service.process_min_avail > service.process_limit:
            issues.append(Issue(at, f"{where}: process_min_avail ({service.process_min_avail}) is higher than "
                                    f"process_limit ({service.process_limit})"))
        default = ServiceSettings(service.name).client_limit
        if service.client_limit != default and (cfg.role != "proxy" or service.name not in _LIMITED_SERVICES):
            issues.append(Issue(at, f"{where}: client_limit is only enforced on a proxy's {', '.join(_LIMITED_SERVICES)} "
                                    "services; remove it here"))
    return issues


_LIMITED_SERVICES = ("imap-login", "pop3-login", "submission-login", "managesieve-login", "lmtp")


def _geodb(cfg: Config) -> list[Issue]:
    """Settings of the engine not in use would be silently ignored: refuse them."""
    driver = cfg["cluster_geodb_driver"]
    if driver == "cassandra":
        issues = [Issue(cfg.location("cluster_geodb_path"),
                        "cluster_geodb_path: only used with cluster_geodb_driver = sqlite")
                  ] if cfg.is_set("cluster_geodb_path") else []
        if not cfg["cassandra_hosts"]:
            issues.append(Issue(cfg.location("cluster_geodb_driver"),
                                "cassandra_hosts: required with cluster_geodb_driver = cassandra"))
        return issues
    return [
        Issue(cfg.location(name), f"{name}: only used with cluster_geodb_driver = cassandra "
                                  f"(cluster_geodb_driver is {driver})")
        for name in ("cassandra_hosts", "cassandra_keyspace") if cfg.is_set(name)
    ]


def _tls(cfg: Config, role_at: Location) -> list[Issue]:
    issues: list[Issue] = []
    explicit_tls = [key for key, listener in _explicit_listeners(cfg) if listener.ssl]
    if cfg["ssl"] == "no":
        for service, name in explicit_tls:
            issues.append(Issue(cfg.listener_locations[(service, name)],
                                f"service {service} {{ inet_listener {name} }}: ssl = yes but ssl = no globally"))
        return issues
    if cfg.role == "proxy" or cfg.is_set("ssl") or explicit_tls:
        missing = [n for n in ("ssl_server_cert_file", "ssl_server_key_file") if not cfg[n]]
        if missing:
            at = cfg.listener_locations[explicit_tls[0]] if explicit_tls else cfg.location("ssl") or role_at
            issues.append(Issue(at, f"ssl: TLS is enabled (ssl = {cfg['ssl']}) but {' and '.join(missing)} "
                                    f"{'is' if len(missing) == 1 else 'are'} not set; set them or ssl = no"))
    return issues


_HOP_TLS_FILES = {
    "proxy": ("cluster_hop_ssl_ca_file",),
    "backend": ("cluster_hop_ssl_cert_file", "cluster_hop_ssl_key_file"),
}


def _hop_tls(cfg: Config, role_at: Location) -> list[Issue]:
    """TLS on the hop needs its files on each role; a plaintext hop must not carry them unused."""
    if cfg["cluster_hop_ssl"] == "no":
        return [Issue(cfg.location(name), f"{name}: only used with cluster_hop_ssl = yes (cluster_hop_ssl is no)")
                for name in ("cluster_hop_ssl_cert_file", "cluster_hop_ssl_key_file", "cluster_hop_ssl_ca_file")
                if cfg.is_set(name)]
    missing = [name for name in _HOP_TLS_FILES.get(cfg.role or "", ()) if not cfg[name]]
    if not missing:
        return []
    at = cfg.location("cluster_hop_ssl") or role_at
    return [Issue(at, f"cluster_hop_ssl: TLS on the hop is on (cluster_hop_ssl = yes, the default) but "
                      f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; "
                      "set them or cluster_hop_ssl = no")]


_DIRECT_PORTS = ("cluster_backend_direct_imap_port", "cluster_backend_direct_pop3_port")
_DIRECT_OPTIONAL_PORTS = ("cluster_backend_direct_submission_port", "cluster_backend_direct_sieve_port")
_BACKEND_DIRECT_DOVECOT = (*_DIRECT_PORTS, *_DIRECT_OPTIONAL_PORTS, "cluster_backend_direct_listen",
                           "haproxy_trusted_networks")
"""A backend's settings for its Dovecot's direct listeners: only `palomar backend dovecot-config` reads them."""


def _backend_path(cfg: Config, role_at: Location) -> list[Issue]:
    """The direct path needs its ports and the master password on a proxy, and its login check socket on a
    backend; its TLS follows cluster_hop_ssl (the hop's certificates, checked as for the hop)."""
    names = ("cluster_backend_login_check_socket",) if cfg.role == "backend" else _DIRECT_PORTS
    if cfg["cluster_backend_path"] == "hop":
        unused = (*names, *_BACKEND_DIRECT_DOVECOT) if cfg.role == "backend" else (*names, *_DIRECT_OPTIONAL_PORTS)
        return [Issue(cfg.location(name), f"{name}: only used with cluster_backend_path = direct")
                for name in unused if cfg.is_set(name)]
    at = cfg.location("cluster_backend_path") or role_at
    needed = (*names, "cluster_backend_dovecot_master_password") if cfg.role == "proxy" else names
    issues = [Issue(at, f"cluster_backend_path = direct needs {name}") for name in needed if not cfg[name]]
    return issues


def _explicit_listeners(cfg: Config) -> Iterator[tuple[tuple[str, str], ListenerSettings]]:
    """Enabled listeners the configuration writes out (not only Dovecot's defaults)."""
    for key in cfg.listener_explicit:
        service, name = key
        listener = cfg.services[service].listeners.get(name)
        if listener is not None:
            yield key, listener


def _backend_listeners(cfg: Config) -> list[Issue]:
    """A backend listens on cluster_hop_port only: any other listener written for it would never open."""
    if cfg.role != "backend":
        return []
    issues = []
    for (service, name), _ in _explicit_listeners(cfg):
        if service in ("doveadm", "stats"):
            continue  # doveadm: the local Dovecot's (_doveadm_listener); stats: the backend's /metrics
        why = ("a backend's clients are proxies on cluster_hop_port, and its Dovecot's ports are the "
               "cluster_backend_dovecot_*_port settings")
        issues.append(Issue(cfg.listener_locations[(service, name)],
                            f"service {service} {{ inet_listener {name} }}: not used on a backend: {why}; "
                            "remove it or set port = 0"))
    return issues


def _listeners(cfg: Config) -> list[Issue]:
    issues: list[Issue] = []
    bound: list[tuple[str, int, str, str]] = []
    for service in cfg.services.values():
        for listener in service.listeners.values():
            fallback = "doveadm_port" if service.name == "doveadm" else "listen"
            at = cfg.listener_locations.get((service.name, listener.name)) or cfg.location(fallback)
            title = f"service {service.name} {{ inet_listener {listener.name} }}"
            if listener.haproxy and not cfg["haproxy_trusted_networks"]:
                issues.append(Issue(at, f"{title}: haproxy = yes needs haproxy_trusted_networks"))
            if service.name == "doveadm":
                issues += _doveadm_listener(cfg, listener, at, title)
            for address in listener.address:
                for other_address, other_port, other_title, _ in bound:
                    if other_port == listener.port and _overlap(address, other_address):
                        issues.append(Issue(at, f"{title}: port {listener.port} on {address} "
                                                f"is already used by {other_title}"))
                bound.append((address, listener.port, title, service.name))
    return issues


def _doveadm_listener(cfg: Config, listener: ListenerSettings, at: Location | None, title: str) -> list[Issue]:
    """A proxy serves doveadm clients on it (`http`: the HTTP API, any other name: the TCP protocol); a
    backend's local Dovecot listens on its port (on cluster_backend_dovecot_host) for the commands
    proxies forward."""
    issues = []
    http = listener.name == reg.DOVEADM_HTTP_LISTENER
    if cfg.role == "backend":
        if listener.name != reg.DOVEADM_LISTENER:
            issues.append(Issue(at, f"{title}: a backend uses only `inet_listener {reg.DOVEADM_LISTENER}` (its "
                                    "Dovecot's doveadm TCP listener; the HTTP API's port is "
                                    "cluster_backend_dovecot_doveadm_http_port); remove it"))
        written = cfg.listener_explicit.get(("doveadm", listener.name), set())
        for name in ("haproxy", "address", "ssl"):
            if name in written:
                issues.append(Issue(at, f"{title}: {name} is not used on a backend: the port is the local "
                                        "Dovecot's doveadm listener, on cluster_backend_dovecot_host; remove it"))
    if not cfg["doveadm_password"] and not (http and cfg.role != "backend" and cfg["doveadm_api_key"]):
        needed = "doveadm_password or doveadm_api_key is" if http and cfg.role != "backend" else \
            "doveadm_password is"
        issues.append(Issue(at, f"{title}: {needed} required (doveadm clients authenticate with it)"))
    return issues


def _doveadm_ssl(cfg: Config) -> list[Issue]:
    """doveadm_ssl is TLS on the doveadm proxying leg, which in palomar is the hop."""
    if cfg["doveadm_ssl"] == "no" or cfg["cluster_hop_ssl"] == "yes":
        return []
    return [Issue(cfg.location("doveadm_ssl"), f"doveadm_ssl = {cfg['doveadm_ssl']}: forwarded doveadm commands "
                                               "travel over the hop, which is plaintext (cluster_hop_ssl = no); "
                                               "set cluster_hop_ssl = yes or doveadm_ssl = no")]


def _overlap(a: str, b: str) -> bool:
    """Whether binding both addresses on one port would collide (`*` = all IPv4, `::` = all IPv6)."""
    if a == b:
        return True
    for wildcard, family in (("*", 4), ("::", 6)):
        for x, y in ((a, b), (b, a)):
            if x == wildcard:
                try:
                    return ipaddress.ip_address(y).version == family
                except ValueError:
                    return False
    return False
