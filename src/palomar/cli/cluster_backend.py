"""`palomar cluster backend ...`: register backends, change status and load factor, force-move."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import click

from palomar.cli import cluster_context
from palomar.cli.cluster_context import (
    NUMERIC_ARGS,
    ClusterContext,
    CommandError,
    backend_by_host,
    pass_ctx,
    site_by_name,
)
from palomar.cli.output import micros_to_iso
from palomar.cluster import validation as check
from palomar.cluster.model import Backend, ForceMove
from palomar.geodb.repository import GeoDB

BACKEND_COLUMNS = ("host", "site", "id", "status", "status_reason", "status_changed", "load_factor", "force_move")


def backend_record(backend: Backend, site_names: dict[UUID, str]) -> dict[str, Any]:
    fm = backend.force_move
    return {
        "host": backend.host,
        "site": site_names.get(backend.site_id, str(backend.site_id)),
        "id": backend.id,
        "site_id": backend.site_id,
        "status": backend.status,
        "status_reason": backend.status_reason,
        "status_changed": micros_to_iso(backend.status_changed_us),
        "load_factor": backend.load_factor,
        "user_count_approx": backend.user_count_approx,
        "last_moved_from": backend.last_moved_from,
        "last_moved_to": backend.last_moved_to,
        "force_move": f"{fm.percentage}% -> {','.join(fm.dest)}" if fm else None,
        "force_move_id": fm.id if fm else None,
        "force_move_percentage": fm.percentage if fm else None,
        "force_move_dest": list(fm.dest) if fm else [],
    }


def _self_or_host(self_flag: bool, host: str | None, ctx: ClusterContext) -> str:
    """`--self | HOST`: exactly one; --self means cluster_backend_name."""
    if self_flag and host:
        raise CommandError("give either --self or a backend host, not both")
    if self_flag:
        return ctx.local_backend_name()
    if not host:
        raise CommandError("missing backend host (or --self)")
    return host


@click.group()
def backend() -> None:
    """Backends: add, remove, update, status, list, force-move."""


@backend.command("add")
@click.option("--id", "backend_id", metavar="ID", help="Reuse the ID of a previously removed backend.")
@click.option("--site", metavar="SITE", help="Site of the backend (default: cluster_local_site).")
@click.option(
    "--self", "self_flag", is_flag=True, help="This host: cluster_backend_name in cluster_local_site."
)
@click.argument("name", required=False)
@pass_ctx
def backend_add(
    ctx: ClusterContext, backend_id: str | None, site: str | None, self_flag: bool, name: str | None
) -> None:
    """Register a backend by its DNS name (status standby, load factor 100)."""
    raw = _self_or_host(self_flag, name, ctx)
    host = check.resolvable_host_name(raw, cluster_context.resolve_host)
    new_id = check.parse_uuid(backend_id, "backend ID") if backend_id else uuid.uuid4()
    site_name = site or ctx.local_site_name()

    async def action(db: GeoDB) -> Backend:
        found_site = await site_by_name(db, site_name)
        if await db.backend_find_by_host(host) is not None:
            raise CommandError(f"backend '{host}' already exists")
        if await db.backend_find_by_id(new_id) is not None:
            raise CommandError(f"a backend with ID {new_id} already exists")
        new = Backend(id=new_id, site_id=found_site.id, host=host, status="standby", load_factor=100)
        if not await db.backend_add(new):
            raise CommandError(f"a backend with ID {new_id} already exists")
        return new

    created = ctx.run(action)
    if ctx.json_output:
        ctx.emit_record({"host": created.host, "id": created.id, "site": site_name, "status": created.status})
    else:
        click.echo(str(created.id))


@backend.command("remove")
@click.option("--self", "self_flag", is_flag=True, help="This host (cluster_backend_name).")
@click.argument("host", required=False)
@pass_ctx
def backend_remove(ctx: ClusterContext, self_flag: bool, host: str | None) -> None:
    """Unregister a backend."""
    target = _self_or_host(self_flag, host, ctx)

    async def action(db: GeoDB) -> None:
        found = await backend_by_host(db, target)
        await db.backend_remove(found.site_id, found.id)

    ctx.run(action)


@backend.command("update")
@click.option("--status", metavar="online|offline|standby", help="New status (resets force-move).")
@click.option("--load-factor", metavar="0..100", help="Share of new groups; 0 takes none.")
@click.option("--self", "self_flag", is_flag=True, help="This host (cluster_backend_name).")
@click.argument("host", required=False)
@pass_ctx
def backend_update(
    ctx: ClusterContext, status: str | None, load_factor: str | None, self_flag: bool, host: str | None
) -> None:
    """Change a backend's status or load factor."""
    status = check.backend_status(status) if status is not None else None
    factor = check.load_factor(load_factor) if load_factor is not None else None
    if status is None and factor is None:
        raise CommandError("nothing to update: give --status or --load-factor")
    target = _self_or_host(self_flag, host, ctx)

    async def action(db: GeoDB) -> None:
        found = await backend_by_host(db, target)
        if factor is not None:
            await db.backend_update(found.site_id, found.id, load_factor=factor)
        if status is not None and status != found.status:
            await db.backend_set_status(found.site_id, found.id, status, reason="admin")

    ctx.run(action)


@backend.command("status")
@click.option("--self", "self_flag", is_flag=True, help="This host (cluster_backend_name).")
@click.argument("host", required=False)
@pass_ctx
def backend_status(ctx: ClusterContext, self_flag: bool, host: str | None) -> None:
    """Show one backend, with its latest statistics."""
    target = _self_or_host(self_flag, host, ctx)

    async def action(db: GeoDB) -> dict[str, Any]:
        found = await backend_by_host(db, target)
        sites = {s.id: s.name for s in await db.site_list()}
        record = backend_record(found, sites)
        groups = await db.group_list(found.site_id)
        record["groups"] = sum(1 for g in groups if g.backend_id == found.id)
        stats = await db.backend_stats_get(found.site_id, found.id)
        record["stats"] = {s.key: s.value for s in stats}
        return record

    record = ctx.run(action)
    if not ctx.json_output:
        stats = record.pop("stats")
        record.update({f"stat {k}": v for k, v in stats.items()})
    ctx.emit_record(record)


@backend.command("list")
@click.option("--site", metavar="SITE", help="Only the backends of this site.")
@pass_ctx
def backend_list(ctx: ClusterContext, site: str | None) -> None:
    """List the backends of all sites, or of one."""

    async def action(db: GeoDB) -> list[dict[str, Any]]:
        sites = {s.id: s.name for s in await db.site_list()}
        if site is not None:
            backends = await db.backend_list((await site_by_name(db, site)).id)
        else:
            backends = await db.backend_list_all()
        return [backend_record(b, sites) for b in backends]

    ctx.emit_list(ctx.run(action), BACKEND_COLUMNS)


@backend.group("force-move")
def backend_force_move() -> None:
    """Move a share of a backend's users to other backends as they log in."""


@backend_force_move.command("start", context_settings=NUMERIC_ARGS)
@click.option("--id", "move_id", metavar="ID", help="Hash salt; reuse it to keep the same users selected.")
@click.argument("host")
@click.argument("percent")
@click.argument("dest", nargs=-1, required=True)
@pass_ctx
def backend_force_move_start(
    ctx: ClusterContext, move_id: str | None, host: str, percent: str, dest: tuple[str, ...]
) -> None:
    """Start moving PERCENT% of HOST's users to the DEST backends."""
    pct = check.percentage(percent)
    fm_id = check.parse_uuid(move_id, "force-move ID") if move_id else uuid.uuid4()

    async def action(db: GeoDB) -> None:
        found = await backend_by_host(db, host)
        dest_hosts: list[str] = []
        for dest_host in dest:
            target = await backend_by_host(db, dest_host)
            if target.id == found.id:
                raise CommandError(f"backend '{host}' cannot force-move to itself")
            if target.site_id != found.site_id:
                raise CommandError(f"backend '{dest_host}' is not in the same site as '{host}'")
            dest_hosts.append(target.host)
        await db.backend_force_move_set(found.site_id, found.id, ForceMove(fm_id, pct, tuple(dest_hosts)))

    ctx.run(action)


@backend_force_move.command("update", context_settings=NUMERIC_ARGS)
@click.argument("host")
@click.argument("percent")
@pass_ctx
def backend_force_move_update(ctx: ClusterContext, host: str, percent: str) -> None:
    """Change the percentage of a running force-move."""
    pct = check.percentage(percent)

    async def action(db: GeoDB) -> None:
        found = await backend_by_host(db, host)
        if found.force_move is None:
            raise CommandError(f"backend '{host}' has no force-move running")
        fm = found.force_move
        await db.backend_force_move_set(found.site_id, found.id, ForceMove(fm.id, pct, fm.dest))

    ctx.run(action)


@backend_force_move.command("stop")
@click.argument("host")
@pass_ctx
def backend_force_move_stop(ctx: ClusterContext, host: str) -> None:
    """Stop a force-move (nothing happens when none is running)."""

    async def action(db: GeoDB) -> None:
        found = await backend_by_host(db, host)
        await db.backend_force_move_clear(found.site_id, found.id)

    ctx.run(action)
