"""`palomar cluster group ...` and `palomar cluster user ...`: placement of users and groups."""

from __future__ import annotations

import fnmatch
from dataclasses import replace
from typing import Any
from uuid import UUID

import click

from palomar.cli.cluster_context import ClusterContext, CommandError, backend_by_host, pass_ctx, site_by_name
from palomar.cli.output import micros_to_iso
from palomar.cluster import validation as check
from palomar.cluster.model import Group, GroupSite, User
from palomar.cluster.moves import group_move_request
from palomar.cluster.site_selection import GROUP_SITE_FOLLOW, GROUP_SITE_STATUSES
from palomar.geodb.repository import GeoDB

GROUP_COLUMNS = ("site", "name", "backend", "alt_backend", "moving", "sticky_users", "sticky_backend")
USER_COLUMNS = ("username", "site", "group", "failover_group", "moving_site", "moving_group")


def group_record(group: Group, site_names: dict[UUID, str], hosts: dict[UUID, str]) -> dict[str, Any]:
    def host(backend_id: UUID | None) -> str | None:
        return None if backend_id is None else hosts.get(backend_id, str(backend_id))

    return {
        "site": site_names.get(group.site_id, str(group.site_id)),
        "name": group.name,
        "backend": host(group.backend_id),
        "alt_backend": host(group.alt_backend_id),
        "moving": group.moving,
        "sticky_users": group.sticky_users,
        "sticky_backend": group.sticky_backend,
        "refresh_after": group.refresh_after,
        "backend_id": group.backend_id,
        "alt_backend_id": group.alt_backend_id,
        "backend_changed": micros_to_iso(group.backend_changed_us),
    }


def user_record(user: User, site_names: dict[UUID, str]) -> dict[str, Any]:
    def site(site_id: UUID | None) -> str | None:
        return None if site_id is None else site_names.get(site_id, str(site_id))

    return {
        "username": user.username,
        "site": site(user.preferred_site_id),
        "group": user.group_name,
        "failover_group": user.failover_site_group_name,
        "moving_site": site(user.moving_preferred_site_id),
        "moving_group": user.moving_group_name,
        "moving_failover_group": user.moving_failover_site_group_name,
        "metacache_last_host": user.metacache_last_host,
    }


async def _lookup_names(db: GeoDB) -> tuple[dict[UUID, str], dict[UUID, str]]:
    sites = {s.id: s.name for s in await db.site_list()}
    hosts = {b.id: b.host for b in await db.backend_list_all()}
    return sites, hosts


async def _group(db: GeoDB, site_name: str, name: str) -> Group:
    found_site = await site_by_name(db, site_name)
    found = await db.group_get(found_site.id, name)
    if found is None:
        raise CommandError(f"group '{name}' does not exist in site '{site_name}'")
    return found


# -- groups -------------------------------------------------------------------------------------


@click.group()
def group() -> None:
    """User groups: move, status, update, list."""


@group.command("move")
@click.option("--direct", is_flag=True, help="Rewrite the backend at once, no migration (testing only).")
@click.argument("site")
@click.argument("name", metavar="GROUP")
@click.argument("host")
@pass_ctx
def group_move(ctx: ClusterContext, direct: bool, site: str, name: str, host: str) -> None:
    """Move GROUP of SITE to backend HOST (the move runs on the group's next access)."""
    ctx.run(lambda db: move_group(db, site, name, host, direct=direct))


async def move_group(db: GeoDB, site: str, name: str, host: str, *, direct: bool = False) -> None:
    """`group move`: request the move (or, direct, rewrite the backend at once)."""
    found = await _group(db, site, name)
    target = await backend_by_host(db, host)
    if target.site_id != found.site_id:
        raise CommandError(f"backend '{host}' is not in site '{site}'")
    request = group_move_request(found, target.id, direct=direct)
    if request == "assign":
        # --direct, or a group nobody owns yet: there is no source backend to migrate from.
        await db.group_update(found.site_id, found.name, backend_id=target.id)
    elif request == "already-there":
        raise CommandError(f"group '{name}' is already on backend '{target.host}'")
    elif request == "busy":
        raise CommandError(f"group '{name}' is already moving to another backend; wait or use --direct")
    elif request == "start":
        await db.group_start_move(found.site_id, found.name, target.id)
    # already-requested: the same move is pending; a new marker would restart nothing


@group.command("status")
@click.argument("site")
@click.argument("name", metavar="GROUP")
@pass_ctx
def group_status(ctx: ClusterContext, site: str, name: str) -> None:
    """Show one group."""

    async def action(db: GeoDB) -> dict[str, Any]:
        found = await _group(db, site, name)
        sites, hosts = await _lookup_names(db)
        return group_record(found, sites, hosts)

    ctx.emit_record(ctx.run(action))


@group.command("update")
@click.option("--sticky-users", metavar="yes|no", help="Users are not re-grouped automatically.")
@click.option("--sticky-backend", metavar="yes|no", help="The group is not moved automatically.")
@click.option("--refresh-after", metavar="SECS|default",
              help="Proxies keep their cached copy of the group at most this long (never longer than their "
                   "cache_ttl); default: cache_ttl.")
@click.argument("site")
@click.argument("name", metavar="GROUP")
@pass_ctx
def group_update(
    ctx: ClusterContext, sticky_users: str | None, sticky_backend: str | None, refresh_after: str | None, site: str,
    name: str
) -> None:
    """Change a group's sticky flags or its refresh_after."""
    fields: dict[str, Any] = {}
    if sticky_users is not None:
        fields["sticky_users"] = check.yes_no(sticky_users, "--sticky-users value")
    if sticky_backend is not None:
        fields["sticky_backend"] = check.yes_no(sticky_backend, "--sticky-backend value")
    if refresh_after is not None:
        fields["refresh_after"] = check.refresh_after(refresh_after)
    if not fields:
        raise CommandError("nothing to update: give --sticky-users, --sticky-backend or --refresh-after")

    async def action(db: GeoDB) -> None:
        found = await _group(db, site, name)
        await db.group_update(found.site_id, found.name, **fields)

    ctx.run(action)


@group.command("list")
@click.option("--site", metavar="SITE", help="Only the groups of this site.")
@click.argument("mask", required=False)
@pass_ctx
def group_list(ctx: ClusterContext, site: str | None, mask: str | None) -> None:
    """List groups, optionally only names matching MASK (* and ? wildcards)."""
    ctx.emit_list(ctx.run(lambda db: group_records(db, site, mask)), GROUP_COLUMNS)


async def group_records(db: GeoDB, site: str | None = None, mask: str | None = None) -> list[dict[str, Any]]:
    """`group list [--site SITE] [MASK]`: the records `--json` prints."""
    sites, hosts = await _lookup_names(db)
    site_ids = [(await site_by_name(db, site)).id] if site is not None else list(sites)
    records = []
    for site_id in site_ids:
        for g in await db.group_list(site_id):
            if mask is None or fnmatch.fnmatchcase(g.name, mask):
                records.append(group_record(g, sites, hosts))
    return records


# -- group sites ---------------------------------------------------------------------------------

GROUP_SITE_COLUMNS = ("group", "site", "status", "failover_site")
_GROUP_SITE_STATUS_NAMES = {v: k for k, v in GROUP_SITE_STATUSES.items()}


def group_site_record(entry: GroupSite, site_names: dict[UUID, str]) -> dict[str, Any]:
    def site(site_id: UUID | None) -> str | None:
        return None if site_id is None else site_names.get(site_id, str(site_id))

    status = entry.status if entry.status is not None else GROUP_SITE_FOLLOW
    return {
        "group": entry.group_name,
        "site": site(entry.site_id),
        "status": _GROUP_SITE_STATUS_NAMES.get(status, str(status)),
        "failover_site": site(entry.failover_site_id),
        "failover_site_id": entry.failover_site_id,
        "status_changed": micros_to_iso(entry.status_changed_us),
    }


@group.group("site")
def group_site() -> None:
    """A group's state in a site (`group_sites`): its failover site and whether it is failed over."""


@group_site.command("set")
@click.option("--status", type=click.Choice(sorted(GROUP_SITE_STATUSES)),
              help="follow: served where the site's status says; failover: served in the failover site.")
@click.option("--failover-site", metavar="SITE", help="Where the group's users go when they leave SITE.")
@click.option("--no-failover-site", is_flag=True, help="Forget the failover site (chosen by hash again).")
@click.argument("site")
@click.argument("name", metavar="GROUP")
@pass_ctx
def group_site_set(ctx: ClusterContext, status: str | None, failover_site: str | None, no_failover_site: bool,
                   site: str, name: str) -> None:
    """Set GROUP's status and/or failover site for its users whose home is SITE."""
    if status is None and failover_site is None and not no_failover_site:
        raise CommandError("nothing to set: give --status, --failover-site or --no-failover-site")
    if failover_site is not None and no_failover_site:
        raise CommandError("give either --failover-site or --no-failover-site")
    check.entity_name(name, "group name")

    async def action(db: GeoDB) -> None:
        home = await site_by_name(db, site)
        current = await db.group_site_get(name, home.id) or GroupSite(name, home.id)
        new = current
        if status is not None:
            new = replace(new, status=GROUP_SITE_STATUSES[status])
        if failover_site is not None:
            target = await site_by_name(db, failover_site)
            if target.id == home.id:
                raise CommandError("a group cannot fail over to its own site")
            new = replace(new, failover_site_id=target.id)
        if no_failover_site:
            new = replace(new, failover_site_id=None)
        await db.group_site_put(new)

    ctx.run(action)


@group_site.command("list")
@click.argument("name", metavar="GROUP")
@pass_ctx
def group_site_list(ctx: ClusterContext, name: str) -> None:
    """GROUP's rows in every site."""

    async def action(db: GeoDB) -> list[dict[str, Any]]:
        sites = {s.id: s.name for s in await db.site_list()}
        return [group_site_record(e, sites) for e in await db.group_site_list(name)]

    ctx.emit_list(ctx.run(action), GROUP_SITE_COLUMNS)


@group_site.command("remove")
@click.argument("site")
@click.argument("name", metavar="GROUP")
@pass_ctx
def group_site_remove(ctx: ClusterContext, site: str, name: str) -> None:
    """Delete GROUP's row for SITE: the group follows the site again and fails over by hash."""

    async def action(db: GeoDB) -> None:
        home = await site_by_name(db, site)
        if await db.group_site_get(name, home.id) is None:
            raise CommandError(f"group '{name}' has no row for site '{site}'")
        await db.group_site_delete(name, home.id)

    ctx.run(action)


# -- users --------------------------------------------------------------------------------------


@click.group()
def user() -> None:
    """Users: move, status, delete, list, import, access."""


@user.command("move")
@click.option("--direct", is_flag=True, help="Write the new placement at once, no migration (testing only).")
@click.option("--site", metavar="SITE", help="Target site (default: the user's, else cluster_local_site).")
@click.argument("username", metavar="USER")
@click.argument("group_name", metavar="GROUP")
@click.argument("failover_group", metavar="[FAILOVER_GROUP]", required=False)
@pass_ctx
def user_move(
    ctx: ClusterContext,
    direct: bool,
    site: str | None,
    username: str,
    group_name: str,
    failover_group: str | None,
) -> None:
    """Move USER to GROUP (and FAILOVER_GROUP); the move runs on the user's next access."""
    check.entity_name(username, "user name")
    check.entity_name(group_name, "group name")
    if failover_group is not None:
        check.entity_name(failover_group, "failover group name")

    async def action(db: GeoDB) -> None:
        current = await db.user_get(username)
        if current is None and not direct:
            raise CommandError(f"user '{username}' does not exist (use --direct to place a new user)")
        if site is not None:
            site_id = (await site_by_name(db, site)).id
        elif current is not None and current.preferred_site_id is not None:
            site_id = current.preferred_site_id
        else:
            site_id = (await site_by_name(db, ctx.local_site_name())).id
        failover = failover_group
        if failover is None and current is not None:
            failover = current.failover_site_group_name
        if direct:
            await db.user_put(
                username,
                group_name=group_name,
                preferred_site_id=site_id,
                failover_site_group_name=failover,
                moving_group_name=None,
                moving_preferred_site_id=None,
                moving_failover_site_group_name=None,
            )
        else:
            await db.user_start_move(username, group_name, site_id, failover)

    ctx.run(action)


@user.command("status")
@click.argument("username", metavar="USER")
@pass_ctx
def user_status(ctx: ClusterContext, username: str) -> None:
    """Show one user's placement."""
    record = ctx.run(lambda db: user_status_record(db, username))
    if not ctx.json_output:
        last = record.pop("last_backends")
        record["last_backends"] = [f"{s}={h}" for s, h in last.items()]
    ctx.emit_record(record)


async def user_status_record(db: GeoDB, username: str) -> dict[str, Any]:
    """`user status USER`: the user's placement and the last backend per site."""
    found = await db.user_get(username)
    if found is None:
        raise CommandError(f"user '{username}' does not exist")
    sites, hosts = await _lookup_names(db)
    record = user_record(found, sites)
    record["last_backends"] = {
        sites.get(us.site_id, str(us.site_id)): hosts.get(us.backend_id, str(us.backend_id))
        for us in await db.user_sites_list(username)
        if us.backend_id is not None
    }
    return record


@user.command("delete")
@click.argument("username", metavar="USER")
@pass_ctx
def user_delete(ctx: ClusterContext, username: str) -> None:
    """Delete a user's GeoDB record (it is recreated on the next login)."""

    async def action(db: GeoDB) -> None:
        if await db.user_get(username) is None:
            raise CommandError(f"user '{username}' does not exist")
        await db.user_delete(username)

    ctx.run(action)


@user.command("list")
@click.argument("mask", required=False)
@pass_ctx
def user_list(ctx: ClusterContext, mask: str | None) -> None:
    """List users, optionally only names matching MASK (* and ? wildcards). Reads the whole table."""

    async def action(db: GeoDB) -> list[dict[str, Any]]:
        sites = {s.id: s.name for s in await db.site_list()}
        return [
            user_record(u, sites)
            for u in await db.user_list_all()
            if mask is None or fnmatch.fnmatchcase(u.username, mask)
        ]

    ctx.emit_list(ctx.run(action), USER_COLUMNS)
