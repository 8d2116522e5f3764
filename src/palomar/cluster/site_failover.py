"""The `site-failover` feature: ramp a lost site's users to this site, and back when it returns. Pure.

A controller only manages its own site, and a site that cannot be reached cannot run its own
failover. So the controller of a *healthy* site acts for a lost one: when site T has been
unreachable from this site (its `site_reachability` row) for `after` seconds and this site is
T's failover site (the first online site by name other than T, so exactly one controller acts),
it starts T's site force-move towards this site at `step` percent and raises it by `step` every
`interval` up to 100 (a cold-cache spike at this site is what the ramp avoids). When T has been
reachable again for `recover_after` seconds, it ramps `site recover` of T from `step` to 100 the
same way and then clears both. See docs/design/controller.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from uuid import UUID, uuid5

from palomar.cluster.model import Site

FEATURE = "site-failover"


@dataclass(frozen=True)
class SiteFailoverSettings:
    after: float = 300.0
    recover_after: float = 300.0
    step: int = 10
    interval: float = 60.0


@dataclass(frozen=True)
class SiteLink:
    """How this site sees site T: reachable or not, and since when (Unix seconds)."""

    reachable: bool
    since: float


@dataclass(frozen=True)
class SiteAction:
    feature: str
    site_id: UUID
    site: str
    kind: Literal["force_move", "recover", "clear"]
    move_id: UUID | None
    percentage: int
    dest: tuple[str, ...]
    """Destination site IDs, as `site force-move` stores them (routing reads IDs)."""
    reason: str


def failover_site(lost: Site, sites: Sequence[Site]) -> Site | None:
    """The site that takes over `lost`: the first online one by name (one controller acts, not all)."""
    online = sorted((s for s in sites if s.id != lost.id and s.status == "online"), key=lambda s: s.name)
    return online[0] if online else None


def plan_site_failover(own: Site, sites: Sequence[Site], links: Mapping[UUID, SiteLink],
                       last_step: Mapping[UUID, float], now: float, s: SiteFailoverSettings) -> list[SiteAction]:
    actions: list[SiteAction] = []
    for site in sorted(sites, key=lambda x: x.name):
        link = links.get(site.id)
        if site.id == own.id or link is None:
            continue
        helper = failover_site(site, sites)
        if helper is None or helper.id != own.id:
            continue
        fm = site.force_move
        ours = fm is not None and str(own.id) in fm.dest
        due = now - last_step.get(site.id, float("-inf")) >= s.interval
        if not link.reachable and now - link.since >= s.after:
            if fm is None:
                move_id = uuid5(site.id, f"failover-{link.since}")
                actions.append(SiteAction(FEATURE, site.id, site.name, "force_move", move_id, min(s.step, 100),
                                          (str(own.id),), f"{site.name} unreachable for {now - link.since:.0f}s: "
                                          f"start moving {min(s.step, 100)}% of its users to {own.name}"))
            elif ours and fm.percentage < 100 and due:
                pct = min(100, fm.percentage + s.step)
                actions.append(SiteAction(FEATURE, site.id, site.name, "force_move", fm.id, pct, fm.dest,
                                          f"{site.name} still unreachable: force-move {fm.percentage}% -> {pct}%"))
        elif link.reachable and now - link.since >= s.recover_after and ours and due:
            assert fm is not None
            current = site.recover_percentage or 0
            if current >= 100:
                actions.append(SiteAction(FEATURE, site.id, site.name, "clear", None, 0, (),
                                          f"{site.name} recovered: all users back, force-move cleared"))
            else:
                pct = min(100, current + s.step)
                actions.append(SiteAction(FEATURE, site.id, site.name, "recover", fm.id, pct, (),
                                          f"{site.name} reachable for {now - link.since:.0f}s: recover "
                                          f"{current}% -> {pct}%"))
    return actions
