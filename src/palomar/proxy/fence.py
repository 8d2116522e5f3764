"""Fencing on the proxy: cut every relayed session of a backend that is not online any more.

A backend that stalls (SIGSTOP, a hung host, a partition) keeps its TCP connections. When it
resumes, it or its Dovecot answers whatever commands the clients sent meanwhile, although its
groups failed over and the users may already be logged in on the alternate. The stalled side
can do nothing about that, but the proxy is not stalled: it closes both sides of the relay,
so nothing the old backend says afterwards reaches a client. See docs/design/health.md.

Two triggers: this proxy taking the backend offline (`BackendHealth`, before the failing login
is routed again), and every other status change, seen within `FENCE_INTERVAL` plus the router's
site-view cache time (`fence_loop`).

Sessions relayed to another site's load balancer are not this site's to fence by backend status,
but when this site's reachability row calls that site unreachable they are cut too, and so are
the sessions that site's proxies relayed here: on a link that drops packets silently they would
otherwise hang until TCP gives up (minutes), while their users can already be served in the
failover site (docs/design/multi-site.md, "A silent partition").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

from palomar.net.relay import Relay

log = logging.getLogger("palomar.proxy.fence")

FENCE_INTERVAL = 1.0
"""Seconds between checks of the backends this proxy relays sessions to."""


class RelayedSessions:
    """The client sessions this proxy relays, by backend host."""

    def __init__(self) -> None:
        self.by_host: dict[str, set[Relay]] = {}
        self.remote: set[str] = set()
        """Hosts that are other sites' load balancers: their backends are not this site's to fence."""
        self.origin: dict[Relay, UUID] = {}
        """Sessions another site's proxy relayed here (site hops): the site they came from."""
        self.from_site: dict[UUID, set[Relay]] = {}
        """The same sessions by the site they came from: cutting one site touches only its sessions."""

    def add(self, host: str, relay: Relay, *, remote: bool = False, origin: UUID | None = None) -> None:
        self.by_host.setdefault(host, set()).add(relay)
        if remote:
            self.remote.add(host)
        if origin is not None:
            self.origin[relay] = origin
            self.from_site.setdefault(origin, set()).add(relay)

    def remove(self, host: str, relay: Relay) -> None:
        origin = self.origin.pop(relay, None)
        if origin is not None:
            self.from_site.get(origin, set()).discard(relay)
        relays = self.by_host.get(host)
        if relays is not None:
            relays.discard(relay)
            if not relays:
                del self.by_host[host]

    def all(self) -> list[Relay]:
        """Every relayed session (a stop ends each with its protocol's shutdown line)."""
        return [relay for relays in self.by_host.values() for relay in relays]

    def count(self, host: str) -> int:
        return len(self.by_host.get(host, ()))

    def cut(self, host: str, reason: str) -> int:
        """Abort every session relayed to `host`, both sides at once; returns how many."""
        relays = self.by_host.pop(host, set())
        for relay in relays:
            relay.close(by="proxy", abort=True)
        if relays:
            log.warning("event=proxy_sessions_cut backend_host=%s sessions=%d reason=%r", host, len(relays), reason)
        return len(relays)

    def cut_from(self, site_id: UUID, reason: str) -> int:
        """Abort every session relayed here from site `site_id`; returns how many."""
        relays = list(self.from_site.pop(site_id, ()))
        for relay in relays:
            relay.close(by="proxy", abort=True)  # its end callback removes it
        if relays:
            log.warning("event=proxy_sessions_cut from_site=%s sessions=%d reason=%r", site_id, len(relays), reason)
        return len(relays)


def cut_unavailable(sessions: RelayedSessions, view: Any) -> int:
    """Cut the sessions of every backend `view` (a SiteView) does not show online; returns how many."""
    cut = 0
    for host in list(sessions.by_host):
        if host in sessions.remote:
            continue
        backend = view.backend_by_host(host)
        if backend is None or not backend.online:
            cut += sessions.cut(host, f"backend is {backend.status if backend else 'not in the site'}")
    return cut


def cut_unreachable_sites(sessions: RelayedSessions, state: Any) -> int:
    """Cut the sessions relayed to the load balancer of every site `state` (a SiteState) calls
    unreachable, and those relayed here from such a site; returns how many."""
    cut = 0
    for site in state.sites:
        if site.id not in state.unreachable:
            continue
        why = f"site {site.name} is unreachable"
        if site.load_balancer in sessions.remote:
            cut += sessions.cut(site.load_balancer, why)
        cut += sessions.cut_from(site.id, why)
    return cut


async def fence_loop(sessions: RelayedSessions, router: Any, interval: float = FENCE_INTERVAL) -> None:
    """Every `interval`, cut the sessions of backends the GeoDB no longer shows online (someone
    else set them offline or standby, or removed them), and those relayed to unreachable sites."""
    while True:
        await asyncio.sleep(interval)
        if not sessions.by_host:
            continue
        try:
            view = await router.site_view()
        except Exception as exc:  # the GeoDB may be briefly unreachable: keep the sessions, try again
            log.warning("checking the backends of relayed sessions failed: %s", exc)
            continue
        if view is None:
            continue
        cut_unavailable(sessions, view)
        if sessions.remote or sessions.origin:
            try:
                cut_unreachable_sites(sessions, await router.site_state(view.site.id))
            except Exception as exc:  # as above
                log.warning("checking the sites of relayed sessions failed: %s", exc)
