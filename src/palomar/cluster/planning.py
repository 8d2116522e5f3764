"""What the controller's planners share: their input, their output, targets and rate limits. Pure.

Every controller feature that moves something is a planner: a `PlanInput` (one site's backends
and groups, the load history, the recent moves, the clock) plus its settings in, a list of moves
out. Rate limits live inside the planners, computed from `PlanInput.moves`, so the same call
gives the same answer in the controller, in a test table and in `palomar cluster simulate`.
See docs/design/controller.md.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from uuid import UUID

from palomar.cluster.model import Backend, Group, Site

HOUR = 3600.0


@dataclass(frozen=True)
class LoadSample:
    """One backend's gauges (`backend_stats`) at `at` (Unix seconds)."""

    at: float
    values: Mapping[str, float]


@dataclass(frozen=True)
class MoveRecord:
    """A move a feature carried out (dryrun moves are not recorded: they moved nothing)."""

    feature: str
    subject: str
    """The group (or, for group-size, the user) moved."""
    source: UUID | None
    dest: UUID
    at: float


@dataclass(frozen=True)
class PlanInput:
    """One site as the planners see it at `now` (Unix seconds)."""

    site: Site
    backends: tuple[Backend, ...]
    groups: tuple[Group, ...]
    now: float
    samples: Mapping[UUID, Sequence[LoadSample]] = field(default_factory=dict)
    """Newest last, per backend: the controller's bounded history window."""
    seen: Mapping[UUID, int] = field(default_factory=dict)
    """Samples ever seen per backend (the warm-up counts these, not the bounded window)."""
    moves: tuple[MoveRecord, ...] = ()
    unhealthy: frozenset[UUID] = frozenset()
    """Backends failing reachability or health (a proxy's newest probe of them failed): never targets."""

    @cached_property
    def counts(self) -> dict[UUID, int]:
        """`group_counts(groups)`, computed once per input (planners copy it before changing it)."""
        return group_counts(self.groups, self.offline)

    @cached_property
    def offline(self) -> frozenset[UUID]:
        return frozenset(b.id for b in self.backends if b.status == "offline")

    @cached_property
    def by_backend(self) -> dict[UUID | None, list[Group]]:
        """The groups assigned to each backend (`backend_id`), computed once per input; read only."""
        index: dict[UUID | None, list[Group]] = {}
        for g in self.groups:
            index.setdefault(g.backend_id, []).append(g)
        return index

    def movable_on(self, backend_id: UUID, min_residence: float) -> list[Group]:
        return [g for g in self.by_backend.get(backend_id, ()) if movable(g, self.now, min_residence)]


def with_moves_requested(inp: PlanInput, moves: Sequence[GroupMove]) -> PlanInput:
    """`inp` as it will be once `moves` are requested (the groups moving), so a later planner of the
    same pass neither takes those groups again nor miscounts their backends. Updated in place of
    being recomputed: a site's groups are looked at once per pass, not once per planner."""
    if not moves:
        return inp
    planned = {m.group: m.dest for m in moves}
    counts = dict(inp.counts)
    index = dict(inp.by_backend)
    replaced: dict[str, Group] = {}
    for source in {m.source for m in moves}:
        fresh = []
        for g in index.get(source, ()):
            if g.name in planned:
                g = replace(g, alt_backend_id=planned[g.name], moving="planned")
                replaced[g.name] = g
                counts[source] = counts.get(source, 0) - 1  # type: ignore[index]
                counts[planned[g.name]] = counts.get(planned[g.name], 0) + 1
            fresh.append(g)
        index[source] = fresh
    groups = tuple(replaced.get(g.name, g) for g in inp.groups)
    result = replace(inp, groups=groups)
    result.__dict__["counts"] = counts  # seed the cached properties (frozen: no setattr)
    result.__dict__["by_backend"] = index
    return result


@dataclass(frozen=True)
class GroupMove:
    """Move `group` from `source` to `dest`, through the group-move machinery."""

    feature: str
    group: str
    source: UUID | None
    dest: UUID
    reason: str
    replaces_move: bool = False
    """The group is moving to a backend that went offline: this move takes the place of that one."""


@dataclass(frozen=True)
class Plan:
    """A planner's answer: the moves, and why it did not move (more), for dryrun and debug logs."""

    moves: list[GroupMove]
    held: list[str] = field(default_factory=list)


def targets(inp: PlanInput) -> list[Backend]:
    """Backends that may receive groups: online, load factor above 0, passing reachability and health."""
    return [b for b in inp.backends if b.online and b.load_factor > 0 and b.id not in inp.unhealthy]


def placement(group: Group) -> UUID | None:
    """Where a group counts: a moving group already at its destination (it is on its way there)."""
    return group.alt_backend_id if group.moving and group.alt_backend_id else group.backend_id


def group_counts(groups: Iterable[Group], offline: Collection[UUID] = ()) -> dict[UUID, int]:
    """Groups per backend, by `placement` (inlined: this runs over every group of a site each pass).

    A group moving to an `offline` backend counts where it is: that move cannot finish (the source
    keeps serving the group while the destination cannot take users, docs/design/moves.md).
    """
    counts = Counter(g.alt_backend_id if g.moving and g.alt_backend_id and g.alt_backend_id not in offline
                     else g.backend_id for g in groups)
    counts.pop(None, None)
    return dict(counts)  # type: ignore[arg-type]


def shares(backends: Sequence[Backend], total: int) -> dict[UUID, float]:
    """Each backend's share of `total` groups, proportional to its load factor."""
    weight = sum(b.load_factor for b in backends)
    if weight <= 0:
        return {b.id: 0.0 for b in backends}
    return {b.id: total * b.load_factor / weight for b in backends}


def resident_secs(group: Group, now: float) -> float:
    """How long the group has been on its backend (a group with no write time counts as old)."""
    if group.backend_changed_us is None:
        return math.inf
    return now - group.backend_changed_us / 1_000_000


def movable(group: Group, now: float, min_residence: float) -> bool:
    """Whether automation may move the group: placed, not moving, not sticky, resident long enough."""
    return (group.backend_id is not None and not group.moving and not group.sticky_backend
            and resident_secs(group, now) >= min_residence)


def pick_group(candidates: Iterable[Group], now: float) -> Group | None:
    """The group that has been on its backend longest (ties: by name), so recent arrivals stay."""
    best: tuple[float, str] | None = None
    chosen = None
    for g in candidates:
        key = (-resident_secs(g, now), g.name)
        if best is None or key < best:
            best, chosen = key, g
    return chosen


def rate_budget(moves: Iterable[MoveRecord], feature: str, now: float, per_hour: int) -> int:
    """Moves `feature` may make now: at most `per_hour` in any hour, evenly spaced.

    Spacing: one move per 3600/per_hour seconds since the feature's last move, and at most a
    minute's worth (`ceil(per_hour / 60)`) in one pass, so a big budget is not spent in a burst.
    `per_hour = 0` means the feature never moves anything.
    """
    if per_hour <= 0:
        return 0
    recent = [m.at for m in moves if m.feature == feature and now - m.at < HOUR]
    remaining = per_hour - len(recent)
    spacing = HOUR / per_hour
    since = now - max(recent) if recent else math.inf
    earned = min(math.floor(since / spacing) if since != math.inf else per_hour, math.ceil(per_hour / 60))
    return max(0, min(remaining, earned))


def host_names(backends: Iterable[Backend]) -> dict[UUID, str]:
    return {b.id: b.host for b in backends}
