"""`palomar controller`: the per-site automation loop. Thin: read a snapshot, `decide`, act, log.

One controller runs per site (`cluster_local_site`). Every `controller_interval` it reads its
site from the GeoDB and runs the enabled features. A GeoDB error never stops it: the tick is
logged as failed, the connection is dropped and reopened on the next tick. It keeps no state
that matters across restarts (everything it decides from is in the GeoDB), so it can be
restarted at any time; the only memory is which dryrun decisions were already logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from palomar.cluster.health import HealthRule
from palomar.config import Config
from palomar.controller.decide import Action, ControllerRules, plan
from palomar.controller.events import event_line
from palomar.controller.http import serve_http
from palomar.controller.metrics import ControllerMetrics
from palomar.controller.recent import DecisionRecord, Recent
from palomar.controller.snapshot import read_snapshot
from palomar.geodb.repository import GeoDB
from palomar.metrics.http import serve_stats
from palomar.metrics.registry import Registry
from palomar.service_runtime import open_geodb, stop_signal

log = logging.getLogger("palomar.controller")


def rules_from_config(cfg: Config) -> ControllerRules:
    return ControllerRules(
        health=HealthRule(
            min_consecutive=int(cfg["controller_health_min_probe_successes"]),
            quiet_secs=float(cfg["controller_health_quiet_time"]),
            min_proxies=int(cfg["controller_health_min_proxies"]),
        )
    )


class Controller:
    """One site's controller; `tick()` is one evaluation and never raises for GeoDB trouble."""

    def __init__(
        self,
        open_db: Callable[[], Awaitable[GeoDB]],
        site_name: str,
        rules: ControllerRules,
        metrics: ControllerMetrics,
        *,
        clock: Callable[[], float] = time.time,
        recent: Recent | None = None,
    ) -> None:
        self._open_db = open_db
        self.site_name = site_name
        self.rules = rules
        self.metrics = metrics
        self.clock = clock
        self.recent = recent if recent is not None else Recent()
        """Load samples and decisions for the web UI and the API."""
        self.db: GeoDB | None = None
        self._logged_dryruns: set[tuple[str, str, int | None, str]] = set()
        self._last_problem: str | None = None

    async def close(self) -> None:
        db, self.db = self.db, None
        if db is not None:
            with contextlib.suppress(Exception):
                await db.close()

    def _problem(self, message: str) -> None:
        """Log a problem once while it persists, not on every tick."""
        if message != self._last_problem:
            log.warning("%s", message)
            self._last_problem = message

    async def tick(self) -> bool:
        """Evaluate once. True when the site was read and every action was handled."""
        started = time.monotonic()
        try:
            if self.db is None:
                self.db = await self._open_db()
            snapshot = await read_snapshot(self.db, self.site_name, self.clock())
            if snapshot is None:
                self._problem(event_line("controller_site_missing", site=self.site_name))
                self.metrics.ticks.inc(result="no-site")
                return False
            self.metrics.observe(snapshot)
            self.recent.sample(snapshot.now, snapshot.backends, await self.db.backend_stats_list(snapshot.site.id))
            actions, held = plan(snapshot, self.rules)
            for item in held:
                log.debug("%s", event_line("controller_hold", feature=item.feature, backend=item.host,
                                           reason=item.reason))
            for action in actions:
                await self._handle(action, snapshot.site.name)
        except Exception as exc:  # any GeoDB/engine failure: log, reconnect next tick, keep running
            self._problem(event_line("controller_geodb_error", site=self.site_name,
                                     error=f"{type(exc).__name__}: {exc}"))
            self.metrics.ticks.inc(result="error")
            await self.close()
            return False
        if self._last_problem is not None:
            log.info("%s", event_line("controller_recovered", site=self.site_name))
            self._last_problem = None
        self.metrics.ticks.inc(result="ok")
        log.debug("%s", event_line("controller_tick", site=self.site_name, backends=len(snapshot.backends),
                                   actions=len(actions), ms=round((time.monotonic() - started) * 1000)))
        return True

    def _remember(self, action: Action, *, executed: bool) -> None:
        self.recent.decided(DecisionRecord(self.clock(), action.feature, action.state, action.backend.host,
                                           action.kind, action.reason, executed))

    async def _handle(self, action: Action, site_name: str) -> None:
        backend = action.backend
        if not action.execute:
            key = (action.feature, str(backend.id), backend.status_changed_us, action.kind)
            if key not in self._logged_dryruns:
                self._logged_dryruns.add(key)
                self.metrics.decided(action)
                self._remember(action, executed=False)
                log.info("%s", event_line("controller_dryrun", feature=action.feature, site=site_name,
                                          backend=backend.host, would=f"set status {action.status}",
                                          reason=action.reason))
            return
        assert self.db is not None
        # The snapshot may be seconds old: act only if nobody (an administrator above all)
        # changed the status since, so the controller never overrides a newer decision.
        fresh = await self.db.backend_get(backend.site_id, backend.id)
        if fresh is None or (fresh.status, fresh.status_reason, fresh.status_changed_us) != (
            backend.status, backend.status_reason, backend.status_changed_us
        ):
            log.info("%s", event_line("controller_skipped", feature=action.feature, backend=backend.host,
                                      reason="status changed since the snapshot"))
            return
        await self.db.backend_set_status(backend.site_id, backend.id, action.status, action.reason)
        self.metrics.decided(action)
        self._remember(action, executed=True)
        log.info("%s", event_line("cluster_backend_status_changed", backend=backend.host,
                                  backend_id=backend.id, site=site_name, status=action.status,
                                  previous=backend.status, reason=action.reason, feature=action.feature))


async def run_controller(cfg: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT: tick every `controller_interval`, serve metrics if configured."""
    site_name = cfg["cluster_local_site"]
    if not site_name:
        raise RuntimeError("cluster_local_site is not set: a controller manages exactly one site")
    interval = float(cfg["controller_interval"])
    if interval <= 0:
        raise RuntimeError("controller_interval must be greater than zero")
    registry = Registry(dovecot_prefix=cfg["metrics_prefix"])
    controller = Controller(lambda: open_geodb(cfg), site_name, rules_from_config(cfg),
                            ControllerMetrics(registry))
    servers = await serve_stats(cfg, registry)
    try:
        http = await serve_http(cfg, controller.recent, lambda: open_geodb(cfg))
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None
    stop = stop_signal()
    log.info("%s", event_line("controller_started", site=site_name, interval=f"{interval:g}s"))
    if ready is not None:
        ready.set()
    try:
        while not stop.done():
            await controller.tick()
            await asyncio.wait({stop}, timeout=interval)
    finally:
        await controller.close()
        if http is not None:
            await http[0].cleanup()
            await http[1].close()
        for server in servers:
            server.close()
        log.info("%s", event_line("controller_stopped", site=site_name))
