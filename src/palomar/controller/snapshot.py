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
    """The site's backends, groups, backend and proxy statistics, the feature settings, every site
    and this site's reachability rows; None if no such site. One partition query each (the sites
    table is small and scanned)."""
    sites = tuple(await db.site_list())
    site = next((s for s in sites if s.name == site_name), None)
    if site is None:
        return None
    backends = tuple(await db.backend_list(site.id))
    stats = tuple(await db.proxy_dest_stats_list(site.id))
    settings = tuple(await db.setting_list(FEATURE_SECTION))
    present = bool(settings) or await settings_table_has_rows(db)
    groups = tuple(await db.group_list(site.id))
    backend_stats = await db.backend_stats_list(site.id)
    reachability = tuple(await db.reachability_list(site.id))
    return Snapshot(site, backends, stats, settings, present, now, groups=groups, backend_stats=backend_stats,
                    sites=sites, reachability=reachability)
