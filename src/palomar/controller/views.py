"""The data the REST API and the web UI show, built from the `palomar cluster` verbs' own functions.

Both front ends call only these and the verbs' functions, so a record means the same thing in
`palomar cluster --json`, in `/api/v1/` and on the page.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from palomar.cli.cluster_backend import backend_records
from palomar.cli.cluster_context import CommandError, site_by_name
from palomar.cli.cluster_feature import feature_records
from palomar.cli.cluster_group_user import group_records, user_status_record
from palomar.cli.cluster_user_access import access_records
from palomar.geodb.repository import GeoDB


async def moving_groups(db: GeoDB, site: str | None = None) -> list[dict[str, Any]]:
    """Groups whose move to `alt_backend` is requested or running."""
    return [g for g in await group_records(db, site) if g["moving"]]


async def site_overview(db: GeoDB, site: str) -> dict[str, Any]:
    """One site: its backends (with group count, sessions and gauges), moves and feature states."""
    found = await site_by_name(db, site)
    backends = await backend_records(db, site)
    groups = await group_records(db, site)
    per_backend = Counter(g["backend"] for g in groups)
    stats = await db.backend_stats_list(found.id)
    for b in backends:
        gauges = {s.key: s.value for s in stats.get(b["id"], [])}
        b["groups"] = per_backend.get(b["host"], 0)
        b["sessions"] = int(gauges.get("sessions_active", 0))
        b["stats"] = gauges
    return {
        "site": found.name,
        "site_id": found.id,
        "status": found.status,
        "backends": backends,
        "groups": len(groups),
        "moves": [g for g in groups if g["moving"]],
        "features": await feature_records(db, site),
    }


async def user_lookup(db: GeoDB, username: str, *, local_site: str, group_count: int) -> dict[str, Any]:
    """Where the user is (`user status`) and where the next login would land and why (`user access`,
    read-only: a pending user move is reported, not carried out)."""
    name = username.strip()
    if not name:
        raise CommandError("empty user name")
    try:
        status: dict[str, Any] | None = await user_status_record(db, name)
    except CommandError:
        status = None
    access = (await access_records(db, [name], local_site=local_site, group_count=group_count,
                                   now=time.time()))[0]
    return {"user": name, "known": status is not None, "status": status, "access": access}
