"""Host load sampling: /proc parsers from fixed text, rates from two readings, and the backend
writing the gauges to backend_stats on a real SQLite GeoDB (with the real /proc of this host)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from palomar.backend.load_sample import (
    DOVECOT_SESSIONS,
    LOAD_AVG1,
    LOAD_CPU,
    LOAD_DISK_BUSY,
    LOAD_DISK_READ,
    LOAD_DISK_WRITE,
    LOAD_MEMORY,
    SAMPLED_AT,
    CpuTimes,
    DiskTotals,
    LoadSampler,
    RawReading,
    doveadm_session_count,
    load_stats,
    parse_cpu,
    parse_disks,
    parse_load1,
    parse_memory_used_pct,
)
from palomar.backend.service import BackendState
from palomar.cluster.model import Site
from palomar.dovecot_login import DovecotEndpoint
from palomar.geodb.repository import GeoDB
from palomar.geodb.sqlite_engine import SQLiteGeoEngine
from palomar.localdb.store import LocalDB

PROC_STAT = """cpu  100 5 50 800 40 0 5 0 7 0
cpu0 50 2 25 400 20 0 3 0 0 0
intr 1 2 3
"""
MEMINFO = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n"
DISKSTATS = """   7       0 loop0 10 0 80 0 0 0 0 0 0 5 0 0 0 0 0 0 0
 253       0 vda 100 0 2000 50 200 0 4000 60 0 300 110 0 0 0 0 0 0
 253       1 vda1 90 0 1800 40 190 0 3900 50 0 280 90 0 0 0 0 0 0
   8       0 sdb 1 0 8 0 1 0 8 0 0 20 0 0 0 0 0 0 0
"""


def test_cpu_busy_is_everything_but_idle_and_iowait() -> None:
    # user+nice+system+idle+iowait+irq+softirq+steal; guest (7) is inside user already
    assert parse_cpu(PROC_STAT) == CpuTimes(busy=160, total=1000)


def test_cpu_without_aggregate_line_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_cpu("cpu0 1 2 3 4\n")


def test_memory_counts_available_memory_as_free() -> None:
    assert parse_memory_used_pct(MEMINFO) == 75.0
    with pytest.raises(ValueError):
        parse_memory_used_pct("MemTotal: 1000 kB\n")


def test_disks_sum_whole_real_disks_only() -> None:
    totals = parse_disks(DISKSTATS, ["loop0", "vda", "sdb"])  # /sys/block lists no partitions
    assert totals == DiskTotals(read_bytes=(2000 + 8) * 512, write_bytes=(4000 + 8) * 512, io_ms=320)


def test_load1() -> None:
    assert parse_load1("0.95 0.88 0.98 1/103 11571\n") == 0.95


def _reading(at: float, busy: int, total: int, read: int, write: int, io_ms: int) -> RawReading:
    return RawReading(at, CpuTimes(busy, total), 40.0, 3.0, 2, DiskTotals(read, write, io_ms))


def test_first_sample_has_no_rates_and_the_second_has_them() -> None:
    first = _reading(100.0, 100, 1000, 0, 0, 0)
    second = _reading(110.0, 400, 2000, 10_000, 20_000, 2_500)
    keys = {s.key: s.value for s in load_stats(None, first, 7, 1234.5)}
    assert keys == {LOAD_MEMORY: 40.0, LOAD_AVG1: 1.5, SAMPLED_AT: 1234.5, DOVECOT_SESSIONS: 7.0}
    rates = {s.key: s.value for s in load_stats(first, second, None, 1244.5)}
    assert rates[LOAD_CPU] == 30.0
    assert rates[LOAD_DISK_BUSY] == 25.0
    assert (rates[LOAD_DISK_READ], rates[LOAD_DISK_WRITE]) == (1000, 2000)
    assert DOVECOT_SESSIONS not in rates


def test_sampler_keeps_host_load_when_doveadm_fails() -> None:
    readings = iter([_reading(1.0, 0, 100, 0, 0, 0), _reading(2.0, 50, 200, 0, 0, 0)])

    def who() -> int:
        raise OSError("connection refused")

    sampler = LoadSampler(who, read=lambda: next(readings), clock=lambda: 5.0)
    assert DOVECOT_SESSIONS not in {s.key for s in sampler.sample()}
    assert sampler.last_error is not None and "connection refused" in sampler.last_error
    assert {s.key: s.value for s in sampler.sample()}[LOAD_CPU] == 50.0


def test_doveadm_who_rows_count_connections() -> None:
    assert doveadm_session_count([{"username": "a", "connections": "2"}, {"username": "b"}]) == 3


async def test_backend_writes_its_load_to_backend_stats_off_the_event_loop(tmp_path) -> None:
    engine = SQLiteGeoEngine(str(tmp_path / "geodb.sqlite"))
    await engine.open()
    geodb = GeoDB(engine)
    await geodb.site_add(Site(id=uuid.uuid4(), name="east"))
    localdb = LocalDB(str(tmp_path / "localdb.sqlite"))
    threads: list[str] = []

    def who() -> int:
        threads.append(threading.current_thread().name)
        return 4

    state = BackendState(geodb=geodb, localdb=localdb, name="10.0.0.1", site_name="east", secret=b"s",
                         dovecot=DovecotEndpoint("127.0.0.1", {}, "master", "pw"), load=LoadSampler(who))
    await state.register()
    assert state.site_id is not None and state.backend_id is not None
    await state.write_stats()
    deadline = time.monotonic() + 5
    while True:  # the CPU rate needs the kernel's jiffy counters to move between two samples
        await state.write_stats()
        stats = {s.key: s for s in await geodb.backend_stats_get(state.site_id, state.backend_id)}
        if LOAD_CPU in stats or time.monotonic() > deadline:
            break
    assert stats[DOVECOT_SESSIONS].value == 4.0 and stats[DOVECOT_SESSIONS].type == "gauge"
    assert 0.0 <= stats[LOAD_CPU].value <= 100.0
    assert 0.0 < stats[LOAD_MEMORY].value < 100.0
    assert {LOAD_DISK_BUSY, LOAD_AVG1, SAMPLED_AT, "sessions_active"} <= set(stats)
    assert threads and threading.main_thread().name not in threads
    localdb.close()
    await geodb.close()
