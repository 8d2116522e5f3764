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
    ctx.emit_list(ctx.run(lambda db: feature_records(db, site)), FEATURE_COLUMNS)


async def feature_records(db: GeoDB, site: str | None = None) -> list[dict[str, Any]]:
    """`feature list [SITE]`: site, feature, state and source of every feature."""
    sites = [await site_by_name(db, site)] if site is not None else await db.site_list()
    settings = await db.setting_list(FEATURE_SECTION)
    present = bool(settings) or await settings_table_has_rows(db)
    records = []
    for s in sites:
        for name in FEATURES:
            state, source = feature_source(settings, s.id, name, table_present=present)
            records.append({"site": s.name, "feature": name, "state": state, "source": source})
    return records


@feature.command("set")
@click.argument("site")
@click.argument("name", metavar="FEATURE")
@click.argument("state", metavar="on|dryrun|off")
@pass_ctx
def feature_set(ctx: ClusterContext, site: str, name: str, state: str) -> None:
    """Set FEATURE of SITE to on, dryrun (decisions only logged) or off."""
    value = checked_feature_state(name, state)
    if ctx.run(lambda db: set_feature(db, site, name, value)):
        ctx.warn(FIRST_SETTING_WARNING)


FIRST_SETTING_WARNING = ("cluster_settings had no rows, so every feature of every site was on; "
                         "from now on a feature without a setting is off")


def checked_feature_state(name: str, state: str) -> str:
    """The state to store for FEATURE, or CommandError naming what is wrong."""
    if name not in FEATURES:
        raise CommandError(f"unknown feature '{name}' (known: {', '.join(FEATURES)})")
    value = state.strip().lower()
    if value not in FEATURE_STATES:
        raise CommandError(f"invalid state '{state}' (use one of: {', '.join(FEATURE_STATES)})")
    return value


async def set_feature(db: GeoDB, site: str, name: str, value: str) -> bool:
    """`feature set` with a checked state; True when this was the first row of cluster_settings
    (every feature of every site was on until then: FIRST_SETTING_WARNING)."""
    found = await site_by_name(db, site)
    first = not await settings_table_has_rows(db)
    await db.setting_put(Setting(FEATURE_SECTION, name, value, site_id=found.id, backend_id=NO_ID))
    return first
