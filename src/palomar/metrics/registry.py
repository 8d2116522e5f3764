"""Counters with labels and their OpenMetrics text exposition (the format Dovecot's stats uses).

Metric names follow the seed (`proxy_session_success`, `proxy_session_failure`,
`lmtp_rcpt_finished_success`, ...), exported with a `palomar_` prefix and `_total` suffix.
"""

from __future__ import annotations

import time
from collections.abc import Iterable


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_suffix(labels: dict[str, str]) -> str:
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + text + "}" if text else ""


class Counter:
    """A monotonically increasing count per label set."""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labels = labels
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(labels.get(name, "") for name in self.labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(labels.get(name, "") for name in self.labels), 0.0)

    def items(self) -> Iterable[tuple[dict[str, str], float]]:
        for key, value in sorted(self._values.items()):
            yield dict(zip(self.labels, key, strict=True)), value


class Gauge:
    """A value per label set that can go down as well as up (e.g. backends per status)."""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labels = labels
        self._values: dict[tuple[str, ...], float] = {}

    def set(self, value: float, **labels: str) -> None:
        self._values[tuple(labels.get(name, "") for name in self.labels)] = value

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(labels.get(name, "") for name in self.labels), 0.0)

    def items(self) -> Iterable[tuple[dict[str, str], float]]:
        for key, value in sorted(self._values.items()):
            yield dict(zip(self.labels, key, strict=True)), value


class Registry:
    """All counters and gauges of one process."""

    def __init__(self, prefix: str = "palomar") -> None:
        self.prefix = prefix
        self.started = time.time()
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        existing = self._counters.get(name)
        if existing is None:
            existing = self._counters[name] = Counter(name, help_text, labels)
        return existing

    def gauge(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Gauge:
        existing = self._gauges.get(name)
        if existing is None:
            existing = self._gauges[name] = Gauge(name, help_text, labels)
        return existing

    def exposition(self) -> str:
        """OpenMetrics text, ending with `# EOF`."""
        out = [
            "# HELP process_start_time_seconds Timestamp of service start",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {int(self.started)}",
        ]
        for counter in self._counters.values():
            name = f"{self.prefix}_{counter.name}"
            out.append(f"# HELP {name} {counter.help}")
            out.append(f"# TYPE {name} counter")
            for labels, value in counter.items():
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                suffix = "{" + label_text + "}" if label_text else ""
                out.append(f"{name}_total{suffix} {value:g}")
        for gauge in self._gauges.values():
            name = f"{self.prefix}_{gauge.name}"
            out.append(f"# HELP {name} {gauge.help}")
            out.append(f"# TYPE {name} gauge")
            for labels, value in gauge.items():
                out.append(f"{name}{_label_suffix(labels)} {value:g}")
        out.append("# EOF")
        return "\n".join(out) + "\n"
