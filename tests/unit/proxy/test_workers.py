"""The rules of a proxy run as worker processes: shares of limits, restart backoff, metrics added up."""

from __future__ import annotations

import pytest

from palomar.metrics.registry import Registry
from palomar.proxy.workers import Backoff, WorkerRole, merge_expositions, per_worker_ip_limit


@pytest.mark.parametrize(("limit", "workers", "share"), [
    (0, 4, 0),  # no limit stays no limit
    (50, 1, 50),
    (50, 2, 25),
    (3, 2, 2),  # rounded up: a client is never refused below the configured count when spread evenly
    (1, 4, 1),
])
def test_a_workers_share_of_login_max_ip_connections(limit: int, workers: int, share: int) -> None:
    assert per_worker_ip_limit(limit, workers) == share


def test_restart_backoff_doubles_to_its_ceiling_and_starts_again_after_a_stable_run() -> None:
    backoff = Backoff(first=0.5, ceiling=4.0, stable=60.0)
    assert [backoff.next_delay(lived=1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.next_delay(lived=61.0) == 0.5


@pytest.mark.parametrize(("text", "role"), [("0/1", WorkerRole(0, 1)), ("3/4", WorkerRole(3, 4))])
def test_worker_role_round_trip(text: str, role: WorkerRole) -> None:
    assert WorkerRole.decode(text) == role and role.encode() == text


@pytest.mark.parametrize("text", ["4/4", "-1/2", "x/2", "1"])
def test_worker_role_out_of_range(text: str) -> None:
    with pytest.raises(ValueError):
        WorkerRole.decode(text)


def test_only_worker_0_writes_under_the_proxys_own_name() -> None:
    assert WorkerRole(0, 2).primary and WorkerRole(0, 2).dest_host_suffix == ""
    assert not WorkerRole(1, 2).primary and WorkerRole(1, 2).dest_host_suffix == "/w1"


def _worker_registry(success: float, failures: float, available: float) -> str:
    registry = Registry()
    registry.counter("proxy_session_success", "Sessions", ("dest_host",)).inc(success, dest_host="be1")
    registry.counter("auth_failures", "Failed passdb authentications").inc(failures)
    registry.gauge("geodb_available", "1 while the GeoDB answers").set(available)
    return registry.exposition()


def test_merged_metrics_sum_counters_and_keep_gauges_per_worker() -> None:
    merged = merge_expositions([(0, _worker_registry(3, 1, 1)), (1, _worker_registry(4, 0, 0))])
    lines = merged.splitlines()
    assert 'dovecot_proxy_session_success_total{dest_host="be1"} 7' in lines
    assert "dovecot_auth_failures_total 1" in lines
    assert 'palomar_geodb_available{worker="0"} 1' in lines
    assert 'palomar_geodb_available{worker="1"} 0' in lines
    assert sum(line.startswith("# TYPE palomar_geodb_available ") for line in lines) == 1
    assert lines[-1] == "# EOF"


def test_merged_numbers_keep_every_digit() -> None:
    text = "# TYPE t gauge\nt 1796430123\n# TYPE c counter\nc_total 0.25\n# EOF\n"
    merged = merge_expositions([(0, text), (1, text)]).splitlines()
    assert 't{worker="0"} 1796430123' in merged and "c_total 0.5" in merged


def test_a_missing_worker_is_left_out_not_counted_as_zero_gauges() -> None:
    merged = merge_expositions([(1, _worker_registry(2, 0, 1))])
    assert 'palomar_geodb_available{worker="1"} 1' in merged.splitlines()
    assert 'worker="0"' not in merged
