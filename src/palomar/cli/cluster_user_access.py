"""`palomar cluster user access`: where each user would land now, computed without writing anything.

It runs the proxy's own routing (`proxy.router.decide_login`: site selection, then group ->
backend) on fresh GeoDB reads, as a proxy of `cluster_local_site` would, so the answer is the
proxy's answer at this moment: a user served in another site shows that site and no backend; a new user shows the group it would join and
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
from palomar.cluster.model import Group, GroupSite, SiteView, User
from palomar.cluster.routing import Assign, Failover, OtherSite, Routed
from palomar.cluster.site_selection import SiteState, follow_site
from palomar.config.director_transition import transition_from_config
from palomar.geodb.repository import GeoDB
from palomar.proxy.router import decide_login

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
    """Fresh GeoDB reads for one invocation (no LocalDB cache), each row read once."""

    def __init__(self, db: GeoDB) -> None:
        self.db = db
        self.groups: dict[tuple[UUID, str], Group | None] = {}
        self.group_sites: dict[tuple[str, UUID], GroupSite | None] = {}

    async def group(self, site_id: UUID, name: str) -> Group | None:
        if (site_id, name) not in self.groups:
            self.groups[(site_id, name)] = await self.db.group_get(site_id, name)
        return self.groups[(site_id, name)]

    async def group_site(self, group_name: str, site_id: UUID) -> GroupSite | None:
        if (group_name, site_id) not in self.group_sites:
            self.group_sites[(group_name, site_id)] = await self.db.group_site_get(group_name, site_id)
        return self.group_sites[(group_name, site_id)]


async def local_routing_state(db: GeoDB, local_site: str) -> tuple[SiteView, SiteState]:
    """The local site's backends and every site with the local site's reachability rows."""
    site = await site_by_name(db, local_site)
    return SiteView(site, tuple(await db.backend_list(site.id))), await db.site_state(site.id)


def _pending(decision: Routed, view: SiteView, user: User | None) -> str | None:
    parts = []
    write = decision.user_write
    if write is not None and (user is None or not user.group_name):
        parts.append(f"new user joins {write.group_name}")
    if write is not None and write.preferred_site_id is not None and (user is None or user.preferred_site_id is None):
        parts.append(f"homed in {view.site.name}")
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
    """One record per user: where a proxy of `local_site` would route them now (nothing is written).

    `director` (the proxy's cluster_director_transition_config) applies in the local site only.
    """
    reader = _Reader(db)
    states: dict[str, tuple[SiteView, SiteState]] = {}

    async def state_of(site_name: str) -> tuple[SiteView, SiteState]:
        if site_name not in states:
            states[site_name] = await local_routing_state(db, site_name)
        return states[site_name]

    records = []
    for username in names:
        user = await db.user_get(username)
        view, state = await state_of(local_site)
        decision = await decide_login(reader, username, user, state, view, group_count=group_count, now=now,
                                      director=director)
        visited, path, vias = [view.site.id], [view.site.name], []
        # As the proxy relays to the other site's load balancer, whose proxy decides again there.
        loop = None
        while isinstance(decision, OtherSite):
            loop = follow_site(visited, decision.choice.site.id)
            if loop is not None:
                break
            visited.append(decision.choice.site.id)
            path.append(decision.choice.site.name)
            vias.append("relayed" if decision.choice.via == "home" else decision.choice.via)
            view, state = await state_of(decision.choice.site.name)
            decision = await decide_login(reader, username, user, state, view, group_count=group_count, now=now)
        record: dict[str, Any] = {"user": username, "new_user": user is None or not user.group_name,
                                  "sites": path}
        if isinstance(decision, Routed):
            choice = decision.site_choice
            if choice is not None and choice.via != "home" and choice.via not in vias[-1:]:
                vias.append(choice.via)
            record.update(site=view.site.name, group=decision.group_name, backend=decision.backend.host,
                          backend_id=decision.backend.id, via="/".join([*vias, decision.via]),
                          pending=_pending(decision, view, user), error=None)
        elif isinstance(decision, OtherSite):
            record.update(site=None, group=None, backend=None, backend_id=None, via=None, pending=None,
                          error=loop)
        else:
            record.update(site=None, group=None, backend=None, backend_id=None, via=None, pending=None,
                          error=decision.reason)
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
