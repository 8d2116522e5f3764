"""`palomar cluster localdb ...`: inspect and clean this server's LocalDB (debugging only)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from palomar.cli.cluster_context import ClusterContext, CommandError, pass_ctx
from palomar.localdb import LocalDB, LocalDBError, LocalGroup, LocalUser

USER_COLUMNS = ("group", "username", "redirect_host", "redirect_group", "last_update")
GROUP_COLUMNS = ("name", "redirect_host", "last_update")
T = TypeVar("T")


def _record(entry: LocalUser | LocalGroup) -> dict[str, Any]:
    return dataclasses.asdict(entry)


def _with_localdb(ctx: ClusterContext, action: Callable[[LocalDB], T]) -> T:
    """Open the LocalDB at cluster_localdb_path (never creating one), run `action`, close it."""
    path = ctx.setting("cluster_localdb_path")
    if not path:
        raise CommandError("cluster_localdb_path is not set in the config")
    if not os.path.isfile(path):
        raise CommandError(f"LocalDB {path} does not exist")
    try:
        with LocalDB(path) as db:
            return action(db)
    except LocalDBError as err:
        raise CommandError(str(err)) from None


@click.group()
def localdb() -> None:
    """This server's LocalDB: cached users and groups, move redirects."""


@localdb.group("user")
def localdb_user() -> None:
    """LocalDB user rows."""


@localdb_user.command("status")
@click.argument("group_name", metavar="GROUP")
@click.argument("username", metavar="USER")
@pass_ctx
def localdb_user_status(ctx: ClusterContext, group_name: str, username: str) -> None:
    """Show the LocalDB row of USER in GROUP."""
    entry = _with_localdb(ctx, lambda db: db.user_get(group_name, username))
    if entry is None:
        raise CommandError(f"user '{username}' of group '{group_name}' is not in the LocalDB")
    ctx.emit_record(_record(entry))


@localdb_user.command("list")
@click.argument("mask", required=False)
@pass_ctx
def localdb_user_list(ctx: ClusterContext, mask: str | None) -> None:
    """List LocalDB user rows, optionally only user names matching MASK (* and ? wildcards)."""
    entries = _with_localdb(ctx, lambda db: db.user_list(mask))
    ctx.emit_list([_record(e) for e in entries], USER_COLUMNS)


@localdb_user.command("remove")
@click.argument("group_name", metavar="GROUP")
@click.argument("username", metavar="USER")
@pass_ctx
def localdb_user_remove(ctx: ClusterContext, group_name: str, username: str) -> None:
    """Remove USER of GROUP from the LocalDB."""
    if not _with_localdb(ctx, lambda db: db.user_remove(group_name, username)):
        raise CommandError(f"user '{username}' of group '{group_name}' is not in the LocalDB")


@localdb.group("group")
def localdb_group() -> None:
    """LocalDB group rows."""


@localdb_group.command("status")
@click.argument("group_name", metavar="GROUP")
@pass_ctx
def localdb_group_status(ctx: ClusterContext, group_name: str) -> None:
    """Show the LocalDB row of GROUP."""
    entry = _with_localdb(ctx, lambda db: db.group_get(group_name))
    if entry is None:
        raise CommandError(f"group '{group_name}' is not in the LocalDB")
    ctx.emit_record(_record(entry))


@localdb_group.command("list")
@click.argument("mask", required=False)
@pass_ctx
def localdb_group_list(ctx: ClusterContext, mask: str | None) -> None:
    """List LocalDB group rows, optionally only names matching MASK (* and ? wildcards)."""
    entries = _with_localdb(ctx, lambda db: db.group_list(mask))
    ctx.emit_list([_record(e) for e in entries], GROUP_COLUMNS)


@localdb_group.command("remove")
@click.argument("group_name", metavar="GROUP")
@pass_ctx
def localdb_group_remove(ctx: ClusterContext, group_name: str) -> None:
    """Remove GROUP from the LocalDB."""
    if not _with_localdb(ctx, lambda db: db.group_remove(group_name)):
        raise CommandError(f"group '{group_name}' is not in the LocalDB")
