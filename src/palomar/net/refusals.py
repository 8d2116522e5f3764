"""One log line per interval for refused connections, however many there are.

A flood is exactly when a line per event hurts most: 21,000 idle connections once produced 5,382
"Too many open files" warnings in a minute. The first refusal after a quiet interval is logged at
once (an operator sees the start of trouble); later ones are counted and summarised by `flush()`,
which the service calls every interval, or by the next refusal once the interval has passed.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable

from palomar.metrics.registry import Counter


class RefusalLog:
    """Counts refusals by reason (and the busiest addresses) between summary lines."""

    def __init__(self, interval: float = 10.0, *, clock: Callable[[], float] = time.monotonic,
                 metric: Counter | None = None) -> None:
        self.interval = interval
        self.clock = clock
        self.metric = metric
        self._reasons: Tally[str] = Tally()
        self._addresses: Tally[str] = Tally()
        self._last_line: float | None = None

    def record(self, reason: str, address: str | None = None) -> str | None:
        """Count one refusal; returns a line to log now, or None when it waits for the summary."""
        if self.metric is not None:
            self.metric.inc(reason=reason)
        self._reasons[reason] += 1
        if address is not None and (address in self._addresses or len(self._addresses) < 1000):
            self._addresses[address] += 1  # bounded: a spread-out flood need not be itemised
        now = self.clock()
        if self._last_line is None or now - self._last_line >= self.interval:
            return self._line(now)
        return None

    def flush(self) -> str | None:
        """The summary of refusals not yet logged, or None if there were none."""
        return self._line(self.clock()) if self._reasons else None

    def _line(self, now: float) -> str:
        since = now - self._last_line if self._last_line is not None else 0.0
        total = sum(self._reasons.values())
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self._reasons.items()))
        busiest = ", ".join(f"{address} ({count})" for address, count in self._addresses.most_common(3))
        self._reasons.clear()
        self._addresses.clear()
        self._last_line = now
        window = f" in the last {since:.0f}s" if since else ""
        return (f"refused {total} connection{'s' if total != 1 else ''}{window}: {reasons}"
                + (f"; most from {busiest}" if busiest else ""))
