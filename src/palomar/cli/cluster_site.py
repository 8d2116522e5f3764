"""`palomar cluster site ...`: sites, their status, force-move, recover, groups pool and reachability."""

from __future__ import annotations

import re
import uuid
from typing import Any
from uuid import UUID

import click

from palomar.cli.cluster_context import (
    NUMERIC_ARGS,
    ClusterContext,
    CommandError,
    pass_ctx,
    self_or_given,
    site_by_name,
    tag_by_name_or_id,
)
from palomar.cli.cluster_force_move import ForceMoveSubject, add_force_move_group
from palomar.cluster import validation as check
from palomar.cluster.model import ForceMove, Group, Site
from palomar.geodb.repository import GeoDB

SITE_COLUMNS = ("name", "id", "status", "load_balancer", "tag", "force_move", "recover")
_DEFAULT_GROUP = re.compile(r"^default-[1-9][0-9]*$")


def _self_or_name(self_flag: bool, name: str | None, ctx: ClusterContext) -> str:
    """`--self | NAME`: exactly one of them; --self means cluster_local_site."""
    return self_or_given(self_flag, name, "site name", ctx.local_site_name)


def site_record(site: Site, site_names: dict[UUID, str], tag_names: dict[UUID, str]) -> dict[str, Any]:
    """One site as shown by `status`, `list` and `--json` (IDs resolved to names where known)."""
    fm = site.force_move
    dest = [site_names.get(UUID(d), d) if check.looks_like_uuid(d) else d for d in fm.dest] if fm else []
    return {
        "name": site.name,
        "id": site.id,
        "status": site.status,
        "load_balancer": site.load_balancer,
        "tag": tag_names.get(site.tag, str(site.tag)) if site.tag else None,
        "force_move": f"{fm.percentage}% -> {','.join(dest)}" if fm else None,
        "force_move_id": fm.id if fm else None,
        "force_move_percentage": fm.percentage if fm else None,
        "force_move_dest": dest,
        "recover": f"{site.recover_percentage}%" if site.recover_id is not None else None,
        "recover_id": site.recover_id,
        "recover_percentage": site.recover_percentage,
    }


async def _names(db: GeoDB) -> tuple[dict[UUID, str], dict[UUID, str]]:
    sites = {s.id: s.name for s in await db.site_list()}
    tags = {t.id: t.name for t in await db.tag_list()}
    return sites, tags


@click.group()
def site() -> None:
    """Sites: add, remove, update, status, list, init, force-move, recover, reachability."""


@site.command("add")
@click.option("--id", "site_id", metavar="ID", help="Reuse the ID of a previously removed site.")
@click.option("--tag", metavar="TAG", help="Tag (name or ID) linking the site to a shard.")
@click.option("--load-balancer", metavar="HOST", help="Where proxies of other sites connect.")
@click.argument("name")
@pass_ctx
def site_add(
    ctx: ClusterContext, site_id: str | None, tag: str | None, load_balancer: str | None, name: str
) -> None:
    """Add a site (status online)."""
    check.entity_name(name, "site name")
    new_id = check.parse_uuid(site_id, "site ID") if site_id else uuid.uuid4()
    lb = check.load_balancer(load_balancer) if load_balancer is not None else None

    async def action(db: GeoDB) -> Site:
        if await db.site_get_by_name(name) is not None:
            raise CommandError(f"site '{name}' already exists")
        tag_id = (await tag_by_name_or_id(db, tag)).id if tag else None
        new = Site(id=new_id, name=name, status="online", load_balancer=lb, tag=tag_id)
        if not await db.site_add(new):
            raise CommandError(f"a site with ID {new_id} already exists")
        return new

    created = ctx.run(action)
    ctx.emit_result({"name": created.name, "id": created.id, "status": created.status}, str(created.id))


@site.command("remove")
@click.argument("name")
@pass_ctx
def site_remove(ctx: ClusterContext, name: str) -> None:
    """Remove a site (no safety checks: remove its backends and users' references first)."""

    async def action(db: GeoDB) -> None:
        found = await site_by_name(db, name)
        await db.site_remove(found.id)

    ctx.run(action)


@site.command("update")
@click.option("--status", metavar="online|offline|standby|evacuate", help="New status (resets force-move).")
@click.option("--load-balancer", metavar="HOST", help="New load balancer address.")
@click.option("--name", "new_name", metavar="NAME", help="Rename (keep cluster_local_site in sync).")
@click.option("--self", "self_flag", is_flag=True, help="The site of this host (cluster_local_site).")
@click.argument("name", required=False)
@pass_ctx
def site_update(
    ctx: ClusterContext,
    status: str | None,
    load_balancer: str | None,
    new_name: str | None,
    self_flag: bool,
    name: str | None,
) -> None:
    """Change a site's status, load balancer or name."""
    status = check.site_status(status) if status is not None else None
    lb = check.load_balancer(load_balancer) if load_balancer is not None else None
    if new_name is not None:
        check.entity_name(new_name, "site name")
    if status is None and lb is None and new_name is None:
        raise CommandError("nothing to update: give --status, --load-balancer or --name")
    target = _self_or_name(self_flag, name, ctx)

    async def action(db: GeoDB) -> None:
        found = await site_by_name(db, target)
        if new_name is not None and new_name != found.name and await db.site_get_by_name(new_name):
            raise CommandError(f"site '{new_name}' already exists")
        fields: dict[str, Any] = {}
        if lb is not None:
            fields["load_balancer"] = lb
        if new_name is not None:
            fields["name"] = new_name
        await db.site_update(found.id, **fields)
        if status is not None and status != found.status:
            await db.site_set_status(found.id, status)

    ctx.run(action)


@site.command("status")
@click.argument("name")
@pass_ctx
def site_status(ctx: ClusterContext, name: str) -> None:
    """Show one site."""

    async def action(db: GeoDB) -> dict[str, Any]:
        found = await site_by_name(db, name)
        sites, tags = await _names(db)
        record = site_record(found, sites, tags)
        backends = await db.backend_list(found.id)
        record["backends"] = len(backends)
        record["backends_online"] = sum(1 for b in backends if b.online)
        record["groups"] = len(await db.group_list(found.id))
        return record

    ctx.emit_record(ctx.run(action))


@site.command("list")
@pass_ctx
def site_list(ctx: ClusterContext) -> None:
    """List every site."""
    ctx.emit_list(ctx.run(site_records), SITE_COLUMNS)


async def site_records(db: GeoDB) -> list[dict[str, Any]]:
    """`site list`: the records `--json` prints."""
    sites, tags = await _names(db)
    return [site_record(s, sites, tags) for s in await db.site_list()]


@site.command("init")
@click.option("--update", "recreate", is_flag=True, help="Delete and recreate the pool; unassigns users.")
@click.option("--self", "self_flag", is_flag=True, help="The site of this host (cluster_local_site).")
@click.argument("name", required=False)
@pass_ctx
def site_init(ctx: ClusterContext, recreate: bool, self_flag: bool, name: str | None) -> None:
    """Pre-create the default-1..N groups (N = cluster_default_group_count) of a site."""
    target = _self_or_name(self_flag, name, ctx)
    count_text = ctx.setting("cluster_default_group_count")
    try:
        count = int(count_text)
    except ValueError:
        raise CommandError(f"cluster_default_group_count {count_text!r} is not a number") from None
    if count < 1:
        raise CommandError("cluster_default_group_count must be at least 1")
    wanted = [f"default-{i}" for i in range(1, count + 1)]

    async def action(db: GeoDB) -> dict[str, Any]:
        found = await site_by_name(db, target)
        deleted = unassigned = 0
        if recreate:
            ctx.warn(
                f"--update deletes the default groups of site '{found.name}' and unassigns their users; "
                "users are re-grouped on their next login"
            )
            for old in await db.group_list(found.id):
                if _DEFAULT_GROUP.match(old.name):
                    await db.group_delete(found.id, old.name)
                    await db.group_site_delete(old.name, found.id)
                    deleted += 1
            for user in await db.user_list_all():
                in_pool = bool(user.group_name and _DEFAULT_GROUP.match(user.group_name))
                if user.preferred_site_id == found.id and in_pool:
                    await db.user_put(user.username, group_name=None)
                    unassigned += 1
        created = 0
        for group_name in wanted:
            applied, _ = await db.group_create_if_absent(Group(site_id=found.id, name=group_name))
            created += int(applied)
        return {
            "site": found.name,
            "groups": count,
            "created": created,
            "deleted": deleted,
            "unassigned_users": unassigned,
        }

    result = ctx.run(action)
    text = f"site '{result['site']}': {result['created']} of {count} default groups created"
    if recreate:
        text += f", {result['deleted']} deleted, {result['unassigned_users']} users unassigned"
    ctx.emit_result(result, text)


async def _store_force_move(db: GeoDB, found: Site, move: ForceMove) -> None:
    await db.site_force_move_set(found.id, move)


async def _clear_force_move(db: GeoDB, found: Site) -> None:
    await db.site_force_move_clear(found.id)


site_force_move = add_force_move_group(site, ForceMoveSubject(
    noun="site",
    argument="name",
    find=site_by_name,
    destination=lambda name, found, dest_name, target: str(target.id),
    store=_store_force_move,
    clear=_clear_force_move,
))


@site.command("recover", context_settings=NUMERIC_ARGS)
@click.option("--id", "recover_id", metavar="ID", help="Hash salt; by default the current one is kept.")
@click.argument("name")
@click.argument("percent")
@pass_ctx
def site_recover(ctx: ClusterContext, recover_id: str | None, name: str, percent: str) -> None:
    """Bring PERCENT% of a site's users back from their failover site; 100 ends the recovery."""
    pct = check.percentage(percent)
    given = check.parse_uuid(recover_id, "recover ID") if recover_id else None

    async def action(db: GeoDB) -> None:
        found = await site_by_name(db, name)
        if pct == 100 and given is None:
            await db.site_recover_clear(found.id)
            return
        salt = given or found.recover_id or uuid.uuid4()
        await db.site_recover_set(found.id, salt, pct)

    ctx.run(action)


@site.group("reachability")
def site_reachability() -> None:
    """Which sites can reach which (as reported by the sites themselves)."""


@site_reachability.command("list")
@click.argument("src", required=False)
@click.argument("dest", required=False)
@pass_ctx
def site_reachability_list(ctx: ClusterContext, src: str | None, dest: str | None) -> None:
    """List reachability rows: all, those reported by SRC, or SRC towards DEST."""

    async def action(db: GeoDB) -> list[dict[str, Any]]:
        sites = {s.id: s.name for s in await db.site_list()}
        sources = list(sites) if src is None else [(await site_by_name(db, src)).id]
        dest_id = (await site_by_name(db, dest)).id if dest is not None else None
        records = []
        for src_id in sources:
            if dest_id is not None:
                one = await db.reachability_get(src_id, dest_id)
                rows = [one] if one is not None else []
            else:
                rows = await db.reachability_list(src_id)
            for r in rows:
                records.append(
                    {
                        "src": sites.get(r.src_site_id, str(r.src_site_id)),
                        "dest": sites.get(r.dest_site_id, str(r.dest_site_id)),
                        "reachable": r.reachable,
                    }
                )
        return records

    ctx.emit_list(ctx.run(action), ("src", "dest", "reachable"))
