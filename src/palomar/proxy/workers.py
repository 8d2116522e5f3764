"""The rules of a proxy run as several worker processes (docs/design/proxy-workers.md). Pure: no I/O.

How many workers Dovecot's service settings ask for, what a worker's share of a proxy-wide limit
is, how long to wait before restarting a worker that died, and how the workers' `/metrics` add up.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

LOGIN_SERVICES = ("imap-login", "pop3-login", "submission-login", "managesieve-login")
"""The services whose process_limit / process_min_avail choose the number of workers."""

MAX_WORKERS = 64
"""More Python workers than this is a configuration mistake on any machine palomar runs on."""


@dataclass(frozen=True)
class WorkerRole:
    """Which worker this process is: index 0..count-1. Worker 0 also does the once-per-proxy jobs
    (periodic backend probes, site probes)."""

    index: int = 0
    count: int = 1

    @property
    def primary(self) -> bool:
        return self.index == 0

    @property
    def dest_host_suffix(self) -> str:
        """What a worker adds to the proxy's name in its proxy_dest_stats rows: each worker writes its own
        totals, so they must not overwrite each other's row."""
        return "" if self.index == 0 else f"/w{self.index}"

    def encode(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def decode(cls, text: str) -> WorkerRole:
        index, count = (int(part) for part in text.split("/"))
        if not 0 <= index < count:
            raise ValueError(f"worker {text}: index out of range")
        return cls(index, count)


def worker_count(services: dict) -> int:
    """Workers to start: the largest process_limit or process_min_avail of the login services.

    palomar starts every worker ahead (a Python worker needs about a second to start, so growing from
    process_min_avail towards process_limit on demand would come too late), and each worker serves every
    listener, so the largest value applies to the whole proxy. 1 (the defaults) is one process, no parent."""
    wanted = [max(s.process_limit, s.process_min_avail) for name, s in services.items() if name in LOGIN_SERVICES]
    return max([1, *wanted])


def worker_metrics_address(parent_pid: int, index: int) -> str:
    """The abstract UNIX socket (Linux) where a worker serves its own `/metrics` to its parent: no file to
    clean up, no path length limit, and the parent's pid keeps two proxies on one host apart."""
    return f"\0palomar-proxy-{parent_pid}-worker-{index}"


def per_worker_ip_limit(limit: int, workers: int) -> int:
    """A worker's share of login_max_ip_connections (0: no limit). Rounded up, so a client is never
    refused below the configured count when its connections spread evenly; the proxy-wide bound is
    then at most `limit + workers - 1`."""
    return 0 if limit == 0 else math.ceil(limit / workers)


@dataclass
class Backoff:
    """Restart delays for one worker slot: 0.5 s, doubling up to `ceiling`; a worker that ran `stable`
    seconds before dying starts the sequence again."""

    first: float = 0.5
    ceiling: float = 30.0
    stable: float = 60.0
    failures: int = 0

    def next_delay(self, lived: float) -> float:
        if lived >= self.stable:
            self.failures = 0
        delay = min(self.first * (2 ** self.failures), self.ceiling)
        self.failures += 1
        return delay


def _number(value: float) -> str:
    """Exact: a timestamp must not lose digits to `%g`."""
    return str(int(value)) if value.is_integer() else repr(value)


_TYPE = re.compile(r"# TYPE (\S+) (\S+)")
_SAMPLE = re.compile(r"([^\s{]+)(\{[^}]*\})? (\S+)")


def merge_expositions(texts: list[tuple[int, str]]) -> str:
    """One OpenMetrics text from the workers' (index, text): counters summed per label set (the proxy's
    totals), gauges kept per worker with a `worker` label (a current value does not add up: one
    worker's `geodb_available` is not another's). Families keep the order they first appear in."""
    families: dict[str, list[str]] = {}  # family -> its HELP/TYPE lines
    kinds: dict[str, str] = {}
    samples: dict[str, dict[str, float]] = {}  # family -> sample key -> value
    for index, text in texts:
        family = ""
        for line in text.splitlines():
            if line == "# EOF" or not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                family = parts[2]
                header = families.setdefault(family, [])
                samples.setdefault(family, {})
                if line not in header:
                    header.append(line)
                kind = _TYPE.fullmatch(line)
                if kind:
                    kinds[family] = kind.group(2)
                continue
            match = _SAMPLE.fullmatch(line)
            if match is None or not family:
                continue
            name, labels, value = match.group(1), match.group(2) or "", float(match.group(3))
            if kinds.get(family) == "counter":
                key = name + labels
                samples[family][key] = samples[family].get(key, 0.0) + value
            else:
                inner = labels[1:-1]
                label_text = f'worker="{index}"' + ("," + inner if inner else "")
                samples[family][f"{name}{{{label_text}}}"] = value
    out: list[str] = []
    for family, header in families.items():
        out += header
        out += [f"{key} {_number(value)}" for key, value in samples[family].items()]
    out.append("# EOF")
    return "\n".join(out) + "\n"
