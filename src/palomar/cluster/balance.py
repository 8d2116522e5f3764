"""The `balance` feature: move one group from the most to the least loaded backend. Pure.

Per resource (CPU, memory, load, disk, sessions: `backend_stats` gauges) each backend's recent
average is divided by its load factor (so a backend at 50 carrying half the load of one at 100
counts as even), turned into a Z-score against the site, and the Z-scores are summed into the
backend's score. When the worst and the best backend differ by more than the threshold, one group
moves from worst to best, at most `groups_per_hour`. A backend with load factor 0 is drained:
its groups go, one at a time, to the best target whatever the scores say.
See docs/design/controller.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from palomar.cluster.model import Backend
from palomar.cluster.planning import (
    GroupMove,
    LoadSample,
    Plan,
    PlanInput,
    pick_group,
    rate_budget,
    targets,
)

FEATURE = "balance"


@dataclass(frozen=True)
class BalanceSettings:
    resources: tuple[str, ...] = ("load_cpu_pct", "load_mem_used_pct", "load_avg1_per_cpu",
                                  "load_disk_busy_pct", "dovecot_sessions")
    window: int = 10
    min_samples: int = 1440
    score_delta: float = 2.0
    min_spread_pct: int = 10
    groups_per_hour: int = 1
    min_residence: float = 3600.0


def recent_mean(samples: Sequence[LoadSample], resource: str, window: int) -> float | None:
    """The mean of `resource` over the newest `window` samples that have it (None: no sample has it)."""
    n = len(samples)
    newest = (samples[i] for i in range(max(0, n - window), n))  # works for deques (no slicing) too
    values = [s.values[resource] for s in newest if resource in s.values]
    return sum(values) / len(values) if values else None


def scores(inp: PlanInput, backends: Sequence[Backend], s: BalanceSettings) -> dict[UUID, float]:
    """Summed per-resource Z-scores of the load per load-factor point; 0 for an even resource.

    A resource some backend has no samples of is left out for everyone (comparing a backend
    on fewer resources would bias its score).
    """
    total = {b.id: 0.0 for b in backends}
    for resource in s.resources:
        per_point: dict[UUID, float] = {}
        for b in backends:
            mean = recent_mean(inp.samples.get(b.id, ()), resource, s.window)
            if mean is None:
                break
            per_point[b.id] = mean / (b.load_factor / 100)
        else:
            values = list(per_point.values())
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            if std <= 0 or std < abs(mean) * s.min_spread_pct / 100:
                continue
            for backend_id, v in per_point.items():
                total[backend_id] += (v - mean) / std
    return total


def plan_balance(inp: PlanInput, s: BalanceSettings) -> Plan:
    """At most one group move this pass: a drain first, else worst to best by score."""
    budget = rate_budget(inp.moves, FEATURE, inp.now, s.groups_per_hour)
    if budget < 1:
        return Plan([], [f"rate limit: {s.groups_per_hour} group(s) per hour"])
    pool = targets(inp)
    draining = [b for b in inp.backends if b.online and b.load_factor == 0]
    counts = dict(inp.counts)
    for source in sorted(draining, key=lambda b: b.host):
        group = pick_group(inp.movable_on(source.id, s.min_residence), inp.now)
        if group is None:
            continue
        if not pool:
            return Plan([], [f"{source.host} drains but no backend can take its groups"])
        warm = _warm(inp, pool, s)
        score = scores(inp, warm, s) if len(warm) >= 2 else {}
        dest = min(pool, key=lambda b: (score.get(b.id, 0.0), counts.get(b.id, 0) / b.load_factor, b.host))
        return Plan([GroupMove(FEATURE, group.name, source.id, dest.id,
                               f"{source.host} has load factor 0: draining group {group.name} to {dest.host}")])
    warm = _warm(inp, [b for b in inp.backends if b.online and b.load_factor > 0], s)
    if len(warm) < 2:
        return Plan([], [f"{len(warm)} backend(s) with {s.min_samples} samples, want 2"])
    score = scores(inp, warm, s)
    healthy = {b.id for b in pool}
    order = sorted(warm, key=lambda b: (-score[b.id], b.host))
    receivers = [b for b in reversed(order) if b.id in healthy]
    if not receivers:
        return Plan([], ["no warmed-up backend can take a group"])
    best = receivers[0]
    for worst in order:
        delta = score[worst.id] - score[best.id]
        if delta <= s.score_delta:
            return Plan([], [f"scores even: {worst.host} {score[worst.id]:+.2f} vs {best.host} "
                             f"{score[best.id]:+.2f} (delta {delta:.2f} <= {s.score_delta:g})"])
        group = pick_group(inp.movable_on(worst.id, s.min_residence), inp.now)
        if group is None:
            continue  # nothing movable there (sticky, moving, recent): try the next worst
        reason = (f"score {worst.host} {score[worst.id]:+.2f} vs {best.host} {score[best.id]:+.2f} "
                  f"(delta {delta:.2f} > {s.score_delta:g}): group {group.name}")
        return Plan([GroupMove(FEATURE, group.name, worst.id, best.id, reason)])
    return Plan([], ["no movable group on the loaded backends (sticky, moving or moved recently)"])


def _warm(inp: PlanInput, backends: Sequence[Backend], s: BalanceSettings) -> list[Backend]:
    return [b for b in backends if inp.seen.get(b.id, 0) >= s.min_samples and inp.samples.get(b.id)]
