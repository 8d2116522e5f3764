"""Host and Dovecot load of a backend, as `backend_stats` gauges for the controller's balance feature.

Reading /proc is cheap but blocking, and `doveadm who` is an HTTP round trip, so the sampler
runs in a thread (`asyncio.to_thread`), never on the event loop that relays sessions. The
parsers are pure functions over the files' text, so they are tested from fixed strings.
Rates (CPU busy, disk busy, bytes per second) need two readings: the first sample after start
reports the gauges that need no history and leaves the rates out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from palomar.cluster.model import Stat

LOAD_CPU = "load_cpu_pct"
LOAD_MEMORY = "load_mem_used_pct"
LOAD_AVG1 = "load_avg1_per_cpu"
LOAD_DISK_BUSY = "load_disk_busy_pct"
LOAD_DISK_READ = "load_disk_read_bps"
LOAD_DISK_WRITE = "load_disk_write_bps"
DOVECOT_SESSIONS = "dovecot_sessions"
SAMPLED_AT = "load_sampled_at"
"""Unix seconds of the sample: the controller adds a history sample only when this changes."""

SECTOR = 512
"""/proc/diskstats counts 512-byte sectors whatever the device's own sector size."""
IGNORED_DISK_PREFIXES = ("loop", "ram", "zram", "dm-", "md", "sr")
"""Virtual devices whose I/O is counted again on the real disk below them (or is memory)."""


@dataclass(frozen=True)
class CpuTimes:
    busy: int
    total: int


@dataclass(frozen=True)
class DiskTotals:
    read_bytes: int
    write_bytes: int
    io_ms: int
    """Milliseconds spent doing I/O, summed over the disks (field 10 of /proc/diskstats)."""


@dataclass(frozen=True)
class RawReading:
    """One reading of the host's counters and gauges at `at` (monotonic seconds)."""

    at: float
    cpu: CpuTimes
    mem_used_pct: float
    load1: float
    cpus: int
    disks: DiskTotals


def parse_cpu(proc_stat: str) -> CpuTimes:
    """The aggregate `cpu` line: idle and iowait are not busy, everything else is."""
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            # guest time is already part of user time; counting it twice would exceed 100 %
            total = sum(values[:8])
            return CpuTimes(busy=total - idle, total=total)
    raise ValueError("no aggregate cpu line in /proc/stat")


def parse_memory_used_pct(meminfo: str) -> float:
    """Memory in use as a percentage: 1 - MemAvailable/MemTotal (page cache counts as free)."""
    values: dict[str, int] = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        if name in ("MemTotal", "MemAvailable"):
            values[name] = int(rest.split()[0])
    total = values.get("MemTotal", 0)
    if total <= 0 or "MemAvailable" not in values:
        raise ValueError("MemTotal/MemAvailable missing in /proc/meminfo")
    return round(100.0 * (1 - values["MemAvailable"] / total), 2)


def parse_load1(loadavg: str) -> float:
    return float(loadavg.split()[0])


def parse_disks(diskstats: str, whole_disks: Iterable[str]) -> DiskTotals:
    """Sum the whole disks' sectors read/written and I/O time; partitions and virtual devices are
    skipped, since their I/O is also counted on the disk that holds them."""
    wanted = {d for d in whole_disks if not d.startswith(IGNORED_DISK_PREFIXES)}
    read = write = io_ms = 0
    for line in diskstats.splitlines():
        fields = line.split()
        if len(fields) < 14 or fields[2] not in wanted:
            continue
        read += int(fields[5]) * SECTOR
        write += int(fields[9]) * SECTOR
        io_ms += int(fields[12])
    return DiskTotals(read, write, io_ms)


def load_stats(previous: RawReading | None, current: RawReading, dovecot_sessions: int | None,
               now: float) -> list[Stat]:
    """The gauges of `current`, with rates over the time since `previous` when there is one."""
    stats = [
        Stat(LOAD_MEMORY, current.mem_used_pct, "gauge"),
        Stat(LOAD_AVG1, round(current.load1 / max(current.cpus, 1), 3), "gauge"),
        Stat(SAMPLED_AT, round(now, 3), "gauge"),
    ]
    if dovecot_sessions is not None:
        stats.append(Stat(DOVECOT_SESSIONS, float(dovecot_sessions), "gauge"))
    if previous is None or current.at <= previous.at:
        return stats
    elapsed = current.at - previous.at
    cpu_total = current.cpu.total - previous.cpu.total
    if cpu_total > 0:
        stats.append(Stat(LOAD_CPU, round(100.0 * (current.cpu.busy - previous.cpu.busy) / cpu_total, 2), "gauge"))
    busy = 100.0 * (current.disks.io_ms - previous.disks.io_ms) / (elapsed * 1000)
    stats.append(Stat(LOAD_DISK_BUSY, round(min(max(busy, 0.0), 100.0 * max(current.cpus, 1)), 2), "gauge"))
    stats.append(Stat(LOAD_DISK_READ, round((current.disks.read_bytes - previous.disks.read_bytes) / elapsed),
                      "gauge"))
    stats.append(Stat(LOAD_DISK_WRITE, round((current.disks.write_bytes - previous.disks.write_bytes) / elapsed),
                      "gauge"))
    return stats


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def read_host(proc: str = "/proc", sys_block: str = "/sys/block") -> RawReading:
    """One reading of this host (blocking: run it in a thread)."""
    try:
        disks = os.listdir(sys_block)
    except OSError:
        disks = []
    return RawReading(
        at=time.monotonic(),
        cpu=parse_cpu(_read(f"{proc}/stat")),
        mem_used_pct=parse_memory_used_pct(_read(f"{proc}/meminfo")),
        load1=parse_load1(_read(f"{proc}/loadavg")),
        cpus=os.cpu_count() or 1,
        disks=parse_disks(_read(f"{proc}/diskstats"), disks),
    )


class LoadSampler:
    """Keeps the previous reading so each `sample()` can report rates. `sample` blocks."""

    def __init__(self, dovecot_sessions: Callable[[], int] | None = None,
                 read: Callable[[], RawReading] = read_host, clock: Callable[[], float] = time.time) -> None:
        self._dovecot_sessions = dovecot_sessions
        self._read = read
        self._clock = clock
        self._previous: RawReading | None = None
        self.last_error: str | None = None

    def sample(self) -> list[Stat]:
        current = self._read()
        sessions = None
        self.last_error = None
        if self._dovecot_sessions is not None:
            try:
                sessions = self._dovecot_sessions()
            except Exception as exc:  # Dovecot down or doveadm refused: the host load is still worth writing
                self.last_error = f"doveadm who: {exc}"
        stats = load_stats(self._previous, current, sessions, self._clock())
        self._previous = current
        return stats


def doveadm_session_count(rows: Iterable[dict]) -> int:
    """Connections in `doveadm who` rows (one row per user and service; `connections` per row)."""
    return sum(int(r.get("connections", 1) or 1) for r in rows)
