"""One summary line per interval for refused connections (a test clock drives it)."""

from __future__ import annotations

from palomar.metrics.registry import Registry
from palomar.net.refusals import RefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_first_refusal_is_logged_then_counted_until_the_summary() -> None:
    clock = Clock()
    refusals = RefusalLog(10.0, clock=clock)
    assert refusals.record("client_limit") == "refused 1 connection: 1 client_limit"
    lines = [refusals.record("login_max_ip_connections", "127.0.0.50") for _ in range(5000)]
    assert lines == [None] * 5000
    clock.now += 4
    refusals.record("out of file descriptors", "127.0.0.51")
    clock.now += 6
    assert refusals.flush() == ("refused 5001 connections in the last 10s: 5000 login_max_ip_connections, "
                                "1 out of file descriptors; most from 127.0.0.50 (5000), 127.0.0.51 (1)")
    assert refusals.flush() is None


def test_a_refusal_after_the_interval_carries_the_summary() -> None:
    clock = Clock()
    refusals = RefusalLog(10.0, clock=clock)
    refusals.record("client_limit")
    refusals.record("client_limit")
    clock.now += 10
    assert refusals.record("client_limit") == "refused 2 connections in the last 10s: 2 client_limit"


def test_the_metric_counts_every_refusal_by_reason() -> None:
    registry = Registry()
    counter = registry.counter("proxy_connections_refused", "refused", ("reason",))
    refusals = RefusalLog(10.0, clock=Clock(), metric=counter)
    for _ in range(3):
        refusals.record("client_limit")
    assert counter.value(reason="client_limit") == 3
    assert 'palomar_proxy_connections_refused_total{reason="client_limit"} 3' in registry.exposition()


def test_addresses_are_bounded() -> None:
    refusals = RefusalLog(10.0, clock=Clock())
    refusals.record("x")
    for i in range(100_000):
        refusals.record("login_max_ip_connections", f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}")
    assert len(refusals._addresses) == 1000
