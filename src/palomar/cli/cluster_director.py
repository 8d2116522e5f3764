"""`palomar cluster director import|transition-config`: the way in from a Dovecot director ring.

`transition-config` writes the file `cluster_director_transition_config` names from the ring that
`doveadm director status` prints, so that nobody copies vhost counts by hand.

The director's user directory (`doveadm director map`) is the truth of where each active
user's indexes are warm right now; it can differ from the ring for users assigned before the
ring last changed. Importing it puts each listed user in `director-<backend>-N`, a group on
the backend the director had chosen, so their first palomar login lands there.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from palomar.cli.cluster_context import ClusterContext, CommandError, pass_ctx, site_by_name
from palomar.cluster.director_hash import (
    DEFAULT_USERNAME_HASH,
    DirectorHashError,
    MailHost,
    check_username_hash,
    user_hash,
)
from palomar.cluster.director_transition import (
    DirectorOutputError,
    DirectorTransition,
    ImportPlan,
    parse_director_map,
    parse_director_status,
    plan_import,
    render_transition,
)
from palomar.cluster.model import Group, SiteView
from palomar.cluster.routing import choose_backend
from palomar.config.director_transition import load_transition, transition_from_config
from palomar.config.errors import ConfigError
from palomar.geodb.repository import GeoDB


@click.group("director")
def director() -> None:
    """The way in from a Dovecot 2.3 director ring (docs/director-migration.md)."""


def _read_text(source: str) -> str:
    try:
        if source == "-":
            return sys.stdin.read()
        with open(source, encoding="utf-8", errors="strict") as handle:
            return handle.read()
    except OSError as exc:
        raise CommandError(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{source} is not UTF-8 text") from None


def _transition(ctx: ClusterContext, path: str | None) -> DirectorTransition | None:
    try:
        return load_transition(path) if path else transition_from_config(ctx.config())
    except ConfigError as exc:
        raise CommandError("director transition config: " + "; ".join(str(i) for i in exc.issues)) from None


async def _apply(db: GeoDB, view: SiteView, plan: ImportPlan, now: float) -> dict[str, int]:
    """Create the plan's groups (each on its backend, unless it exists) and write its users' rows."""
    created = moved = 0
    groups = {p.group_name: p.backend for p in plan.placements}
    for name, backend in sorted(groups.items()):
        alt = choose_backend(name, view, frozenset({backend.id}))
        group = Group(site_id=view.site.id, name=name, backend_id=backend.id,
                      alt_backend_id=alt.id if alt else None, backend_changed_us=int(now * 1_000_000))
        applied, stored = await db.group_create_if_absent(group)
        if applied:
            created += 1
        elif stored.backend_id is None:
            await db.group_assign_backend(view.site.id, name, backend.id, group.alt_backend_id)
            created += 1
        elif stored.backend_id != backend.id:
            moved += 1  # the group was placed or moved since: its users follow it
    for placement in plan.placements:
        await db.user_put(placement.username, group_name=placement.group_name)
    return {"groups_created": created, "groups_elsewhere": moved}


@director.command("import")
@click.argument("map_file", metavar="MAP_FILE|-")
@click.option("--transition-config", "transition_path", metavar="FILE",
              help="Director transition file naming each mail server's backend "
                   "(default: cluster_director_transition_config; without either, "
                   "each mail server IP must be a backend name).")
@click.option("--dry-run", is_flag=True, help="Check and count, write nothing.")
@pass_ctx
def director_import(ctx: ClusterContext, map_file: str, transition_path: str | None, dry_run: bool) -> None:
    """Put each user of `doveadm director map` output on the backend the director chose.

    Users that already have a group are left as they are. Rows the director prints as
    `<unknown>` (users its userdb does not list) are counted and skipped: the transition
    config's ring places those users at their first login.
    """
    try:
        rows = parse_director_map(_read_text(map_file))
    except DirectorOutputError as exc:
        raise CommandError(f"{map_file}: {exc}") from None
    if not rows:
        raise CommandError(f"{map_file}: no `doveadm director map` rows")
    transition = _transition(ctx, transition_path)
    fmt = transition.ring.username_hash if transition else DEFAULT_USERNAME_HASH
    try:
        check_username_hash(fmt)
    except DirectorHashError as exc:
        raise CommandError(str(exc)) from None
    local_site = ctx.local_site_name()
    group_count = int(ctx.config()["cluster_default_group_count"])

    async def action(db: GeoDB) -> dict[str, Any]:
        site = await site_by_name(db, local_site)
        view = SiteView(site, tuple(await db.backend_list(site.id)))
        by_ip = dict(transition.backends) if transition else {b.host: b.host for b in view.backends}
        grouped = []
        for name in {row.user for row in rows}:
            user = await db.user_get(name)
            if user is not None and user.group_name:
                grouped.append(name)
        plan = plan_import(rows, backends_by_ip=by_ip, site_view=view, grouped_users=grouped,
                           group_count=group_count, user_hash=lambda name: user_hash(name, fmt))
        if plan.problems:
            shown = "; ".join(plan.problems[:5])
            more = f" (and {len(plan.problems) - 5} more)" if len(plan.problems) > 5 else ""
            raise CommandError(f"{map_file}: nothing imported: {shown}{more}")
        written = {"groups_created": 0, "groups_elsewhere": 0}
        if not dry_run:
            written = await _apply(db, view, plan, time.time())
        return {"site": site.name, "users": len(plan.placements), "already_grouped": len(plan.already_grouped),
                "unknown": plan.unknown_users, "dry_run": dry_run, **written}

    result = ctx.run(action)
    verb = "would import" if dry_run else "imported"
    ctx.emit_result(result, f"site '{result['site']}': {verb} {result['users']} users "
                            f"({result['groups_created']} groups created); {result['already_grouped']} already "
                            f"had a group; {result['unknown']} <unknown> rows skipped")


def _backend_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    names = {}
    for pair in pairs:
        ip, sep, name = pair.partition("=")
        if not sep or not ip.strip() or not name.strip():
            raise CommandError(f"--backend {pair!r}: expected IP=BACKEND_NAME")
        try:
            names[MailHost(ip.strip()).ip] = name.strip()
        except DirectorHashError as exc:
            raise CommandError(f"--backend {pair!r}: {exc}") from None
    return names


@director.command("transition-config")
@click.argument("status_file", metavar="STATUS_FILE|-")
@click.option("--backend", "backends", multiple=True, metavar="IP=NAME",
              help="The palomar backend name of a mail server (repeat; default: the IP itself).")
@click.option("--username-hash", default=DEFAULT_USERNAME_HASH, show_default=True, metavar="FORMAT",
              help="The directors' director_username_hash.")
def director_transition_config(status_file: str, backends: tuple[str, ...], username_hash: str) -> None:
    """Print a transition file for the ring `doveadm director status` shows.

    Write it where cluster_director_transition_config points (docs/director-migration.md).
    """
    try:
        check_username_hash(username_hash)
        hosts = parse_director_status(_read_text(status_file))
    except DirectorHashError as exc:
        raise CommandError(str(exc)) from None
    except DirectorOutputError as exc:
        raise CommandError(f"{status_file}: {exc}") from None
    if not hosts:
        raise CommandError(f"{status_file}: no `doveadm director status` rows")
    names = _backend_pairs(backends)
    unknown = sorted(set(names) - {h.ip for h in hosts})
    if unknown:
        raise CommandError(f"--backend names {', '.join(unknown)}, which the director status does not list")
    click.echo(render_transition(hosts, names, username_hash), nl=False)
