"""The `group-size` feature: users of the groups on one backend are re-grouped to similar sizes. Pure.

Balance moves whole groups, so a group must be a predictable amount of load. Once a day the
controller plans, per backend, which users go from the largest groups to the smallest ones on
the same backend (the users stay on their backend: a re-grouping moves no mail), capped at
`max_planned` users; execution passes then re-group at most `per_pass` users each. Groups with
`sticky_users` are neither sources nor destinations. See docs/design/controller.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from palomar.cluster.model import Group

FEATURE = "group-size"


@dataclass(frozen=True)
class GroupSizeSettings:
    slack_pct: int = 20
    max_planned: int = 100_000
    per_pass: int = 1000
    pass_interval: float = 1800.0


@dataclass(frozen=True)
class UserMove:
    """Re-group `username` from `from_group` to `to_group` (both on the same backend)."""

    feature: str
    username: str
    from_group: str
    to_group: str
    reason: str


def plan_group_sizes(groups: Sequence[Group], members: Mapping[str, Sequence[str]],
                     s: GroupSizeSettings) -> list[UserMove]:
    """The day's plan: per backend, users from groups above the mean size to groups below it.

    A backend's groups are even when the largest and the smallest differ by at most
    `slack_pct` of the mean (and at least one user). Users are taken from the end of each
    source group's sorted member list, so the plan is the same on every run.
    """
    by_backend: dict = {}
    for g in groups:
        if g.backend_id is not None and not g.sticky_users and not g.moving:
            by_backend.setdefault(g.backend_id, []).append(g.name)
    moves: list[UserMove] = []
    for backend_id in sorted(by_backend, key=str):
        names = sorted(by_backend[backend_id])
        if len(names) < 2:
            continue
        pending = {n: sorted(members.get(n, ())) for n in names}
        sizes = {n: len(pending[n]) for n in names}
        mean = sum(sizes.values()) / len(names)
        allowed = max(1.0, mean * s.slack_pct / 100)
        while len(moves) < s.max_planned:
            big = max(names, key=lambda n: (sizes[n], n))
            small = min(names, key=lambda n: (sizes[n], n))
            if sizes[big] - sizes[small] <= allowed:
                break
            count = max(1, min(sizes[big] - math.ceil(mean), math.floor(mean) - sizes[small]))
            count = min(count, s.max_planned - len(moves))
            for _ in range(count):
                user = pending[big].pop()
                moves.append(UserMove(FEATURE, user, big, small,
                                      f"group {big} has {sizes[big]} users, {small} {sizes[small]} "
                                      f"(mean {mean:.1f}, slack {s.slack_pct}%)"))
            sizes[big] -= count
            sizes[small] += count
    return moves


def next_pass(plan: Sequence[UserMove], done: int, s: GroupSizeSettings) -> list[UserMove]:
    """The moves of the next execution pass, after `done` moves of the plan were carried out."""
    return list(plan[done:done + s.per_pass])
