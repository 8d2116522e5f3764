"""Building blocks for the planner tables: a site, backends, groups and load samples at NOW."""

from __future__ import annotations

from uuid import UUID

from palomar.cluster.model import Backend, Group, Site
from palomar.cluster.planning import LoadSample, MoveRecord, PlanInput

SITE = Site(UUID(int=1), "east")
NOW = 1_000_000.0
DAY = 86_400.0


def bid(n: int) -> UUID:
    return UUID(int=100 + n)


def backend(n: int, status: str = "online", lf: int = 100, changed_ago: float = 10 * DAY) -> Backend:
    return Backend(bid(n), SITE.id, f"b{n}", status=status, load_factor=lf,
                   status_changed_us=int((NOW - changed_ago) * 1_000_000))


def group(name: str, n: int | None, *, ago: float = 10 * DAY, moving_to: int | None = None,
          sticky_backend: bool = False, sticky_users: bool = False) -> Group:
    return Group(SITE.id, name, backend_id=None if n is None else bid(n),
                 alt_backend_id=None if moving_to is None else bid(moving_to),
                 moving="m" if moving_to is not None else None, sticky_backend=sticky_backend,
                 sticky_users=sticky_users, backend_changed_us=int((NOW - ago) * 1_000_000))


def groups_on(n: int, count: int, prefix: str | None = None, **kw) -> list[Group]:
    return [group(f"{prefix or f'g{n}'}-{i:02d}", n, **kw) for i in range(count)]


def samples(values: dict[str, float], count: int = 3) -> list[LoadSample]:
    return [LoadSample(NOW - 30 * (count - i), dict(values)) for i in range(count)]


def moved(feature: str, ago: float, group_name: str = "x") -> MoveRecord:
    return MoveRecord(feature, group_name, bid(1), bid(2), NOW - ago)


def plan_input(backends, groups, *, load=None, seen=None, moves=(), unhealthy=()) -> PlanInput:
    load = load or {}
    return PlanInput(SITE, tuple(backends), tuple(groups), NOW,
                     samples={bid(n): samples(v) for n, v in load.items()},
                     seen=seen if seen is not None else {bid(n): 10_000 for n in load},
                     moves=tuple(moves), unhealthy=frozenset(bid(n) for n in unhealthy))
