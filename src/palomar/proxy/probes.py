"""Probes: the proxy logs in to one specific backend with that backend's test login.

A probe takes the same way as a user's IMAP session (passdb, then the hop, or with
`cluster_backend_path = direct` the backend's Dovecot listener and its login check; the backend's
Dovecot login), so it fails for the same reasons a user's login would, and it goes to the named backend
without routing: the backend always owns its own test user. Every backend of the site is
probed once at start-up, offline ones every `cluster_proxy_probe_interval`, and a backend
whose session just failed right away (the confirmation the threshold rule asks for).

Results land in proxy_dest_stats (`probe_*`), in metrics, and in the failure streaks. A
probe never sets a backend online: that is the controller's decision.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

from palomar.auth.passdb import AuthRequest
from palomar.cluster.ownership import expand_test_username
from palomar.proxy.capabilities import learn_capabilities
from palomar.proxy.direct_client import DirectClient
from palomar.proxy.hop_client import HopClient, HopFailed, HopTarget
from palomar.proxy.state import ProxyState

log = logging.getLogger("palomar.proxy.health")

LOGOUT_TAG = b"P1"


@dataclass(frozen=True)
class ProbeResult:
    host: str
    error_code: str | None = None
    """None when the test user logged in and out."""
    error: str = ""
    counted: bool = True
    """False when the probe could not even start (the proxy's own passdb refused the test login)."""

    @property
    def ok(self) -> bool:
        return self.error_code is None


class Prober:
    """Runs probes for one proxy; at most one probe per backend host at a time."""

    def __init__(self, state: ProxyState, *, username: str, password: str, hops: HopClient | DirectClient,
                 timeout: float, source_ip: str = "127.0.0.1") -> None:
        self.state = state
        self.username = username
        self._password = password
        self.hops = hops
        """How an IMAP session reaches a backend: the hop, or the direct path's client."""
        self.timeout = timeout
        self.source_ip = source_ip
        self._running: dict[str, asyncio.Task[tuple[ProbeResult, bool]]] = {}
        self.probes = state.metrics.registry.counter(
            "proxy_backend_probes", "Test logins to backends, by result (ok or failed)", ("dest_host", "result"))

    def __repr__(self) -> str:
        return f"Prober(username={self.username!r}, timeout={self.timeout})"

    async def probe(self, host: str) -> ProbeResult:
        return (await self._shared(host))[0]

    async def confirm(self, host: str) -> bool:
        """The health module's confirmation probe: True when it took `host` offline."""
        return (await self._shared(host))[1]

    async def _shared(self, host: str) -> tuple[ProbeResult, bool]:
        task = self._running.get(host)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._probe_and_record(host))
            self._running[host] = task
            task.add_done_callback(lambda _: self._running.pop(host, None))
        return await asyncio.shield(task)

    async def _probe_and_record(self, host: str) -> tuple[ProbeResult, bool]:
        try:
            async with asyncio.timeout(self.timeout):
                result = await self._login_logout(host)
        except TimeoutError:
            result = ProbeResult(host, "probe_timeout", f"no answer within {self.timeout:g}s")
        if not result.counted:
            log.warning("event=cluster_backend_check_finished backend_host=%s status=skipped error=%r",
                        host, result.error)
            return result, False
        self._record(result)
        offline = False
        if self.state.health is not None:
            offline = await self.state.health.probe_finished(host, result.error_code)
        return result, offline

    def _record(self, result: ProbeResult) -> None:
        dest, host, now = self.state.dest, result.host, time.time()
        if result.ok:
            dest.add(host, "probe_success")
            dest.set(host, "probe_last_success", now)
            dest.set(host, "probe_consecutive_success", dest.values[host]["probe_consecutive_success"] + 1)
            log.info("event=cluster_backend_check_finished backend_host=%s status=ok", host)
        else:
            self.state.capabilities.forget(host)  # asked again once it answers: it may come back changed
            dest.add(host, "probe_failure")
            dest.set(host, "probe_last_failure", now)
            dest.set(host, "probe_consecutive_success", 0)
            log.warning("event=cluster_backend_check_finished backend_host=%s status=failed error=%s reason=%r",
                        host, result.error_code, result.error)
        self.probes.inc(dest_host=host, result="ok" if result.ok else "failed")

    async def _login_logout(self, host: str) -> ProbeResult:
        user = expand_test_username(self.username, host)
        auth = await self.state.passdb.authenticate(AuthRequest(
            username=user, password=self._password, service="imap", remote_ip=self.source_ip,
            local_ip=self.source_ip, secured=True, backend_host=host))
        if auth.status != "ok":
            return ProbeResult(host, "probe_auth", f"passdb: test login {user} {auth.status}", counted=False)
        target = HopTarget(user=auth.user, protocol="imap", session_id=f"probe-{secrets.token_hex(6)}",
                           client=(self.source_ip, 0), local=(self.source_ip, 0), client_tls=True)
        outcome = await self.hops.connect(host, target)
        if isinstance(outcome, HopFailed):
            return ProbeResult(host, outcome.error_code, outcome.text)
        link = outcome.link
        try:
            if outcome.host != host:
                return ProbeResult(host, "proxy_dest_redirected", f"referred to {outcome.host}")
            link.write(LOGOUT_TAG + b" LOGOUT\r\n")
            buffer = outcome.leftover
            while True:
                for line in buffer.split(b"\r\n")[:-1]:
                    if line.startswith(LOGOUT_TAG + b" "):
                        ok = line[len(LOGOUT_TAG) + 1:].upper().startswith(b"OK")
                        return ProbeResult(host) if ok else ProbeResult(host, "probe_logout_failed",
                                                                        line.decode(errors="replace"))
                data = await link.read()
                if not data:
                    return ProbeResult(host, "proxy_dest_remote_failure", "connection closed before LOGOUT")
                buffer += data
        finally:
            link.close()


async def run_probes(prober: Prober, interval: float) -> None:
    """Probe every backend of the site once, then the offline ones every `interval` seconds."""
    state = prober.state
    first = True
    while True:
        try:
            view = await state.router.site_view()
            backends = view.backends if view is not None else ()
            hosts = [b.host for b in backends if first or b.status == "offline"]
            await asyncio.gather(*(prober.probe(h) for h in hosts))
        except Exception as exc:  # the GeoDB may be briefly unreachable: try again next round
            log.warning("probing backends failed: %s", exc)
        first = False
        await asyncio.sleep(interval)


def hop_source_ip(cfg) -> str:
    """The address this proxy's own hops (probes, capability queries) name as their client."""
    listen = [a for a in cfg["listen"] if a not in ("*", "::")]
    return listen[0] if listen and ":" not in listen[0] else "127.0.0.1"


def start_capability_learning(state: ProxyState, cfg) -> asyncio.Task[None]:
    """Learn the site's pre-login capabilities (proxy/capabilities.py), whether or not backends are checked."""
    timeout = cfg["cluster_proxy_probe_timeout"]
    return asyncio.get_running_loop().create_task(learn_capabilities(
        state.capabilities, state.router, state.hops.with_timeout(timeout), cfg["cluster_proxy_probe_interval"],
        hop_source_ip(cfg)))


def start_backend_checks(state: ProxyState, cfg, *, periodic: bool = True) -> asyncio.Task[None] | None:
    """With `cluster_proxy_check_backends = yes`: failure accounting, offline marking and probes.

    Returns the probe loop's task (cancel it at shutdown), or None when checks are off or not `periodic`
    (the workers of a proxy but the first: they confirm their own session failures with a probe, while
    the periodic probes run once per proxy, not once per worker).
    """
    from palomar.cluster.health_proxy import ThresholdRule
    from palomar.proxy.health import BackendHealth

    if not cfg["cluster_proxy_check_backends"]:
        log.info("backend checks off (cluster_proxy_check_backends = no): never setting backends offline")
        return None
    rule = ThresholdRule(max(1, cfg["cluster_proxy_offline_failures"]), cfg["cluster_proxy_offline_window"])
    health = BackendHealth(geodb=state.router.geodb, router=state.router, site_id=state.site_id,
                           proxy_host=state.proxy_host, rule=rule, registry=state.metrics.registry,
                           sessions=state.sessions)
    state.health = health
    username = cfg["cluster_backend_test_username"]
    if not username:
        log.warning("cluster_backend_test_username is not set: no probes, offline marking from sessions only")
        return None
    timeout = cfg["cluster_proxy_probe_timeout"]
    direct = state.direct if state.direct is not None and state.direct.serves("imap") else None
    prober = Prober(state, username=username, password=cfg["cluster_backend_test_password"] or "",
                    hops=(direct or state.hops).with_timeout(timeout), timeout=timeout, source_ip=hop_source_ip(cfg))
    health.confirm = prober.confirm
    if not periodic:
        return None
    return asyncio.get_running_loop().create_task(run_probes(prober, cfg["cluster_proxy_probe_interval"]))
