"""`palomar cluster feature list|set`: the controller's feature states per site, in cluster_settings."""

from __future__ import annotations

from typing import Any

import click

from palomar.cli.cluster_context import ClusterContext, CommandError, pass_ctx, site_by_name
from palomar.cluster.features import FEATURE_SECTION, FEATURES, feature_source
from palomar.cluster.model import FEATURE_STATES, NO_ID, Setting
from palomar.controller.snapshot import settings_table_has_rows
from palomar.geodb.repository import GeoDB

FEATURE_COLUMNS = ("site", "feature", "state", "source")


@click.group()
def feature() -> None:
    """Controller features (health, evacuate, failback, balance, group-size, site-failover): on, dryrun, off."""


@feature.command("list")
@click.argument("site", required=False)
@pass_ctx
def feature_list(ctx: ClusterContext, site: str | None) -> None:
    """Show the effective state of every feature, for all sites or one."""

    async def action(db: GeoDB) -> list[dict[str, Any]]:
        sites = [await site_by_name(db, site)] if site is not None else await db.site_list()
        settings = await db.setting_list(FEATURE_SECTION)
        present = bool(settings) or await settings_table_has_rows(db)
        records = []
        for s in sites:
            for name in FEATURES:
                state, source = feature_source(settings, s.id, name, table_present=present)
                records.append({"site": s.name, "feature": name, "state": state, "source": source})
        return records

    ctx.emit_list(ctx.run(action), FEATURE_COLUMNS)


@feature.command("set")
@click.argument("site")
@click.argument("name", metavar="FEATURE")
@click.argument("state", metavar="on|dryrun|off")
@pass_ctx
def feature_set(ctx: ClusterContext, site: str, name: str, state: str) -> None:
    """Set FEATURE of SITE to on, dryrun (decisions only logged) or off."""
    if name not in FEATURES:
        raise CommandError(f"unknown feature '{name}' (known: {', '.join(FEATURES)})")
    value = state.strip().lower()
    if value not in FEATURE_STATES:
        raise CommandError(f"invalid state '{state}' (use one of: {', '.join(FEATURE_STATES)})")

    async def action(db: GeoDB) -> bool:
        found = await site_by_name(db, site)
        first = not await settings_table_has_rows(db)
        await db.setting_put(Setting(FEATURE_SECTION, name, value, site_id=found.id, backend_id=NO_ID))
        return first

    if ctx.run(action):
        ctx.warn("cluster_settings had no rows, so every feature of every site was on; "
                 "from now on a feature without a setting is off")
