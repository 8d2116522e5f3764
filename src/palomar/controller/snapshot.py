"""Reading one controller snapshot from the GeoDB: partition queries of the controller's site only."""

from __future__ import annotations

from palomar.cluster.features import FEATURE_SECTION
from palomar.controller.decide import Snapshot
from palomar.geodb.repository import GeoDB


async def settings_table_has_rows(db: GeoDB) -> bool:
    """Whether `cluster_settings` holds any row at all (palomar's reading of "the table exists").

    A scan, but of a table with a handful of rows; it is only needed while the controller's
    own section is empty.
    """
    return bool(await db.engine.scan("cluster_settings"))


async def read_snapshot(db: GeoDB, site_name: str, now: float) -> Snapshot | None:
    """The site's backends, its proxies' statistics and the feature settings; None if no such site."""
    site = await db.site_get_by_name(site_name)
    if site is None:
        return None
    backends = tuple(await db.backend_list(site.id))
    stats = tuple(await db.proxy_dest_stats_list(site.id))
    settings = tuple(await db.setting_list(FEATURE_SECTION))
    present = bool(settings) or await settings_table_has_rows(db)
    return Snapshot(site, backends, stats, settings, present, now)
