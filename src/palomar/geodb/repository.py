"""Typed access to the GeoDB: model dataclasses in, model dataclasses out.

`GeoDB` is the only place that knows how the model maps onto the tables of `schema.cql`, so the
CLI, the proxy, the backend and the controller never handle raw rows. Every method is a
partition-key query; the few that read a whole (small) table say so in their name or docstring
(`*_list` over sites and tags, `backend_find_by_host`, `user_list_all`).

Multi-column state transitions (a status change that also clears force-move state) are written
in one upsert with one write time, so a concurrent reader never sees half of a transition and a
replayed write is harmless.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any
from uuid import UUID, uuid4

from palomar.cluster.model import (
    NO_ID,
    Backend,
    ForceMove,
    Group,
    GroupSite,
    ProxyDestStat,
    Reachability,
    Setting,
    Site,
    Stat,
    Tag,
    User,
    UserSite,
)
from palomar.cluster.site_selection import SiteState
from palomar.geodb.engine import GeoEngine, Get, Read, Row, Scan, Select, now_micros

_FORCE_MOVE_CLEARED: dict[str, Any] = {
    "force_move_id": None,
    "force_move_percentage": None,
    "force_move_dest": None,
}


def _uuid(value: Any) -> UUID | None:
    """Engines may hand back UUIDs as objects or as text; the model always holds UUID objects."""
    if value is None or isinstance(value, UUID):
        return value
    if isinstance(value, bytes | bytearray):
        return UUID(bytes=bytes(value))
    return UUID(str(value))


def _flag(value: Any) -> bool:
    return bool(value) if value is not None else False


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _dest_text(dest: Iterable[str]) -> str:
    items = list(dest)
    if any("," in d for d in items):
        raise ValueError("force-move destinations must not contain ','")
    return ",".join(items)


def _force_move(row: Row) -> ForceMove | None:
    fm_id = _uuid(row.get("force_move_id"))
    if fm_id is None:
        return None
    dest = tuple(d for d in (row.get("force_move_dest") or "").split(",") if d)
    return ForceMove(id=fm_id, percentage=int(row.get("force_move_percentage", 0)), dest=dest)


def _force_move_values(fm: ForceMove) -> dict[str, Any]:
    return {
        "force_move_id": fm.id,
        "force_move_percentage": fm.percentage,
        "force_move_dest": _dest_text(fm.dest),
    }


def _only(fields: Mapping[str, Any], allowed: Iterable[str], table: str) -> dict[str, Any]:
    """Reject unknown column names early: a typo must not silently write nothing."""
    allowed_set = set(allowed)
    unknown = sorted(set(fields) - allowed_set)
    if unknown:
        raise TypeError(f"{table}: cannot update {', '.join(unknown)}")
    return dict(fields)


def _db_value(value: Any) -> Any:
    """Model values to column values: booleans are ints in the seed's tables."""
    if isinstance(value, bool):
        return int(value)
    return value


def _tag(row: Row) -> Tag:
    return Tag(id=_uuid(row["id"]), name=row.get("tag", ""))  # type: ignore[arg-type]


def _stat(row: Row) -> Stat:
    return Stat(key=row["key"], value=float(row.get("value", 0.0)), type=row.get("type", "counter"))


def _site(row: Row) -> Site:
    return Site(
        id=_uuid(row["id"]),  # type: ignore[arg-type]
        name=row.get("name", ""),
        status=row.get("status", "online"),
        load_balancer=row.get("load_balancer"),
        tag=_uuid(row.get("tag")),
        force_move=_force_move(row),
        recover_id=_uuid(row.get("recover_id")),
        recover_percentage=_int(row.get("recover_percentage")),
    )


def _backend(row: Row) -> Backend:
    return Backend(
        id=_uuid(row["id"]),  # type: ignore[arg-type]
        site_id=_uuid(row["site_id"]),  # type: ignore[arg-type]
        host=row.get("host", ""),
        status=row.get("status", "standby"),
        status_reason=row.get("status_reason"),
        status_changed_us=row.writetime("status"),
        load_factor=int(row.get("load_factor", 100)),
        user_count_approx=_int(row.get("user_count_approx")),
        last_moved_from=row.get("last_moved_from"),
        last_moved_to=row.get("last_moved_to"),
        force_move=_force_move(row),
    )


def _group(row: Row) -> Group:
    return Group(
        site_id=_uuid(row["site_id"]),  # type: ignore[arg-type]
        name=row["name"],
        backend_id=_uuid(row.get("backend_id")),
        alt_backend_id=_uuid(row.get("alt_backend_id")),
        moving=row.get("moving") or None,
        sticky_users=_flag(row.get("sticky_users")),
        sticky_backend=_flag(row.get("sticky_backend")),
        refresh_after=_int(row.get("refresh_after")),
        backend_changed_us=row.writetime("backend_id"),
    )


def _group_values(group: Group) -> dict[str, Any]:
    return {
        "backend_id": group.backend_id,
        "alt_backend_id": group.alt_backend_id,
        "moving": group.moving,
        "sticky_users": int(group.sticky_users),
        "sticky_backend": int(group.sticky_backend),
        "refresh_after": group.refresh_after,
    }


_USER_FIELDS = (
    "group_name",
    "preferred_site_id",
    "failover_site_group_name",
    "moving_group_name",
    "moving_preferred_site_id",
    "moving_failover_site_group_name",
    "metacache_last_host",
)


def _user(row: Row) -> User:
    return User(
        username=row["username"],
        group_name=row.get("group_name"),
        preferred_site_id=_uuid(row.get("preferred_site_id")),
        failover_site_group_name=row.get("failover_site_group_name"),
        moving_group_name=row.get("moving_group_name"),
        moving_preferred_site_id=_uuid(row.get("moving_preferred_site_id")),
        moving_failover_site_group_name=row.get("moving_failover_site_group_name"),
        metacache_last_host=row.get("metacache_last_host"),
    )


class GeoDB:
    """The cluster state, typed. Wraps an opened `GeoEngine`; `close()` closes the engine."""

    def __init__(self, engine: GeoEngine) -> None:
        self.engine = engine

    async def close(self) -> None:
        await self.engine.close()

    # -- tags ---------------------------------------------------------------------------------

    async def tag_create(self, tag: Tag) -> bool:
        """Create a tag; False when a tag with this ID already exists (nothing is written)."""
        result = await self.engine.insert_if_absent("tags", {"id": tag.id}, {"tag": tag.name})
        return result.applied

    async def tag_get(self, tag_id: UUID) -> Tag | None:
        row = await self.engine.get("tags", {"id": tag_id})
        return None if row is None else _tag(row)

    async def tag_list(self) -> list[Tag]:
        """All tags (a small table, scanned), ordered by name."""
        rows = await self.engine.scan("tags")
        tags = [_tag(r) for r in rows]
        return sorted(tags, key=lambda t: (t.name, str(t.id)))

    async def tag_get_by_name(self, name: str) -> Tag | None:
        return next((t for t in await self.tag_list() if t.name == name), None)

    async def tag_update(self, tag_id: UUID, name: str) -> None:
        await self.engine.upsert("tags", {"id": tag_id}, {"tag": name})

    async def tag_delete(self, tag_id: UUID) -> None:
        await self.engine.delete("tags", {"id": tag_id})

    # -- sites --------------------------------------------------------------------------------

    async def site_add(self, site: Site) -> bool:
        """Create a site; False when a site with this ID already exists."""
        values: dict[str, Any] = {
            "name": site.name,
            "status": site.status,
            "load_balancer": site.load_balancer,
            "tag": site.tag,
        }
        if site.force_move is not None:
            values.update(_force_move_values(site.force_move))
        values = {k: v for k, v in values.items() if v is not None}
        result = await self.engine.insert_if_absent("sites", {"id": site.id}, values)
        return result.applied

    async def site_get(self, site_id: UUID) -> Site | None:
        row = await self.engine.get("sites", {"id": site_id})
        return None if row is None else _site(row)

    async def site_list(self) -> list[Site]:
        """All sites (a small table, scanned), ordered by name."""
        sites = [_site(r) for r in await self.engine.scan("sites")]
        return sorted(sites, key=lambda s: (s.name, str(s.id)))

    async def site_get_by_name(self, name: str) -> Site | None:
        return next((s for s in await self.site_list() if s.name == name), None)

    async def site_update(self, site_id: UUID, **fields: Any) -> None:
        """Write any of name, load_balancer, tag. Status has its own method (it has side effects)."""
        values = _only(fields, ("name", "load_balancer", "tag"), "sites")
        if values:
            await self.engine.upsert("sites", {"id": site_id}, values)

    async def site_set_status(self, site_id: UUID, status: str) -> None:
        """Change the status and reset force-move in the same write, as Palomar specifies."""
        await self.engine.upsert("sites", {"id": site_id}, {"status": status, **_FORCE_MOVE_CLEARED})

    async def site_remove(self, site_id: UUID) -> None:
        """Delete the site and the reachability rows it reported (no other safety checks)."""
        await self.engine.delete("sites", {"id": site_id})
        await self.engine.delete("site_reachability", {"src_site_id": site_id})

    async def site_force_move_set(self, site_id: UUID, force_move: ForceMove) -> None:
        await self.engine.upsert("sites", {"id": site_id}, _force_move_values(force_move))

    async def site_force_move_clear(self, site_id: UUID) -> None:
        await self.engine.upsert("sites", {"id": site_id}, _FORCE_MOVE_CLEARED)

    async def site_recover_set(self, site_id: UUID, recover_id: UUID, percentage: int) -> None:
        await self.engine.upsert(
            "sites", {"id": site_id}, {"recover_id": recover_id, "recover_percentage": percentage}
        )

    async def site_recover_clear(self, site_id: UUID) -> None:
        await self.engine.upsert("sites", {"id": site_id}, {"recover_id": None, "recover_percentage": None})

    # -- site reachability ----------------------------------------------------------------------

    async def reachability_set(self, src_site_id: UUID, dest_site_id: UUID, reachable: bool) -> None:
        await self.engine.upsert(
            "site_reachability",
            {"src_site_id": src_site_id, "dest_site_id": dest_site_id},
            {"reachable": int(reachable)},
        )

    async def reachability_list(self, src_site_id: UUID) -> list[Reachability]:
        rows = await self.engine.select("site_reachability", {"src_site_id": src_site_id})
        return [self._reachability(r) for r in rows]

    async def site_state(self, local_site_id: UUID) -> SiteState:
        """What site selection reads, as seen from `local_site_id`: every site (a small table) and
        the destinations that site's reachability rows call unreachable."""
        sites, reach = await self.engine.read_many([
            Scan("sites"), Select("site_reachability", {"src_site_id": local_site_id})])
        return self._site_state(local_site_id, sites, reach)

    @classmethod
    def _site_state(cls, local_site_id: UUID, site_rows: list[Row], reach_rows: list[Row]) -> SiteState:
        sites = sorted((_site(r) for r in site_rows), key=lambda s: (s.name, str(s.id)))
        unreachable = frozenset(r.dest_site_id for r in map(cls._reachability, reach_rows) if not r.reachable)
        return SiteState(local_site_id, tuple(sites), unreachable)

    async def reachability_get(self, src_site_id: UUID, dest_site_id: UUID) -> Reachability | None:
        row = await self.engine.get(
            "site_reachability", {"src_site_id": src_site_id, "dest_site_id": dest_site_id}
        )
        return None if row is None else self._reachability(row)

    @staticmethod
    def _reachability(row: Row) -> Reachability:
        return Reachability(
            src_site_id=_uuid(row["src_site_id"]),  # type: ignore[arg-type]
            dest_site_id=_uuid(row["dest_site_id"]),  # type: ignore[arg-type]
            reachable=_flag(row.get("reachable")),
        )

    # -- backends -----------------------------------------------------------------------------

    async def backend_add(self, backend: Backend) -> bool:
        """Register a backend; False when this (site, id) already exists."""
        values: dict[str, Any] = {
            "host": backend.host,
            "status": backend.status,
            "status_reason": backend.status_reason,
            "load_factor": backend.load_factor,
            "user_count_approx": backend.user_count_approx,
            "last_moved_from": backend.last_moved_from,
            "last_moved_to": backend.last_moved_to,
        }
        if backend.force_move is not None:
            values.update(_force_move_values(backend.force_move))
        values = {k: v for k, v in values.items() if v is not None}
        result = await self.engine.insert_if_absent(
            "backends", {"site_id": backend.site_id, "id": backend.id}, values
        )
        return result.applied

    async def backend_get(self, site_id: UUID, backend_id: UUID) -> Backend | None:
        row = await self.engine.get("backends", {"site_id": site_id, "id": backend_id})
        return None if row is None else _backend(row)

    async def backend_list(self, site_id: UUID) -> list[Backend]:
        """The backends of one site (one partition), ordered by host."""
        rows = await self.engine.select("backends", {"site_id": site_id})
        return sorted((_backend(r) for r in rows), key=lambda b: (b.host, str(b.id)))

    async def backend_list_all(self) -> list[Backend]:
        """Every backend: one partition query per site."""
        backends: list[Backend] = []
        for site in await self.site_list():
            backends.extend(await self.backend_list(site.id))
        return backends

    async def backend_find_by_host(self, host: str) -> Backend | None:
        """The backend with this host name, looked up over every site's partition."""
        wanted = host.lower()
        return next((b for b in await self.backend_list_all() if b.host.lower() == wanted), None)

    async def backend_find_by_id(self, backend_id: UUID) -> Backend | None:
        """The backend with this ID in any site (IDs are unique cluster-wide)."""
        return next((b for b in await self.backend_list_all() if b.id == backend_id), None)

    async def backend_update(self, site_id: UUID, backend_id: UUID, **fields: Any) -> None:
        """Write any of load_factor, status_reason, user_count_approx, last_moved_from, last_moved_to."""
        values = _only(
            fields,
            ("load_factor", "status_reason", "user_count_approx", "last_moved_from", "last_moved_to"),
            "backends",
        )
        if values:
            await self.engine.upsert("backends", {"site_id": site_id, "id": backend_id}, values)

    async def backend_set_status(
        self,
        site_id: UUID,
        backend_id: UUID,
        status: str,
        reason: str | None = None,
        *,
        timestamp: int | None = None,
    ) -> int:
        """Change the status (and reason), resetting force-move in the same write.

        Returns the write time used: it becomes `Backend.status_changed_us`, which the health
        and move rules compare against.
        """
        ts = now_micros() if timestamp is None else timestamp
        await self.engine.upsert(
            "backends",
            {"site_id": site_id, "id": backend_id},
            {"status": status, "status_reason": reason, **_FORCE_MOVE_CLEARED},
            timestamp=ts,
        )
        return ts

    async def backend_force_move_set(self, site_id: UUID, backend_id: UUID, force_move: ForceMove) -> None:
        await self.engine.upsert(
            "backends", {"site_id": site_id, "id": backend_id}, _force_move_values(force_move)
        )

    async def backend_force_move_clear(self, site_id: UUID, backend_id: UUID) -> None:
        await self.engine.upsert("backends", {"site_id": site_id, "id": backend_id}, _FORCE_MOVE_CLEARED)

    async def backend_remove(self, site_id: UUID, backend_id: UUID) -> None:
        """Unregister a backend and drop its statistics rows."""
        await self.engine.delete("backends", {"site_id": site_id, "id": backend_id})
        for row in await self.engine.select("backend_stats", {"site_id": site_id}, (backend_id,)):
            await self.engine.delete(
                "backend_stats", {"site_id": site_id, "id": backend_id, "key": row["key"]}
            )

    # -- statistics ---------------------------------------------------------------------------

    async def backend_stats_put(self, site_id: UUID, backend_id: UUID, stats: Iterable[Stat]) -> None:
        for stat in stats:
            await self.engine.upsert(
                "backend_stats",
                {"site_id": site_id, "id": backend_id, "key": stat.key},
                {"value": float(stat.value), "type": stat.type},
            )

    async def backend_stats_list(self, site_id: UUID) -> dict[UUID, list[Stat]]:
        """Every backend's statistics of one site (one partition), by backend ID."""
        result: dict[UUID, list[Stat]] = {}
        for row in await self.engine.select("backend_stats", {"site_id": site_id}):
            result.setdefault(_uuid(row["id"]), []).append(_stat(row))  # type: ignore[arg-type]
        return result

    async def backend_stats_get(self, site_id: UUID, backend_id: UUID) -> list[Stat]:
        rows = await self.engine.select("backend_stats", {"site_id": site_id}, (backend_id,))
        return [_stat(r) for r in rows]

    async def proxy_dest_stats_put(self, stats: Iterable[ProxyDestStat]) -> None:
        for stat in stats:
            await self.engine.upsert(
                "proxy_dest_stats",
                {
                    "proxy_site_id": stat.proxy_site_id,
                    "dest_host": stat.dest_host,
                    "proxy_host": stat.proxy_host,
                    "key": stat.key,
                },
                {"value": float(stat.value), "type": stat.type},
            )

    async def proxy_dest_stats_list(
        self, proxy_site_id: UUID, dest_host: str | None = None
    ) -> list[ProxyDestStat]:
        """The proxy statistics reported by one site's proxies, optionally towards one destination."""
        clustering = () if dest_host is None else (dest_host,)
        rows = await self.engine.select("proxy_dest_stats", {"proxy_site_id": proxy_site_id}, clustering)
        return [
            ProxyDestStat(
                proxy_site_id=_uuid(r["proxy_site_id"]),  # type: ignore[arg-type]
                dest_host=r["dest_host"],
                proxy_host=r["proxy_host"],
                key=r["key"],
                value=float(r.get("value", 0.0)),
                type=r.get("type", "counter"),
            )
            for r in rows
        ]

    async def proxy_dest_stats_delete(
        self, proxy_site_id: UUID, dest_host: str, proxy_host: str, key: str
    ) -> None:
        await self.engine.delete(
            "proxy_dest_stats",
            {"proxy_site_id": proxy_site_id, "dest_host": dest_host, "proxy_host": proxy_host, "key": key},
        )

    # -- users --------------------------------------------------------------------------------

    async def user_get(self, username: str) -> User | None:
        row = await self.engine.get("users", {"username": username})
        return None if row is None else _user(row)

    async def ownership_rows(
        self, site_id: UUID, usernames: Sequence[str], sites: SiteState | None,
        groups_for: Callable[[SiteState, dict[str, User | None]], tuple[list[tuple[str, UUID]], list[str]]],
    ) -> tuple[SiteState, list[Backend], dict[str, User | None], dict[tuple[str, UUID], GroupSite | None],
               dict[str, Group | None]]:
        """What a backend decides ownership from, for each of `usernames`: site selection's view
        from `site_id` (as `site_state`; not read again when `sites` is given), that site's backends
        (as `backend_list`) and the users; then the `group_sites` rows of the (group, home site)
        pairs and the groups of `site_id` that `groups_for` names from those (pure: it may run on
        the engine's worker thread). One `read_then`: the SQLite engine reads all of it in one job."""
        names = list(dict.fromkeys(usernames))
        reads: list[Read] = [Select("backends", {"site_id": site_id}),
                             *(Get("users", {"username": name}) for name in names)]
        if sites is None:
            reads += [Scan("sites"), Select("site_reachability", {"src_site_id": site_id})]
        seen: dict[str, Any] = {}

        def then(rows: list[Any]) -> list[Read]:
            state = sites or self._site_state(site_id, *rows[1 + len(names):])
            users = {name: None if row is None else _user(row) for name, row in zip(names, rows[1:], strict=False)}
            pairs, groups = groups_for(state, users)
            seen.update(sites=state, users=users, pairs=list(dict.fromkeys(pairs)), groups=list(dict.fromkeys(groups)))
            return [*(Get("group_sites", {"group_name": group, "site_id": home}) for group, home in seen["pairs"]),
                    *(Get("user_groups", {"site_id": site_id, "name": n}) for n in seen["groups"])]

        first, second = await self.engine.read_then(reads, then)
        pairs, wanted = seen["pairs"], seen["groups"]
        return (seen["sites"], sorted((_backend(r) for r in first[0]), key=lambda b: (b.host, str(b.id))),
                seen["users"],
                {pair: None if row is None else self._group_site(row) for pair, row in zip(pairs, second, strict=False)},
                {n: None if r is None else _group(r) for n, r in zip(wanted, second[len(pairs):], strict=True)})

    async def user_put(self, username: str, **fields: Any) -> None:
        """Write the given user columns (None clears one); creates the row when it does not exist."""
        values = _only(fields, _USER_FIELDS, "users")
        if values:
            await self.engine.upsert("users", {"username": username}, values)

    async def users_put_many(self, users: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """`user_put` for a batch of users in one engine call (bulk import)."""
        rows = [({"username": name}, _only(fields, _USER_FIELDS, "users")) for name, fields in users]
        await self.engine.upsert_many("users", [(key, values) for key, values in rows if values])

    async def users_existing(self, usernames: Sequence[str]) -> set[str]:
        """Which of these users have a GeoDB record (one `read_many`: one worker job on SQLite)."""
        found = await self.engine.read_many([Get("users", {"username": name}) for name in usernames])
        return {name for name, row in zip(usernames, found, strict=True) if row is not None}

    async def user_start_move(self, username: str, group_name: str, site_id: UUID,
                              failover_group: str | None) -> None:
        """Mark the user moving to `group_name` in `site_id`; its backend migrates it on its next access."""
        await self.user_put(username, moving_group_name=group_name, moving_preferred_site_id=site_id,
                            moving_failover_site_group_name=failover_group)

    async def user_delete(self, username: str) -> None:
        """Delete the user's GeoDB record and its per-site rows."""
        await self.engine.delete("users", {"username": username})
        await self.engine.delete("user_sites", {"username": username})

    async def user_list_all(self) -> list[User]:
        """Every user: a full scan, for admin listings only (never on a login path)."""
        users = [_user(r) for r in await self.engine.scan("users")]
        return sorted(users, key=lambda u: u.username)

    async def user_pages(self, page_size: int) -> AsyncIterator[list[User]]:
        """Every user, `page_size` at a time (engine scan order): a whole-table pass that holds
        one page of rows at a time and decodes it in small steps, so the caller's event loop
        keeps serving between pages."""
        after, page_size = None, max(page_size, 1)
        while True:
            rows = await self.engine.scan_page("users", after, page_size)
            if rows:
                yield [_user(r) for r in rows]
            if len(rows) < page_size:
                return
            after = rows[-1]["username"]

    async def user_sites_list(self, username: str) -> list[UserSite]:
        rows = await self.engine.select("user_sites", {"username": username})
        return [
            UserSite(
                username=r["username"],
                site_id=_uuid(r["site_id"]),  # type: ignore[arg-type]
                backend_id=_uuid(r.get("backend_id")),
                preferred_site=_flag(r.get("preferred_site")),
            )
            for r in rows
        ]

    async def user_site_put(self, entry: UserSite) -> None:
        await self.engine.upsert(
            "user_sites",
            {"username": entry.username, "site_id": entry.site_id},
            {"backend_id": entry.backend_id, "preferred_site": int(entry.preferred_site)},
        )

    async def user_site_delete(self, username: str, site_id: UUID) -> None:
        await self.engine.delete("user_sites", {"username": username, "site_id": site_id})

    # -- user groups --------------------------------------------------------------------------

    async def group_get(self, site_id: UUID, name: str) -> Group | None:
        row = await self.engine.get("user_groups", {"site_id": site_id, "name": name})
        return None if row is None else _group(row)

    async def group_list(self, site_id: UUID) -> list[Group]:
        """The groups of one site (one partition), in clustering (name) order."""
        return [_group(r) for r in await self.engine.select("user_groups", {"site_id": site_id})]

    async def group_create_if_absent(self, group: Group) -> tuple[bool, Group]:
        """Create the group with its backend assignment unless it exists (LWT).

        Returns (we created it, the group as stored now): when several proxies place the same
        new group at once, exactly one assignment wins and everybody routes to it.
        """
        values = {k: v for k, v in _group_values(group).items() if v is not None}
        result = await self.engine.insert_if_absent(
            "user_groups", {"site_id": group.site_id, "name": group.name}, values
        )
        return result.applied, _group(result.row)

    async def group_assign_backend(
        self, site_id: UUID, name: str, backend_id: UUID, alt_backend_id: UUID | None
    ) -> tuple[bool, Group]:
        """Give a pre-created group (backend_id still null) its backend, first writer wins (LWT)."""
        result = await self.engine.update_if(
            "user_groups",
            {"site_id": site_id, "name": name},
            {"backend_id": backend_id, "alt_backend_id": alt_backend_id},
            {"backend_id": None},
        )
        return result.applied, _group(result.row)

    async def group_replace_backend(
        self, site_id: UUID, name: str, backend_id: UUID, alt_backend_id: UUID | None, *,
        expect_backend_id: UUID | None,
    ) -> tuple[bool, Group]:
        """Move a group to `backend_id` (failover, or a move finishing) only if it is still on
        `expect_backend_id` (LWT): of many proxies doing the same failover, one write lands."""
        result = await self.engine.update_if(
            "user_groups",
            {"site_id": site_id, "name": name},
            {"backend_id": backend_id, "alt_backend_id": alt_backend_id, "moving": None},
            {"backend_id": expect_backend_id},
        )
        return result.applied, _group(result.row)

    async def group_update(self, site_id: UUID, name: str, **fields: Any) -> None:
        """Write any of backend_id, alt_backend_id, moving, sticky_users, sticky_backend, refresh_after."""
        values = _only(
            fields,
            ("backend_id", "alt_backend_id", "moving", "sticky_users", "sticky_backend", "refresh_after"),
            "user_groups",
        )
        if values:
            row_values = {k: _db_value(v) for k, v in values.items()}
            await self.engine.upsert("user_groups", {"site_id": site_id, "name": name}, row_values)

    async def group_start_move(self, site_id: UUID, name: str, target_id: UUID) -> str:
        """Mark the group moving to `target_id` (a fresh `moving` ID); returns that ID."""
        move_id = str(uuid4())
        await self.group_update(site_id, name, alt_backend_id=target_id, moving=move_id)
        return move_id

    async def group_delete(self, site_id: UUID, name: str) -> None:
        await self.engine.delete("user_groups", {"site_id": site_id, "name": name})

    # -- group sites --------------------------------------------------------------------------

    async def group_site_get(self, group_name: str, site_id: UUID) -> GroupSite | None:
        row = await self.engine.get("group_sites", {"group_name": group_name, "site_id": site_id})
        return None if row is None else self._group_site(row)

    async def group_site_list(self, group_name: str) -> list[GroupSite]:
        rows = await self.engine.select("group_sites", {"group_name": group_name})
        return [self._group_site(r) for r in rows]

    async def group_site_put(self, entry: GroupSite) -> None:
        await self.engine.upsert(
            "group_sites",
            {"group_name": entry.group_name, "site_id": entry.site_id},
            {"status": entry.status, "failover_site_id": entry.failover_site_id},
        )

    async def group_site_delete(self, group_name: str, site_id: UUID) -> None:
        await self.engine.delete("group_sites", {"group_name": group_name, "site_id": site_id})

    @staticmethod
    def _group_site(row: Row) -> GroupSite:
        return GroupSite(
            group_name=row["group_name"],
            site_id=_uuid(row["site_id"]),  # type: ignore[arg-type]
            status=_int(row.get("status")),
            failover_site_id=_uuid(row.get("failover_site_id")),
            status_changed_us=row.writetime("status"),
        )

    # -- cluster settings ---------------------------------------------------------------------

    @staticmethod
    def _setting_key(section: str, name: str, site_id: UUID, backend_id: UUID) -> dict[str, Any]:
        return {"section": section, "site_id": site_id, "backend_id": backend_id, "setting_name": name}

    async def setting_get(
        self, section: str, name: str, site_id: UUID = NO_ID, backend_id: UUID = NO_ID
    ) -> Setting | None:
        row = await self.engine.get("cluster_settings", self._setting_key(section, name, site_id, backend_id))
        return None if row is None else self._setting(row)

    async def setting_put(self, setting: Setting) -> None:
        await self.engine.upsert(
            "cluster_settings",
            self._setting_key(setting.section, setting.name, setting.site_id, setting.backend_id),
            {"setting_value": setting.value},
        )

    async def setting_delete(
        self, section: str, name: str, site_id: UUID = NO_ID, backend_id: UUID = NO_ID
    ) -> None:
        await self.engine.delete("cluster_settings", self._setting_key(section, name, site_id, backend_id))

    async def setting_list(self, section: str) -> list[Setting]:
        return [self._setting(r) for r in await self.engine.select("cluster_settings", {"section": section})]

    @staticmethod
    def _setting(row: Row) -> Setting:
        return Setting(
            section=row["section"],
            name=row["setting_name"],
            value=row.get("setting_value", ""),
            site_id=_uuid(row["site_id"]) or NO_ID,
            backend_id=_uuid(row["backend_id"]) or NO_ID,
        )
