"""The I/O around the pure routing rules: read the GeoDB through the LocalDB cache, decide
with `cluster.routing.route_user`, perform the writes the decision asks for.

Stale cache entries are safe: the backend re-checks ownership and refers the proxy on,
so a short cache lifetime only trades GeoDB reads for an occasional extra hop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from palomar.cluster import codec
from palomar.cluster.director_transition import DirectorTransition
from palomar.cluster.model import Group, SiteView
from palomar.cluster.routing import Routed, Unavailable, group_of, route_user
from palomar.cluster.stale import CachedEntry, usable_when_stale
from palomar.geodb.guarded import GeoDBUnavailable
from palomar.geodb.repository import GeoDB

log = logging.getLogger("palomar.proxy")

MAX_RACE_RETRIES = 3
DECODED_LIMIT = 10_000
"""Decoded cache values kept per process (the site view and the groups: a bounded set)."""


@dataclass(frozen=True)
class RouteResult:
    host: str | None
    reason: str = ""
    group: str | None = None


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
        self._decoded: dict[str, tuple[str, Any]] = {}
        """key -> (cached text, its decoded value): every login reads the same site view and
        group texts, and decoding them cost more than reading them. The LocalDB row stays the
        authority (`geodb refresh` from another process clears it): a memo entry is used only
        while its text is exactly what the LocalDB holds now. The values are frozen dataclasses."""

    async def _cached(self, key: str, load, fetch, *, memo: bool = False):
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
            if not memo:
                self.cache.cache_put(key, codec.dumps(value), self.cache_ttl, now)
                return value
            text = codec.dumps(value)
            self.cache.cache_put(key, text, self.cache_ttl, now)
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

    def _remember(self, key: str, value: Any) -> None:
        self.cache.cache_put(key, codec.dumps(value), self.cache_ttl, int(self.clock()))

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

    async def _group(self, view: SiteView, name: str) -> Group | None:
        return await self._cached(f"group/{view.site.id}/{name}", codec.load_group,
                                  lambda: self.geodb.group_get(view.site.id, name), memo=True)

    async def route(self, username: str, *, host_override: str | None = None) -> RouteResult:
        view = await self.site_view()
        if view is None:
            return RouteResult(None, f"site {self.site_name!r} is not in the GeoDB")
        user = await self._cached(f"user/{username}", codec.load_user, lambda: self.geodb.user_get(username))
        for _ in range(MAX_RACE_RETRIES):
            group_name = group_of(username, user, self.group_count, view, self.director)
            groups: dict[str, Group] = {}
            group = await self._group(view, group_name)
            if group is not None:
                groups[group_name] = group
            decision = route_user(username, user, groups, view, group_count=self.group_count, now=self.clock(),
                                  passdb_host=host_override, director=self.director)
            if isinstance(decision, Unavailable):
                return RouteResult(None, decision.reason)
            assert isinstance(decision, Routed)
            if decision.user_write is not None:
                await self.geodb.user_put(username, group_name=decision.user_write.group_name)
                user = decision.user_write
                self._remember(f"user/{username}", user)
            if decision.group_write is not None and not await self._write_group(view, decision):
                self.invalidate(f"group/{view.site.id}/{group_name}")
                continue
            return RouteResult(decision.backend.host, decision.via, decision.group_name)
        return RouteResult(None, "could not settle the group's backend (concurrent writers)")

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
            self._remember(key, new)  # what we wrote is what the next login (or an outage) needs
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
