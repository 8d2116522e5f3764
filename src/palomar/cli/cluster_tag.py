"""`palomar cluster tag ...`: tags that link sites to a shard of users (no in-use checks, as in Palomar)."""

from __future__ import annotations

import uuid

import click

from palomar.cli.cluster_context import ClusterContext, CommandError, pass_ctx, tag_by_name_or_id
from palomar.cluster import validation as check
from palomar.cluster.model import Tag
from palomar.geodb.repository import GeoDB


@click.group()
def tag() -> None:
    """Tags: create, delete, update, list."""


@tag.command("create")
@click.option("--id", "tag_id", metavar="ID", help="Reuse the ID of a previously deleted tag.")
@click.argument("name")
@pass_ctx
def tag_create(ctx: ClusterContext, tag_id: str | None, name: str) -> None:
    """Create a tag."""
    check.entity_name(name, "tag name")
    new_id = check.parse_uuid(tag_id, "tag ID") if tag_id else uuid.uuid4()

    async def action(db: GeoDB) -> Tag:
        if await db.tag_get_by_name(name) is not None:
            raise CommandError(f"tag '{name}' already exists")
        new = Tag(id=new_id, name=name)
        if not await db.tag_create(new):
            raise CommandError(f"a tag with ID {new_id} already exists")
        return new

    created = ctx.run(action)
    ctx.emit_result({"name": created.name, "id": created.id}, str(created.id))


@click.command("delete")
@click.argument("tag_ref", metavar="NAME|ID")
@pass_ctx
def tag_delete(ctx: ClusterContext, tag_ref: str) -> None:
    """Delete a tag (remove it from sites first; nothing checks that)."""

    async def action(db: GeoDB) -> None:
        await db.tag_delete((await tag_by_name_or_id(db, tag_ref)).id)

    ctx.run(action)


tag.add_command(tag_delete, "delete")
tag.add_command(tag_delete, "remove")


@tag.command("update")
@click.option("--name", "new_name", metavar="NAME", help="New name.")
@click.argument("tag_ref", metavar="NAME|ID")
@pass_ctx
def tag_update(ctx: ClusterContext, new_name: str | None, tag_ref: str) -> None:
    """Rename a tag."""
    if new_name is None:
        raise CommandError("nothing to update: give --name")
    check.entity_name(new_name, "tag name")

    async def action(db: GeoDB) -> None:
        found = await tag_by_name_or_id(db, tag_ref)
        other = await db.tag_get_by_name(new_name)
        if other is not None and other.id != found.id:
            raise CommandError(f"tag '{new_name}' already exists")
        await db.tag_update(found.id, new_name)

    ctx.run(action)


@tag.command("list")
@pass_ctx
def tag_list(ctx: ClusterContext) -> None:
    """List tags."""
    ctx.emit_list(ctx.run(tag_records), ("name", "id"))


async def tag_records(db: GeoDB) -> list[dict[str, object]]:
    """`tag list`: the records `--json` prints."""
    return [{"name": t.name, "id": t.id} for t in await db.tag_list()]
