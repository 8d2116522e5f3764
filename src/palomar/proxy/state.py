"""Everything a proxy process shares between its sessions: passdb, router, hop client,
metrics, and the per-destination counters that flow into the GeoDB's proxy_dest_stats."""

from __future__ import annotations

import logging
import socket
import ssl
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from palomar.auth.penalty import AuthPenalty, PenaltyPolicy
from palomar.metrics.registry import Counter, Registry
from palomar.net.drain import Drain
from palomar.net.refusals import RefusalLog
from palomar.proxy.capabilities import SiteCapabilities
from palomar.proxy.fence import RelayedSessions
from palomar.proxy.hop_client import HopClient
from palomar.proxy.limits import ConnectionLimits
from palomar.proxy.penalty_link import LocalPenalty, Penalty
from palomar.proxy.workers import WorkerRole

log = logging.getLogger("palomar.proxy")


class ProxyMetrics:
    """The seed's proxy metrics plus a few of palomar's own."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.session_success: Counter = registry.counter(
            "proxy_session_success", "Sessions established to a backend (proxy_session_established)",
            ("dest_host",))
        self.session_failure: Counter = registry.counter(
            "proxy_session_failure",
            "Sessions that failed towards a backend, not counting auth temp failures and redirects",
            ("dest_host",))
        self.redirects: Counter = registry.counter(
            "proxy_session_redirected", "Referrals received from backends", ("dest_host",))
        self.established: Counter = registry.counter(
            "proxy_session_established", "Sessions established to a backend (Dovecot's @metric_defaults = proxy)",
            ("dest_host",))
        self.login_aborted: Counter = registry.counter(
            "login_aborted", "Client connections that ended before a session was established, by Dovecot's reason",
            ("reason",))
        self.auth_successes: Counter = registry.counter("auth_successes", "Successful passdb authentications")
        self.auth_failures: Counter = registry.counter("auth_failures", "Failed passdb authentications")
        self.sessions_finished: Counter = registry.counter(
            "proxy_session_finished", "Proxied sessions that ended", ("dest_host", "disconnect_side"))
        self.connections_refused: Counter = registry.counter(
            "proxy_connections_refused",
            "Connections refused at accept: client_limit, login_max_ip_connections, out of file descriptors",
            ("reason",))
        self.auth_penalty_delayed: Counter = registry.counter(
            "auth_penalty_delayed", "Logins held back by the escalating auth penalty before being checked")
        self.auth_penalty_seconds: Counter = registry.counter(
            "auth_penalty_delay_seconds", "Seconds logins were held back by the auth penalty, in total")
        self.auth_failure_disconnects: Counter = registry.counter(
            "auth_failure_disconnects", "Connections closed after login_max_auth_failures failed logins")


NOT_FAILURES = ("proxy_dest_auth_temp_failed", "proxy_dest_redirected")
"""The seed's proxy_session_failure filter excludes these error codes."""


@dataclass
class DestCounters:
    """Per-destination totals since this proxy started (written to proxy_dest_stats)."""

    values: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    dirty: set[str] = field(default_factory=set)
    gauges: set[str] = field(default_factory=set)
    """Keys that hold a current value (probe times, streaks) rather than a total."""

    def add(self, dest_host: str, key: str, amount: float = 1.0) -> None:
        self.values[dest_host][key] += amount
        self.dirty.add(dest_host)

    def set(self, dest_host: str, key: str, value: float) -> None:
        self.values[dest_host][key] = value
        self.gauges.add(key)
        self.dirty.add(dest_host)

    def type_of(self, key: str) -> str:
        return "gauge" if key in self.gauges else "counter"


@dataclass
class ProxyState:
    passdb: Any
    router: Any
    hops: HopClient
    metrics: ProxyMetrics
    site_id: UUID | None
    proxy_host: str = field(default_factory=socket.gethostname)
    tls: ssl.SSLContext | None = None
    allow_cleartext: bool = False
    auth_failure_delay: float = 2.0
    greeting: str = "palomar ready."
    haproxy_timeout: float = 3.0
    haproxy_trusted: tuple = ()
    login_timeout: float = 180.0
    recipient_delimiter: str = "+"
    login_trusted: tuple = ()
    """login_trusted_networks: peers that may forward the client's address (ID, XCLIENT); they are also
    exempt from login_max_ip_connections and the auth penalty."""
    imap_id_log: str = ""
    imap_id_retain: bool = False
    dest: DestCounters = field(default_factory=DestCounters)
    health: Any = None
    """`proxy.health.BackendHealth` when this proxy checks backends (cluster_proxy_check_backends)."""
    drain: Drain = field(default_factory=Drain)
    sessions: RelayedSessions = field(default_factory=RelayedSessions)
    """The relayed client sessions by backend host, so a backend's can be cut (proxy/fence.py)."""
    limits: ConnectionLimits = field(default_factory=lambda: ConnectionLimits({}, 0))
    penalty: Penalty = field(default_factory=lambda: LocalPenalty(AuthPenalty(PenaltyPolicy(0.0), max_entries=1,
                                                                              per_user=False)))
    """This process's table, or the proxy parent's when it runs workers (proxy/penalty_link.py)."""
    capabilities: SiteCapabilities = field(default_factory=SiteCapabilities)
    """The pre-login capability lists offered to clients, learnt from the site's backends."""
    doveadm_password: str = field(default="", repr=False)
    doveadm_api_key: str = field(default="", repr=False)
    """What doveadm clients of `service doveadm { inet_listener tcp }` authenticate with."""
    max_auth_failures: int = 0
    """login_max_auth_failures: failed logins after which a connection is closed (0: never)."""
    worker: WorkerRole = field(default_factory=WorkerRole)
    """Which worker process of the proxy this is (docs/design/proxy-workers.md)."""
    refusals: RefusalLog = field(init=False)

    def __post_init__(self) -> None:
        self.refusals = RefusalLog(metric=self.metrics.connections_refused)

    def count_success(self, dest_host: str, *, login: bool = True) -> None:
        """`login=False` for an LMTP leg: proxy_dest_stats count it, Dovecot's proxy_session_* events do not
        (its LMTP proxy reports recipients, as lmtp_rcpt_finished_*)."""
        if login:
            self.metrics.session_success.inc(dest_host=dest_host)
            self.metrics.established.inc(dest_host=dest_host)
        self.dest.add(dest_host, "session_success")

    def count_failure(self, dest_host: str, error_code: str, *, login: bool = True) -> None:
        if error_code in NOT_FAILURES:
            return
        if login:
            self.metrics.session_failure.inc(dest_host=dest_host)
        self.dest.add(dest_host, "session_failure")
        self.dest.add(dest_host, f"error_{error_code}")

    def count_redirect(self, dest_host: str) -> None:
        self.metrics.redirects.inc(dest_host=dest_host)
        self.dest.add(dest_host, "session_redirected")
