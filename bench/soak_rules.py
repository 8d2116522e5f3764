"""The soak's pure parts: when a sampled series (memory or open fds of one process) counts as growing.

A soak holds a constant load, so after a warm-up every resource should be flat. Judging by the
first and last sample alone would call any spike at the end growth, and a slow leak could hide
under noise; so the rule fits a least-squares line through the samples after the warm-up and
projects its slope over that window. Growth beyond a tolerance fails: the larger of an absolute
floor (a few MiB, a few fds: the churn's sessions in flight move the numbers) and a fraction of
the series' median (allocator noise scales with the heap).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

WARMUP_FRACTION = 1 / 3
"""The first third of the soak is warm-up (heaps and caches settle); the rest is judged."""


@dataclass(frozen=True)
class Tolerance:
    absolute: float
    relative: float
    """Fraction of the judged samples' median."""

    def allowed(self, median: float) -> float:
        return max(self.absolute, self.relative * median)


MEMORY = Tolerance(absolute=4 * 1024, relative=0.03)
"""KiB: 4 MiB or 3 %, whichever is larger."""
FDS = Tolerance(absolute=20, relative=0.01)
"""Open descriptors: 20 (churn sessions in flight) or 1 %."""


@dataclass(frozen=True)
class Trend:
    samples: int
    """Samples judged (after the warm-up)."""
    first: float
    last: float
    median: float
    growth: float
    """The fitted slope times the judged window's length: what the series gained over it."""
    allowed: float

    @property
    def growing(self) -> bool:
        return self.growth > self.allowed


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (time, value) points; 0 for fewer than two distinct times."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def judged(points: Sequence[tuple[float, float]], warmup: float = WARMUP_FRACTION) -> list[tuple[float, float]]:
    """The points after the warm-up: the first `warmup` fraction of the sampled time is left out."""
    if not points:
        return []
    start, end = points[0][0], points[-1][0]
    cut = start + (end - start) * warmup
    return [p for p in points if p[0] >= cut]


def trend(points: Sequence[tuple[float, float]], tolerance: Tolerance,
          warmup: float = WARMUP_FRACTION) -> Trend:
    """How the series moved after the warm-up, and whether that is growth (see the module)."""
    window = judged(points, warmup)
    if not window:
        return Trend(0, 0.0, 0.0, 0.0, 0.0, tolerance.absolute)
    middle = statistics.median(v for _, v in window)
    span = window[-1][0] - window[0][0]
    return Trend(len(window), window[0][1], window[-1][1], middle, slope(window) * span,
                 tolerance.allowed(middle))
