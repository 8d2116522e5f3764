"""The soak's growth rule: a fitted slope after the warm-up, against a tolerance."""

from __future__ import annotations

import pytest

from soak_rules import FDS, MEMORY, Tolerance, judged, slope, trend


def series(values: list[float], step: float = 10.0) -> list[tuple[float, float]]:
    return [(i * step, v) for i, v in enumerate(values)]


@pytest.mark.parametrize(("points", "expected"), [
    ([], 0.0),
    ([(0.0, 5.0)], 0.0),
    ([(0.0, 1.0), (0.0, 3.0)], 0.0),  # no time spread
    (series([0, 10, 20, 30]), 1.0),
    (series([30, 20, 10, 0]), -1.0),
    (series([5, 5, 5]), 0.0),
])
def test_slope(points: list[tuple[float, float]], expected: float) -> None:
    assert slope(points) == pytest.approx(expected)


def test_the_warm_up_third_is_left_out() -> None:
    points = series(list(range(10)))  # t = 0..90
    assert [t for t, _ in judged(points)] == [30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]


@pytest.mark.parametrize(("values", "tolerance", "growing"), [
    # memory in KiB around 30 MiB: tolerance max(4 MiB, 3 %) = 4 MiB
    ([30000] * 12, MEMORY, False),
    ([20000, 25000, 29000, *[30000] * 9], MEMORY, False),  # growth during warm-up only
    ([30000 + 1000 * i for i in range(12)], MEMORY, True),  # 1 MiB a sample: 8 MiB over the window
    ([30000 + 300 * i for i in range(12)], MEMORY, False),  # 2.4 MiB over the window
    ([30000, 30000, 30000, 30000, 31000, 29000, 30500, 29500, 30000, 30000, 30000, 36000], MEMORY, False),
    # fds around 10000: tolerance max(20, 1 %) = 100
    ([10000, 10010, 9990, 10005, 9995, 10000, 10003, 9998, 10001, 10000], FDS, False),
    ([10000 + 20 * i for i in range(10)], FDS, True),
    ([40, 41, 39, 40, 60, 40, 40, 41, 40, 39], FDS, False),  # one spike of churn sessions in flight
    ([40, 45, 50, 55, 60, 65, 70, 75, 80, 85], FDS, True),  # a small process leaking 5 fds a sample
])
def test_growth(values: list[float], tolerance: Tolerance, growing: bool) -> None:
    assert trend(series(values), tolerance).growing is growing


def test_trend_reports_the_projection() -> None:
    found = trend(series([100 + 10 * i for i in range(7)]), Tolerance(absolute=5, relative=0.0))
    assert found.samples == 5  # t = 20..60 of 0..60
    assert (found.first, found.last, found.median) == (120, 160, 140)
    assert found.growth == pytest.approx(40.0)
    assert found.allowed == 5
    assert found.growing


def test_no_samples_is_not_growth() -> None:
    assert not trend([], MEMORY).growing
