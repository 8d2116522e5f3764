"""A proxy's view of backend health: feed session and probe outcomes to the threshold rule
(`cluster.health_proxy`) and set a backend offline in the GeoDB when it fires.

Only built when `cluster_proxy_check_backends = yes`. The proxy only ever writes `offline`,
and only over `online`: a backend an administrator or the controller set to something else
is left alone, and bringing a backend back is the controller's decision (it reads the probe
statistics this proxy writes). Whenever it finds a backend not online, the sessions this proxy
relays to it are cut first (proxy/fence.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from palomar.cluster.health_proxy import (
    Confirm,
    FailureStreak,
    Offline,
    Outcome,
    ThresholdRule,
    Verdict,
    observe,
)
from palomar.metrics.registry import Registry
from palomar.proxy.fence import RelayedSessions

log = logging.getLogger("palomar.proxy.health")

Confirmer = Callable[[str], Awaitable[bool]]
"""Probes a backend host now; True when that probe took the backend offline."""


class BackendHealth:
    """Failure streaks per backend host of this proxy's site, and the offline marking."""

    def __init__(
        self,
        *,
        geodb: Any,
        router: Any,
        site_id: UUID | None,
        proxy_host: str,
        rule: ThresholdRule,
        registry: Registry,
        sessions: RelayedSessions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.geodb = geodb
        self.sessions = sessions
        """This proxy's relayed sessions: a backend that is not online any more has them cut."""
        self.router = router
        self.site_id = site_id
        self.proxy_host = proxy_host
        self.rule = rule
        self.clock = clock
        self.streaks: dict[str, FailureStreak] = {}
        self.confirm: Confirmer | None = None
        """Set by the prober: how a first session failure gets its confirmation probe."""
        self._marking: dict[str, asyncio.Task[bool]] = {}
        self.marked_offline = registry.counter(
            "proxy_backends_marked_offline", "Backends this proxy set offline", ("dest_host",))

    def _observe(self, host: str, outcome: Outcome) -> Verdict:
        streak, verdict = observe(self.streaks.get(host, FailureStreak()), outcome, self.rule)
        if streak.failures:
            self.streaks[host] = streak
        else:
            self.streaks.pop(host, None)
        return verdict

    def session_succeeded(self, host: str) -> None:
        self._observe(host, Outcome(self.clock()))

    async def session_failed(self, host: str, error_code: str) -> bool:
        """Account a failed session; True when `host` is not online any more (re-route the login)."""
        verdict = self._observe(host, Outcome(self.clock(), error_code))
        if isinstance(verdict, Confirm) and self.confirm is not None:
            return await self.confirm(host)
        if isinstance(verdict, Offline):
            return await self.take_offline(host, verdict.reason)
        return False

    async def probe_finished(self, host: str, error_code: str | None) -> bool:
        """Account a probe (None: it logged in and out); True when it took the backend offline."""
        verdict = self._observe(host, Outcome(self.clock(), error_code, probe=True))
        if isinstance(verdict, Offline):
            return await self.take_offline(host, verdict.reason)
        return False

    async def take_offline(self, host: str, reason: str) -> bool:
        """Set `host` offline if it is online; True unless it is (still) online afterwards.

        Concurrent failures of one backend share one GeoDB read and write.
        """
        task = self._marking.get(host)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._take_offline(host, reason))
            self._marking[host] = task
            task.add_done_callback(lambda _: self._marking.pop(host, None))
        return await asyncio.shield(task)

    async def _take_offline(self, host: str, reason: str) -> bool:
        if self.site_id is None:
            return False
        try:
            backends = await self.geodb.backend_list(self.site_id)
        except Exception as exc:  # the GeoDB may be briefly unreachable: keep serving
            log.warning("event=cluster_backend_check_finished backend_host=%s status=unknown "
                        "error=%r (reading the GeoDB failed)", host, str(exc))
            return False
        backend = next((b for b in backends if b.host == host), None)
        if backend is None:
            return False
        if backend.status != "online":
            self.router.invalidate_site_view()
            self._fence(host, f"backend is {backend.status}")
            return True
        status_reason = f"proxy {self.proxy_host}: {reason}"
        try:
            await self.geodb.backend_set_status(self.site_id, backend.id, "offline", status_reason)
        except Exception as exc:
            log.warning("event=cluster_backend_check_finished backend_id=%s backend_host=%s status=online "
                        "error=%r (writing the status failed)", backend.id, host, str(exc))
            return False
        self.router.invalidate_site_view()
        self.marked_offline.inc(dest_host=host)
        log.warning("event=cluster_backend_check_finished backend_id=%s backend_host=%s status=offline "
                    "reason=%r", backend.id, host, status_reason)
        self._fence(host, "set offline by this proxy")
        return True

    def _fence(self, host: str, reason: str) -> None:
        """Before any login of the backend's users goes elsewhere, its relayed sessions end here."""
        if self.sessions is not None:
            self.sessions.cut(host, reason)
