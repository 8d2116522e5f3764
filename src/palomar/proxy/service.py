"""`palomar proxy`: client-facing listeners, metrics, and the proxy_dest_stats writer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

from palomar.auth.cache import AuthCache
from palomar.auth.passdb import PassdbChain
from palomar.auth.penalty import AuthPenalty, PenaltyPolicy
from palomar.cluster.health import PROBE_GAUGES
from palomar.cluster.model import ProxyDestStat
from palomar.config import Config
from palomar.config.director_transition import transition_from_config
from palomar.config.settings import DOVEADM_HTTP_LISTENER
from palomar.geodb.guarded import GeoDBUnavailable
from palomar.metrics.http import serve_metrics_unix, serve_stats
from palomar.metrics.registry import Registry
from palomar.net.drain import drain_service
from palomar.net.hop_tls import hop_client_context, hop_server_context
from palomar.net.server import AcceptLoop, listen_socket
from palomar.protocols.prelogin_caps import CapabilitySettings
from palomar.proxy.capabilities import SiteCapabilities
from palomar.proxy.direct_client import DirectClient
from palomar.proxy.doveadm_frontend import serve_doveadm
from palomar.proxy.doveadm_http_frontend import serve_doveadm_http
from palomar.proxy.failures import WORDING
from palomar.proxy.fence import fence_loop
from palomar.proxy.hop_client import HopClient, split_host_port
from palomar.proxy.imap_frontend import ImapAdapter
from palomar.proxy.limits import QUEUE_FULL, ConnectionLimits
from palomar.proxy.lmtp_frontend import lmtp_handler, lmtp_hostname
from palomar.proxy.penalty_link import LocalPenalty, SharedPenalty
from palomar.proxy.pop3_frontend import Pop3Adapter
from palomar.proxy.probes import start_backend_checks, start_capability_learning
from palomar.proxy.router import Router
from palomar.proxy.session import serve
from palomar.proxy.sieve_frontend import SieveAdapter
from palomar.proxy.site_hop import handle_site_hop
from palomar.proxy.site_probes import SiteProber, reachability_windows
from palomar.proxy.state import ProxyMetrics, ProxyState
from palomar.proxy.submission_frontend import SubmissionAdapter
from palomar.proxy.workers import WorkerRole, per_worker_ip_limit, worker_metrics_address
from palomar.service_runtime import (
    geodb_available_gauge,
    open_geodb,
    open_localdb,
    reload_server_tls,
    server_tls_context,
    wait_for_stop_signal,
)

log = logging.getLogger("palomar.proxy")

SINGLE = WorkerRole()
"""The default: one proxy process, no parent."""


def inherited(sockets: dict[str, socket.socket] | None, key: str) -> socket.socket | None:
    """The socket the parent opened for `key`, or None when this process opens its own."""
    if sockets is None:
        return None
    try:
        return sockets.pop(key)
    except KeyError:
        raise RuntimeError(f"listener {key} was not opened by the parent process (was the configuration "
                           "changed after the proxy started? restart it)") from None

FRONTENDS = {
    "imap-login": ImapAdapter(),
    "pop3-login": Pop3Adapter(),
    "managesieve-login": SieveAdapter(),
    "submission-login": SubmissionAdapter(),
}
"""Client-facing services and the adapter that speaks each one's protocol."""


async def flush_dest_stats(state: ProxyState) -> None:
    """Each worker writes its own rows (`host`, `host/w1`, ...); only worker 0 probes periodically, so only
    its rows carry the probe gauges the controller's health rule reads (one view per proxy)."""
    if state.site_id is None or not state.dest.dirty:
        return
    rows = []
    row_host = state.proxy_host + state.worker.dest_host_suffix
    skipped = () if state.worker.primary else PROBE_GAUGES
    for dest_host in sorted(state.dest.dirty):
        for key, value in state.dest.values[dest_host].items():
            if key in skipped:
                continue
            rows.append(ProxyDestStat(state.site_id, dest_host, row_host, key, value, state.dest.type_of(key)))
    state.dest.dirty.clear()
    await state.router.geodb.proxy_dest_stats_put(rows)


async def _dest_stats_loop(state: ProxyState, interval: float) -> None:
    """Write the counters of destinations that changed, every `cluster_proxy_stats_interval`."""
    while True:
        await asyncio.sleep(interval)
        try:
            await flush_dest_stats(state)
        except GeoDBUnavailable as exc:  # the outage itself is logged once, by the guarded engine
            log.debug("writing proxy_dest_stats waits for the GeoDB: %s", exc)
        except Exception as exc:  # keep serving
            log.warning("writing proxy_dest_stats failed: %s", exc)


async def _refusal_summaries(state: ProxyState) -> None:
    """Every interval, one line for the connections refused since the last one."""
    while True:
        await asyncio.sleep(state.refusals.interval)
        line = state.refusals.flush()
        if line:
            log.warning(line)


def auth_cache(cfg: Config) -> AuthCache | None:
    """Dovecot's auth cache when `auth_cache_size` is set."""
    if not cfg["auth_cache_size"]:
        return None
    return AuthCache(cfg["auth_cache_size"], cfg["auth_cache_ttl"], cfg["auth_cache_negative_ttl"])


def direct_client(cfg: Config) -> DirectClient | None:
    """The direct path's client when `cluster_backend_path = direct` (IMAP and POP3 sessions; Submission and
    ManageSieve when their ports are set)."""
    if cfg["cluster_backend_path"] != "direct":
        return None
    return DirectClient({"imap": cfg["cluster_backend_direct_imap_port"],
                         "pop3": cfg["cluster_backend_direct_pop3_port"],
                         "submission": cfg["cluster_backend_direct_submission_port"],
                         "sieve": cfg["cluster_backend_direct_sieve_port"]},
                        master_user=cfg["cluster_backend_dovecot_master_user"],
                        master_password=cfg["cluster_backend_dovecot_master_password"],
                        connect_timeout=cfg["cluster_hop_connect_timeout"],
                        answer_timeout=cfg["cluster_hop_answer_timeout"], tls=hop_client_context(cfg))


async def build_state(cfg: Config, role: WorkerRole = SINGLE) -> ProxyState:
    registry = Registry(dovecot_prefix=cfg["metrics_prefix"])
    geodb = await open_geodb(cfg, on_change=geodb_available_gauge(registry, "proxy routes from its cache"))
    localdb = open_localdb(cfg)
    router = Router(geodb, localdb, site_name=cfg["cluster_local_site"],
                    group_count=cfg["cluster_default_group_count"], max_stale=cfg["cluster_geodb_stale_max"],
                    director=transition_from_config(cfg))
    site = await geodb.site_get_by_name(cfg["cluster_local_site"])
    secret = cfg["cluster_hop_secret"]
    if not secret:
        raise RuntimeError("cluster_hop_secret is not set")
    return ProxyState(
        passdb=PassdbChain.from_settings(cfg.passdbs, username_format=cfg["auth_username_format"],
                                         cache=auth_cache(cfg)),
        router=router,
        hops=HopClient(secret.encode(), cfg["cluster_hop_port"], tls=hop_client_context(cfg),
                       connect_timeout=cfg["cluster_hop_connect_timeout"],
                       answer_timeout=cfg["cluster_hop_answer_timeout"], spares=True),
        direct=direct_client(cfg),
        metrics=ProxyMetrics(registry),
        site_id=site.id if site else None,
        tls=server_tls_context(cfg),
        # Dovecot's ssl = required: no password without TLS, whatever auth_allow_cleartext says
        allow_cleartext=cfg["auth_allow_cleartext"] and cfg["ssl"] != "required",
        auth_failure_delay=cfg["auth_failure_delay"],
        greeting=cfg["login_greeting"],
        haproxy_timeout=cfg["haproxy_timeout"],
        haproxy_trusted=tuple(cfg["haproxy_trusted_networks"]),
        proxy_host=cfg["hostname"] or socket.gethostname(),
        login_trusted=tuple(cfg["login_trusted_networks"]),
        limits=ConnectionLimits({name: service.client_limit for name, service in cfg.services.items()},
                                per_worker_ip_limit(cfg["login_max_ip_connections"], role.count),
                                setting=cfg["login_max_ip_connections"]),
        worker=role,
        penalty=LocalPenalty(penalty_table(cfg)),
        max_auth_failures=cfg["login_max_auth_failures"],
        doveadm_password=cfg["doveadm_password"],
        doveadm_api_key=cfg["doveadm_api_key"],
        recipient_delimiter=cfg["recipient_delimiter"],
        imap_id_log=cfg["imap_id_log"],
        imap_id_retain=cfg["imap_id_retain"],
        capabilities=SiteCapabilities(CapabilitySettings.from_config(cfg)),
    )


SITE_LISTENER = "site"
"""The key of the site hop listener among a proxy's listening sockets."""


def listener_key(service: str, listener: str, address: str, port: int) -> str:
    """How a worker finds the socket its parent opened for a listener (docs/design/proxy-workers.md)."""
    return f"{service}/{listener}/{address}/{port}"


def _site_address(address: str) -> tuple[str, int]:
    host, port = split_host_port(address, 0)
    if not port:
        raise RuntimeError(f"cluster_proxy_site_listen = {address}: give ADDRESS:PORT")
    return host, port


def _client_listeners(cfg: Config) -> Iterator[tuple[str, Any, str]]:
    """(service name, listener, address) of every client-facing listening socket, in start order."""
    for service_name in [*FRONTENDS, "lmtp", "doveadm"]:
        service = cfg.services.get(service_name)
        if service is None:
            continue
        for listener in service.listeners.values():
            for address in listener.bind_addresses():
                yield service_name, listener, address


def open_listeners(cfg: Config) -> dict[str, socket.socket]:
    """Every listening socket of the proxy, by `listener_key`: what a parent opens once for its workers."""
    sockets: dict[str, socket.socket] = {}
    try:
        for service_name, listener, address in _client_listeners(cfg):
            sockets[listener_key(service_name, listener.name, address, listener.port)] = \
                listen_socket(address, listener.port)
        if cfg["cluster_proxy_site_listen"]:
            sockets[SITE_LISTENER] = listen_socket(*_site_address(cfg["cluster_proxy_site_listen"]))
    except OSError:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


def start_site_listener(state: ProxyState, address: str, tls, sock: socket.socket | None = None) -> AcceptLoop:
    """The listener for logins relayed by other sites' proxies (proxy/site_hop.py)."""
    host, port = _site_address(address)
    loop = AcceptLoop(sock or listen_socket(host, port), partial(handle_site_hop, state, tls))
    loop.start()
    log.info("site hop listener on %s:%d%s", host, port, " (ssl)" if tls else "")
    return loop


def penalty_table(cfg: Config) -> AuthPenalty:
    """The auth penalty table of a proxy: in the process, or in the parent of its workers."""
    return AuthPenalty(PenaltyPolicy(cfg["auth_penalty_max_delay"]), max_entries=cfg["auth_penalty_max_sources"],
                       per_user=cfg["auth_penalty_per_user"])


async def run_proxy(cfg: Config, *, ready: asyncio.Event | None = None,
                    sockets: dict[str, socket.socket] | None = None, role: WorkerRole = SINGLE,
                    penalty_link: socket.socket | None = None) -> None:
    """One proxy process: the only one (the default), or worker `role` of a parent that opened `sockets`
    and holds the auth penalty table at the other end of `penalty_link`."""
    state = await build_state(cfg, role)
    if penalty_link is not None:
        state.penalty = await SharedPenalty.connect(penalty_link, penalty_table(cfg))
    site_listen = cfg["cluster_proxy_site_listen"]
    site_tls = hop_server_context(cfg) if site_listen else None  # a missing certificate stops the start here
    await state.passdb.warm()  # a large passwd-file is indexed before the first client arrives
    loops: list[AcceptLoop] = []
    for service_name, listener, address in _client_listeners(cfg):
        adapter = FRONTENDS.get(service_name)
        sock = inherited(sockets, listener_key(service_name, listener.name, address, listener.port)) \
            or listen_socket(address, listener.port)
        if service_name == "doveadm":
            serve_one = serve_doveadm_http if listener.name == DOVEADM_HTTP_LISTENER else serve_doveadm
            handler = partial(serve_one, state, haproxy=listener.haproxy, ssl=listener.ssl)
            busy = b""  # Dovecot's doveadm has no refusal line either
        elif adapter is None:
            handler = lmtp_handler(state, cfg, listener)
            busy = WORDING["lmtp"].bye(lmtp_hostname(state.proxy_host), QUEUE_FULL)
        else:
            handler = partial(serve, state, service=service_name, adapter=adapter, haproxy=listener.haproxy,
                              ssl=listener.ssl)
            busy = WORDING[adapter.protocol].bye(state.proxy_host, QUEUE_FULL)
        # out of descriptors: the refusal line in plain text, never on an implicit-TLS port
        loop = AcceptLoop(sock, handler, busy_reply=b"" if listener.ssl else busy, refusals=state.refusals)
        loop.start()
        loops.append(loop)
        log.info("%s listener %s on %s:%d%s%s", service_name, listener.name, address, listener.port,
                 " (haproxy)" if listener.haproxy else "", " (ssl)" if listener.ssl else "")
    if site_listen:
        loops.append(start_site_listener(state, site_listen, site_tls, inherited(sockets, SITE_LISTENER)))
    if role.count > 1:  # the parent serves the port and adds up the workers (docs/design/proxy-workers.md)
        metrics_servers = [await serve_metrics_unix(state.metrics.registry, worker_metrics_address(os.getppid(), role.index))]
    else:
        metrics_servers = await serve_stats(cfg, state.metrics.registry)
    flusher = asyncio.get_running_loop().create_task(_dest_stats_loop(state, cfg["cluster_proxy_stats_interval"]))
    summaries = asyncio.get_running_loop().create_task(_refusal_summaries(state))
    checks = start_backend_checks(state, cfg, periodic=role.primary)
    learning = start_capability_learning(state, cfg)
    fence = asyncio.get_running_loop().create_task(fence_loop(state.sessions, state.router))
    site_probes = (asyncio.get_running_loop().create_task(SiteProber(state, reachability_windows(cfg)).loop())
                   if role.primary else None)
    log.info("proxy started at %s for site %s", time.strftime("%Y-%m-%dT%H:%M:%S"), cfg["cluster_local_site"])
    if ready is not None:
        ready.set()
    try:
        await wait_for_stop_signal(partial(reload_server_tls, state.tls, cfg))
        await drain_service(loops, state.drain, state.sessions.all())
    finally:
        flusher.cancel()
        fence.cancel()
        if site_probes is not None:
            site_probes.cancel()
        learning.cancel()
        summaries.cancel()
        if checks is not None:
            checks.cancel()
        with contextlib.suppress(Exception):
            await flush_dest_stats(state)
        state.hops.close_spares()
        for accept_loop in loops:
            await accept_loop.close()
        for server in metrics_servers:
            server.close()
        await state.router.geodb.close()
        with contextlib.suppress(Exception):
            await state.passdb.aclose()
        log.info("proxy stopped")
