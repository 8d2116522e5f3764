"""What the controller remembers for its web UI and API: load samples and its recent decisions.

Both are bounded in-memory windows filled by the controller loop; a restart empties them (the
GeoDB holds the state, these only show how it got there). The samples are every gauge a backend
writes to `backend_stats` (`sessions_active` and the host and Dovecot load of
docs/design/controller.md), so the chart shows whatever the backends measure without knowing the
names in advance.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from palomar.cluster.model import Backend, Stat

HISTORY_SAMPLES = 360
"""One hour at the default 10-second controller interval."""
RECENT_DECISIONS = 200


@dataclass(frozen=True)
class Sample:
    at: float
    host: str
    values: dict[str, float]


@dataclass(frozen=True)
class DecisionRecord:
    at: float
    feature: str
    state: str
    backend: str
    action: str
    reason: str
    executed: bool


class Recent:
    """The sample window (per backend) and the decision log."""

    def __init__(self, samples: int = HISTORY_SAMPLES, decisions: int = RECENT_DECISIONS) -> None:
        self.samples: deque[list[Sample]] = deque(maxlen=samples)
        self.decisions: deque[DecisionRecord] = deque(maxlen=decisions)

    def sample(self, now: float, backends: Iterable[Backend], stats: dict[UUID, list[Stat]]) -> None:
        """One tick's gauges, plus `user_count_approx`, for every backend of the site."""
        tick = []
        for b in backends:
            values = {s.key: s.value for s in stats.get(b.id, []) if s.type == "gauge"}
            if b.user_count_approx is not None:
                values["users_approx"] = float(b.user_count_approx)
            tick.append(Sample(now, b.host, values))
        self.samples.append(tick)

    def decided(self, record: DecisionRecord) -> None:
        self.decisions.append(record)

    def metrics(self) -> list[str]:
        """Every sampled name, sorted."""
        return sorted({k for tick in self.samples for s in tick for k in s.values})

    def series(self, metric: str) -> dict[str, list[tuple[float, float]]]:
        """host -> [(time, value)] of one metric, oldest first."""
        out: dict[str, list[tuple[float, float]]] = {}
        for tick in self.samples:
            for s in tick:
                if metric in s.values:
                    out.setdefault(s.host, []).append((s.at, s.values[metric]))
        return out
