"""Counters with labels and their OpenMetrics text exposition (the format Dovecot's stats uses).

Operators' dashboards query Dovecot's names, so the metrics of the Palomar document and of
Dovecot's `@metric_defaults = proxy` (DOVECOT_NAMES) are exported as Dovecot's OpenMetrics
exporter writes an event metric: `dovecot_NAME_total{group labels}` per group and, for a grouped
metric, `dovecot_NAME_count` over all of them (the prefix is `metrics_prefix`). palomar's own
metrics keep the `palomar_` prefix with a `_total` suffix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


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

    def set_total(self, value: float, **labels: str) -> None:
        """Mirror a total kept elsewhere (read by a `Registry.on_collect` callback)."""
        self._values[tuple(labels.get(name, "") for name in self.labels)] = value

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


DOVECOT_NAMES = frozenset({
    # the seed's metric blocks (`@cluster_defaults = proxy`), grouped by dest_host
    "proxy_session_success", "proxy_session_failure", "lmtp_rcpt_finished_success", "lmtp_rcpt_finished_failure",
    # Dovecot's `@metric_defaults = proxy`
    "auth_successes", "auth_failures", "login_aborted", "proxy_session_established",
})
"""Metrics exported under Dovecot's name (and `metrics_prefix`) rather than palomar's."""
DEFAULT_DOVECOT_PREFIX = "dovecot_"


class Registry:
    """All counters and gauges of one process."""

    def __init__(self, prefix: str = "palomar", dovecot_prefix: str = DEFAULT_DOVECOT_PREFIX) -> None:
        self.prefix = prefix
        self.dovecot_prefix = dovecot_prefix
        self.started = time.time()
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._collectors: list[Callable[[], None]] = []

    def on_collect(self, callback: Callable[[], None]) -> None:
        """Run `callback` before each exposition, to bring mirrored values up to date."""
        self._collectors.append(callback)

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
        for collect in self._collectors:
            collect()
        out = [
            "# HELP process_start_time_seconds Timestamp of service start",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {int(self.started)}",
        ]
        for counter in self._counters.values():
            if counter.name in DOVECOT_NAMES:
                out += _dovecot_counter(f"{self.dovecot_prefix}{counter.name}", counter)
                continue
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


def _dovecot_counter(name: str, counter: Counter) -> list[str]:
    """An event metric as Dovecot 2.3's OpenMetrics exporter writes one (no duration: see docs/metrics.md)."""
    lines = [f"# HELP {name} {counter.help}", f"# TYPE {name} counter"]
    if not counter.labels:
        return [*lines, f"{name}_total {counter.value():g}"]
    total = 0.0
    for labels, value in counter.items():
        lines.append(f"{name}_total{_label_suffix(labels)} {value:g}")
        total += value
    return [*lines, f"{name}_count {total:g}"]
