"""The I/O around the pure routing rules: read the GeoDB through the LocalDB cache, decide
with `cluster.routing.route_login` (site selection, then group -> backend), perform the writes
the decision asks for.

Stale cache entries are safe: the backend re-checks ownership and refers the proxy on,
so a short cache lifetime only trades GeoDB reads for an occasional extra hop.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from palomar.cluster import codec
from palomar.cluster.cache_lifetime import group_cache_lifetime
from palomar.cluster.director_transition import DirectorTransition
from palomar.cluster.model import Group, GroupSite, Site, SiteView, User, UserSite
from palomar.cluster.routing import LoginDecision, OtherSite, Routed, Unavailable, group_of, route_login
from palomar.cluster.site_selection import SiteChoice, SiteState, home_site, select_site
from palomar.cluster.stale import CachedEntry, usable_when_stale
from palomar.geodb.guarded import GeoDBUnavailable
from palomar.geodb.repository import GeoDB

log = logging.getLogger("palomar.proxy")

MAX_RACE_RETRIES = 3
DECODED_LIMIT = 10_000
"""Decoded cache values kept per process (the site view and the groups: a bounded set)."""


USER_SITES_MEMO = 100_000
"""(user, site) -> backend pairs a proxy process remembers having written to `user_sites`."""


@dataclass(frozen=True)
class RouteResult:
    host: str | None
    reason: str = ""
    group: str | None = None
    site: Site | None = None
    """Set when the user is served in another site: relay the login to its load balancer."""


class RoutingReads(Protocol):
    """The reads the routing rule needs beyond the user and the sites (cached or fresh)."""

    async def group(self, site_id: UUID, name: str) -> Group | None: ...

    async def group_site(self, group_name: str, site_id: UUID) -> GroupSite | None: ...


async def decide_login(reads: RoutingReads, username: str, user: User | None, state: SiteState,
                       local_view: SiteView, *, group_count: int, now: float,
                       passdb_host: str | None = None, director: DirectorTransition | None = None) -> LoginDecision:
    """Read the rows `route_login` needs and call it: the proxy and `cluster user access` both
    route through here, so they cannot disagree about where a user goes."""
    home_group = group_of(username, user, group_count)
    home, _ = home_site(user, state)
    group_site = await reads.group_site(home_group, home.id) if home is not None else None
    choice = select_site(username, user, home_group, group_site, state)
    groups: dict[str, Group] = {}
    if isinstance(choice, SiteChoice) and choice.site.id == state.local_site_id:
        at_home = choice.site.id == choice.home.id
        name = group_of(username, user, group_count, local_view, director) if at_home else choice.group_name
        group = await reads.group(local_view.site.id, name)
        if group is not None:
            groups[name] = group
    return route_login(username, user, state, group_site, groups, local_view, group_count=group_count,
                       now=now, passdb_host=passdb_host, director=director)


def user_row_fields(user: User) -> dict[str, Any]:
    """The columns a new user's row gets: its group and, homed here, its preferred site."""
    return {"group_name": user.group_name, "preferred_site_id": user.preferred_site_id}


class Router:
    """Routes users of the local site; one per proxy process."""

    def __init__(
        self,
        geodb: GeoDB,
        cache: Any,
        *,
        site_name: str,
        group_count: int,
        cache_ttl: int = 3,
        max_stale: float = 0.0,
        clock: Callable[[], float] = time.time,
        director: DirectorTransition | None = None,
    ) -> None:
        self.geodb = geodb
        self.cache = cache
        self.site_name = site_name
        self.group_count = group_count
        self.cache_ttl = cache_ttl
        self.max_stale = max_stale
        """`cluster_geodb_stale_max`: how old cached state may route users while the GeoDB is down."""
        self.clock = clock
        self.director = director
        """`cluster_director_transition_config`: new users start where the Dovecot director had them."""
        self.stale_reads = 0
        self._user_sites: OrderedDict[tuple[str, UUID], UUID] = OrderedDict()
        self._decoded: dict[str, tuple[str, Any]] = {}
        """key -> (cached text, its decoded value): every login reads the same site view and
        group texts, and decoding them cost more than reading them. The LocalDB row stays the
        authority (`geodb refresh` from another process clears it): a memo entry is used only
        while its text is exactly what the LocalDB holds now. The values are frozen dataclasses."""

    async def _cached(self, key: str, load, fetch, *, memo: bool = False, lifetime=None):
        """`key` from the LocalDB cache, else `fetch()`ed and cached for `lifetime(value)` seconds
        (default `cache_ttl`)."""
        now = int(self.clock())
        text = self.cache.cache_get(key, now)
        if text is not None:
            if not memo:
                return load(text)
            seen = self._decoded.get(key)
            if seen is not None and seen[0] == text:
                return seen[1]
            value = load(text)
        else:
            try:
                value = await fetch()
            except GeoDBUnavailable:
                text = self._stale_text(key, now)
                if text is None:
                    raise
                self.stale_reads += 1
                return load(text)  # not memoised and not re-cached: it must not look fresh
            ttl = self.cache_ttl if lifetime is None else lifetime(value)
            if not memo:
                self.cache.cache_put(key, codec.dumps(value), ttl, now)
                return value
            text = codec.dumps(value)
            self.cache.cache_put(key, text, ttl, now)
        if len(self._decoded) >= DECODED_LIMIT:
            self._decoded.clear()
        self._decoded[key] = (text, value)
        return value

    def _stale_text(self, key: str, now: int) -> str | None:
        """The expired cache text for `key` if the stale rule lets it stand in for the GeoDB."""
        row = self.cache.cache_get_stale(key, now)
        entry = None if row is None else CachedEntry(row[0], row[1] - self.cache_ttl)
        # No `trusted_since` here: a proxy's stale guess is re-checked by the backend it picks.
        if not usable_when_stale(entry, now, max_stale=self.max_stale):
            return None
        assert entry is not None
        return entry.text

    def _remember(self, key: str, value: Any, ttl: int | None = None) -> None:
        self.cache.cache_put(key, codec.dumps(value), self.cache_ttl if ttl is None else ttl, int(self.clock()))

    def invalidate(self, *keys: str) -> None:
        for key in keys:
            self.cache.cache_delete(key)

    def invalidate_site_view(self) -> None:
        """Forget the cached backends (one just went offline): the next login re-routes."""
        self.invalidate(f"site/{self.site_name}")

    async def site_view(self) -> SiteView | None:
        async def fetch():
            site = await self.geodb.site_get_by_name(self.site_name)
            if site is None:
                return None
            return SiteView(site, tuple(await self.geodb.backend_list(site.id)))

        def load(text: str):
            return None if text == "null" else codec.load_site_view(text)

        return await self._cached(f"site/{self.site_name}", load, fetch, memo=True)

    async def site_state(self, local_site_id: UUID) -> SiteState:
        """Every site and the local site's reachability rows, cached like the site view."""
        return await self._cached(f"sites/{local_site_id}", codec.load_site_state,
                                  lambda: self.geodb.site_state(local_site_id), memo=True)

    async def group(self, site_id: UUID, name: str) -> Group | None:
        return await self._cached(f"group/{site_id}/{name}", codec.load_group,
                                  lambda: self.geodb.group_get(site_id, name), memo=True,
                                  lifetime=lambda group: group_cache_lifetime(group, self.cache_ttl))

    async def group_site(self, group_name: str, site_id: UUID) -> GroupSite | None:
        return await self._cached(f"group_site/{group_name}/{site_id}", codec.load_group_site,
                                  lambda: self.geodb.group_site_get(group_name, site_id), memo=True)

    async def route(self, username: str, *, host_override: str | None = None) -> RouteResult:
        view = await self.site_view()
        if view is None:
            return RouteResult(None, f"site {self.site_name!r} is not in the GeoDB")
        state = await self.site_state(view.site.id)
        user = await self._cached(f"user/{username}", codec.load_user, lambda: self.geodb.user_get(username))
        for _ in range(MAX_RACE_RETRIES):
            decision = await decide_login(self, username, user, state, view, group_count=self.group_count,
                                          now=self.clock(), passdb_host=host_override,
                                          director=self.director)
            if isinstance(decision, Unavailable):
                return RouteResult(None, decision.reason)
            if decision.user_write is not None:
                await self.geodb.user_put(username, **user_row_fields(decision.user_write))
                user = decision.user_write
                self._remember(f"user/{username}", user)
            if isinstance(decision, OtherSite):
                choice = decision.choice
                return RouteResult(None, f"{choice.via}: {choice.reason}".rstrip(": "), choice.group_name,
                                   site=choice.site)
            assert isinstance(decision, Routed)
            if decision.group_write is not None and not await self._write_group(view, decision):
                self.invalidate(f"group/{view.site.id}/{decision.group_name}")
                continue
            await self._note_user_site(username, view, decision)
            return RouteResult(decision.backend.host, decision.via, decision.group_name)
        return RouteResult(None, "could not settle the group's backend (concurrent writers)")

    async def _note_user_site(self, username: str, view: SiteView, decision: Routed) -> None:
        """`user_sites(user, site) -> backend`, written when it changes (as far as this process
        knows): `cluster user status` shows where the user was last served in each site."""
        key = (username, view.site.id)
        if self._user_sites.get(key) == decision.backend.id:
            return
        choice = decision.site_choice
        home = choice is not None and choice.home.id == view.site.id
        try:
            await self.geodb.user_site_put(UserSite(username, view.site.id, decision.backend.id, home))
        except Exception as exc:  # bookkeeping only: the login goes on
            log.warning("recording the site backend of a user failed: %s", exc)
            return
        self._user_sites[key] = decision.backend.id
        self._user_sites.move_to_end(key)
        if len(self._user_sites) > USER_SITES_MEMO:
            self._user_sites.popitem(last=False)

    async def _write_group(self, view: SiteView, decision: Routed) -> bool:
        """Apply the decision's conditional group write; False if another writer won."""
        write = decision.group_write
        assert write is not None
        new = write.group
        key = f"group/{view.site.id}/{new.name}"
        if write.expect_backend_id is None:
            existing = await self.geodb.group_get(view.site.id, new.name)
            if existing is None:
                applied, _ = await self.geodb.group_create_if_absent(new)
            else:
                applied, _ = await self.geodb.group_assign_backend(
                    view.site.id, new.name, new.backend_id, new.alt_backend_id)
        else:
            applied, _ = await self.geodb.group_replace_backend(
                view.site.id, new.name, new.backend_id, new.alt_backend_id, expect_backend_id=write.expect_backend_id)
            if applied:
                log.info("group %s failed over to backend %s", new.name, new.backend_id)
                await self._record_move(view, write.expect_backend_id, new.backend_id)
        if applied:
            # what we wrote is what the next login (or an outage) needs
            self._remember(key, new, group_cache_lifetime(new, self.cache_ttl))
        else:
            self.invalidate(key)
        return applied

    async def _record_move(self, view: SiteView, source_id: UUID, dest_id: UUID | None) -> None:
        """`last_moved_to` on the failed backend, `last_moved_from` on the new one (host names).

        Only the proxy whose conditional write landed records it, and the values depend only on
        the two backends, so a repeated write is harmless.
        """
        source, dest = view.backend(source_id), view.backend(dest_id)
        if source is None or dest is None:
            return
        try:
            await self.geodb.backend_update(view.site.id, source.id, last_moved_to=dest.host)
            await self.geodb.backend_update(view.site.id, dest.id, last_moved_from=source.host)
        except Exception as exc:  # bookkeeping only: the login goes on
            log.warning("recording the move of a group from %s to %s failed: %s", source.host, dest.host, exc)
