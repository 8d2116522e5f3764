"""`palomar cluster user access`: where each user would land now, computed without writing anything.

It runs the proxy's own pure routing (`cluster.routing.route_user`) on fresh GeoDB reads, so
the answer is the proxy's answer at this moment: a new user shows the group it would join and
the backend that group would be assigned; a group whose backend is down shows its failover.
The writes a proxy would make (user row, group assignment or failover) are reported, not done.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from uuid import UUID

import click

from palomar.cli import cluster_context
from palomar.cli.cluster_admin import send_admin, user_backends
from palomar.cli.cluster_context import ClusterContext, CommandError, pass_ctx, site_by_name
from palomar.cluster.director_transition import DirectorTransition
from palomar.cluster.model import Group, SiteView, User
from palomar.cluster.routing import Assign, Failover, Routed, group_of, route_user
from palomar.config.director_transition import transition_from_config
from palomar.geodb.repository import GeoDB

ACCESS_COLUMNS = ("user", "site", "group", "backend", "via", "pending")


def _address(host: str) -> str | None:
    """The first address `host` resolves to (an IP literal resolves to itself); None if it does not."""
    try:
        infos: Any = cluster_context.resolve_host(host)
        return str(infos[0][4][0])
    except (OSError, IndexError, TypeError, UnicodeError):
        return None


def _read_names(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CommandError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


class _Reader:
    """Fresh GeoDB reads for one invocation, each site and group read once."""

    def __init__(self, db: GeoDB, local_site: str) -> None:
        self.db = db
        self.local_site = local_site
        self.views: dict[UUID | str, SiteView] = {}
        self.groups: dict[tuple[UUID, str], Group | None] = {}

    async def view(self, user: User | None) -> SiteView:
        """The user's preferred site if it has one that exists, else this server's site."""
        site = None
        if user is not None and user.preferred_site_id is not None:
            key: UUID | str = user.preferred_site_id
            if key in self.views:
                return self.views[key]
            site = await self.db.site_get(user.preferred_site_id)
        if site is None:
            key = self.local_site
            if key in self.views:
                return self.views[key]
            site = await site_by_name(self.db, self.local_site)
        view = SiteView(site, tuple(await self.db.backend_list(site.id)))
        self.views[key] = view
        return view

    async def group(self, site_id: UUID, name: str) -> Group | None:
        if (site_id, name) not in self.groups:
            self.groups[(site_id, name)] = await self.db.group_get(site_id, name)
        return self.groups[(site_id, name)]


def _pending(decision: Routed, view: SiteView) -> str | None:
    parts = []
    if decision.user_write is not None:
        parts.append(f"new user joins {decision.user_write.group_name}")
    group_decision = decision.group_decision
    if isinstance(group_decision, Assign):
        parts.append(f"group gets backend {group_decision.backend.host}")
    elif isinstance(group_decision, Failover):
        failed = view.backend(group_decision.moved_from)
        source = failed.host if failed else str(group_decision.moved_from)
        parts.append(f"group fails over from {source}")
    return "; ".join(parts) or None


async def access_records(db: GeoDB, names: list[str], *, local_site: str, group_count: int,
                         now: float, director: DirectorTransition | None = None) -> list[dict[str, Any]]:
    """One record per user: where the proxy would route them now (nothing is written).

    `director` (the proxy's cluster_director_transition_config) applies in the local site only.
    """
    reader = _Reader(db, local_site)
    records = []
    for username in names:
        user = await db.user_get(username)
        view = await reader.view(user)
        here = director if view.site.name == local_site else None
        group_name = group_of(username, user, group_count, view, here)
        group = await reader.group(view.site.id, group_name)
        groups = {group_name: group} if group is not None else {}
        decision = route_user(username, user, groups, view, group_count=group_count, now=now, director=here)
        record: dict[str, Any] = {"user": username, "site": view.site.name, "group": group_name}
        if isinstance(decision, Routed):
            record.update(backend=decision.backend.host, backend_id=decision.backend.id, via=decision.via,
                          pending=_pending(decision, view), new_user=decision.user_write is not None,
                          error=None)
        else:
            record.update(backend=None, backend_id=None, via=None, pending=None,
                          new_user=user is None or not user.group_name, error=decision.reason)
        records.append(record)
    return records


def action_names(all_users: bool, from_file: list[str] | None, username: str | None) -> list[str] | None:
    """The named users, or None for all of them."""
    if all_users:
        return None
    return from_file if from_file is not None else [str(username).strip()]


async def _pending_user_moves(ctx: ClusterContext, db: GeoDB, names: list[str] | None) -> list[tuple[str, str]]:
    """(user, current backend host) for the users whose `user move` waits for their next access."""
    users = await db.user_list_all() if names is None else [u for n in names if (u := await db.user_get(n))]
    pending = []
    for user in users:
        if user.moving and user.group_name:
            pending.append((user.username, (await user_backends(ctx, db, user.username))[0].host))
    return pending


@click.command("access")
@click.option("-u", "--user", "username", metavar="USER", help="One user.")
@click.option("-A", "--all", "all_users", is_flag=True, help="Every user in the GeoDB users table.")
@click.option("-F", "--file", "file", metavar="FILE", help="Users from FILE, one per line.")
@click.option("-i", "--ip", "show_ip", is_flag=True, help="Also print the backend's IP address.")
@pass_ctx
def user_access(ctx: ClusterContext, username: str | None, all_users: bool, file: str | None,
                show_ip: bool) -> None:
    """Print the backend each user would be routed to now.

    Like a login, this is an access: a user with a pending `user move` has it carried out first, at
    the user's current backend (which closes the user's sessions there). Nothing else is written.
    """
    if sum((username is not None, all_users, file is not None)) != 1:
        raise CommandError("give exactly one of -u USER, -A or -F FILE")
    local_site = ctx.local_site_name()
    group_count = int(ctx.config()["cluster_default_group_count"])
    director = transition_from_config(ctx.config())
    from_file = _read_names(file) if file is not None else None
    if username is not None and not username.strip():
        raise CommandError("empty user name")

    async def action(db: GeoDB) -> list[dict[str, Any]]:
        if all_users:
            names = [u.username for u in await db.user_list_all()]
        else:
            names = from_file if from_file is not None else [str(username).strip()]
        return await access_records(db, names, local_site=local_site, group_count=group_count,
                                    now=time.time(), director=director)

    names_with_moves = ctx.run(
        lambda db: _pending_user_moves(ctx, db, action_names(all_users, from_file, username)))
    for name, host in names_with_moves:
        send_admin(ctx, host, "user-access", user=name)
    records = ctx.run(action)
    columns = ACCESS_COLUMNS
    if show_ip:
        for record in records:
            record["ip"] = _address(record["backend"]) if record["backend"] else None
        columns = ("user", "site", "group", "backend", "ip", "via", "pending")
    if not ctx.json_output:
        for record in records:
            if record["error"]:
                record["pending"] = record["error"]
    ctx.emit_list(records, columns)
    failed = [r["user"] for r in records if r["error"]]
    if failed:
        raise CommandError(f"{len(failed)} user(s) cannot be routed now: {', '.join(failed[:5])}"
                           + (" ..." if len(failed) > 5 else ""))
