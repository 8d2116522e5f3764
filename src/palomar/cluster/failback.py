"""The `failback` feature: fill a backend that came back (or was added) up to its share. Pure.

A backend that goes offline loses its groups to their alternates; when it comes back nothing
moves them home, and a new backend starts empty. Failback looks at the backends that went online
within `window` and holds fewer groups than their load-factor share minus `tolerance`, and moves
groups to them from the backends furthest above their share, evenly spaced by
`groups_per_hour`. Convergence bound: every such backend ends with at least
`share - tolerance` groups. See docs/design/controller.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from palomar.cluster.model import Group
from palomar.cluster.planning import (
    GroupMove,
    Plan,
    PlanInput,
    pick_group,
    rate_budget,
    shares,
    targets,
)

FEATURE = "failback"


@dataclass(frozen=True)
class FailbackSettings:
    window: float = 86_400.0
    tolerance: int = 1
    groups_per_hour: int = 30
    min_residence: float = 300.0


def plan_failback(inp: PlanInput, s: FailbackSettings) -> Plan:
    pool = targets(inp)
    counts = dict(inp.counts)
    total = sum(counts.get(b.id, 0) for b in inp.backends)
    share = shares(pool, total)

    def deficit(b_id: UUID) -> float:
        return share[b_id] - counts.get(b_id, 0)

    receivers = [b for b in pool if inp.now - (b.status_changed_us or 0) / 1_000_000 <= s.window
                 and deficit(b.id) > s.tolerance]
    if not receivers:
        return Plan([], ["no returning backend below its share"])
    budget = rate_budget(inp.moves, FEATURE, inp.now, s.groups_per_hour)
    if budget < 1:
        return Plan([], [f"rate limit: {s.groups_per_hour} group(s) per hour"])
    spare: dict[UUID, list[Group]] = {}

    def movable_left(b_id: UUID) -> list[Group]:
        if b_id not in spare:
            spare[b_id] = inp.movable_on(b_id, s.min_residence)
        return spare[b_id]

    donors = [b for b in inp.backends if b.online and inp.by_backend.get(b.id)]
    moves: list[GroupMove] = []
    while len(moves) < budget:
        receivers = [b for b in receivers if deficit(b.id) > s.tolerance]
        if not receivers:
            break
        dest = min(receivers, key=lambda b: (-deficit(b.id), b.host))
        # a move helps while the donor's surplus and the receiver's deficit add up to more than
        # one group; a donor outside the pool (load factor 0) has a share of 0
        candidates = [b for b in donors if b.id != dest.id
                      and counts.get(b.id, 0) - share.get(b.id, 0.0) + deficit(dest.id) > 1]
        candidates.sort(key=lambda b: (share.get(b.id, 0.0) - counts.get(b.id, 0), b.host))
        source = next((b for b in candidates if movable_left(b.id)), None)
        if source is None:
            break
        group = pick_group(spare[source.id], inp.now)
        assert group is not None
        spare[source.id].remove(group)
        counts[source.id] -= 1
        counts[dest.id] = counts.get(dest.id, 0) + 1
        moves.append(GroupMove(FEATURE, group.name, source.id, dest.id,
                               f"{dest.host} holds {counts[dest.id] - 1} groups, share {share[dest.id]:.1f}: "
                               f"group {group.name} from {source.host} ({counts[source.id] + 1} groups, "
                               f"share {share.get(source.id, 0.0):.1f})"))
    held = [] if moves else ["no backend above its share has a movable group"]
    return Plan(moves, held)
