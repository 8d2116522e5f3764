"""`palomar cluster backend ...`: register backends, change status and load factor, force-move."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import click

from palomar.cli import cluster_context
from palomar.cli.cluster_context import (
    ClusterContext,
    CommandError,
    backend_by_host,
    pass_ctx,
    self_or_given,
    site_by_name,
)
from palomar.cli.cluster_force_move import ForceMoveSubject, add_force_move_group
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
    return self_or_given(self_flag, host, "backend host", ctx.local_backend_name)


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
    ctx.emit_result({"host": created.host, "id": created.id, "site": site_name, "status": created.status},
                    str(created.id))


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
    ctx.run(lambda db: update_backend(db, target, status, factor))


async def update_backend(db: GeoDB, host: str, status: str | None, factor: int | None) -> Backend:
    """`backend update`: the load factor, then the status (reason `admin`) if it changes; the backend
    as it was before. Arguments are already validated (`check.backend_status`, `check.load_factor`)."""
    found = await backend_by_host(db, host)
    if factor is not None:
        await db.backend_update(found.site_id, found.id, load_factor=factor)
    if status is not None and status != found.status:
        await db.backend_set_status(found.site_id, found.id, status, reason="admin")
    return found


@backend.command("status")
@click.option("--self", "self_flag", is_flag=True, help="This host (cluster_backend_name).")
@click.argument("host", required=False)
@pass_ctx
def backend_status(ctx: ClusterContext, self_flag: bool, host: str | None) -> None:
    """Show one backend, with its latest statistics."""
    target = _self_or_host(self_flag, host, ctx)
    record = ctx.run(lambda db: backend_status_record(db, target))
    if not ctx.json_output:
        stats = record.pop("stats")
        record.update({f"stat {k}": v for k, v in stats.items()})
    ctx.emit_record(record)


async def backend_status_record(db: GeoDB, host: str) -> dict[str, Any]:
    """`backend status HOST`: the backend, its group count and its latest statistics."""
    found = await backend_by_host(db, host)
    sites = {s.id: s.name for s in await db.site_list()}
    record = backend_record(found, sites)
    groups = await db.group_list(found.site_id)
    record["groups"] = sum(1 for g in groups if g.backend_id == found.id)
    stats = await db.backend_stats_get(found.site_id, found.id)
    record["stats"] = {s.key: s.value for s in stats}
    return record


@backend.command("list")
@click.option("--site", metavar="SITE", help="Only the backends of this site.")
@pass_ctx
def backend_list(ctx: ClusterContext, site: str | None) -> None:
    """List the backends of all sites, or of one."""
    ctx.emit_list(ctx.run(lambda db: backend_records(db, site)), BACKEND_COLUMNS)


async def backend_records(db: GeoDB, site: str | None = None) -> list[dict[str, Any]]:
    """`backend list [--site SITE]`: the records `--json` prints."""
    sites = {s.id: s.name for s in await db.site_list()}
    if site is not None:
        backends = await db.backend_list((await site_by_name(db, site)).id)
    else:
        backends = await db.backend_list_all()
    return [backend_record(b, sites) for b in backends]


def _same_site_destination(host: str, found: Backend, dest_host: str, target: Backend) -> str:
    if target.site_id != found.site_id:
        raise CommandError(f"backend '{dest_host}' is not in the same site as '{host}'")
    return target.host


async def _store_force_move(db: GeoDB, found: Backend, move: ForceMove) -> None:
    await db.backend_force_move_set(found.site_id, found.id, move)


async def _clear_force_move(db: GeoDB, found: Backend) -> None:
    await db.backend_force_move_clear(found.site_id, found.id)


backend_force_move = add_force_move_group(backend, ForceMoveSubject(
    noun="backend",
    argument="host",
    find=backend_by_host,
    destination=_same_site_destination,
    store=_store_force_move,
    clear=_clear_force_move,
))
