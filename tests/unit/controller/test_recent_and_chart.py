"""The controller's sample window and the UI's inline SVG chart."""

from __future__ import annotations

from uuid import uuid4

from palomar.cluster.model import Backend, Stat
from palomar.controller.recent import Recent
from palomar.controller.web_ui import load_chart

SITE = uuid4()


def test_samples_keep_gauges_only_and_are_bounded() -> None:
    a = Backend(uuid4(), SITE, "a.test", user_count_approx=7)
    b = Backend(uuid4(), SITE, "b.test")
    recent = Recent(samples=3)
    for t in range(5):
        recent.sample(float(t), [a, b], {a.id: [Stat("sessions_active", t, "gauge"), Stat("logins", 99, "counter")],
                                         b.id: [Stat("cpu", 0.5, "gauge")]})
    assert recent.metrics() == ["cpu", "sessions_active", "users_approx"]
    assert recent.series("sessions_active") == {"a.test": [(2.0, 2), (3.0, 3), (4.0, 4)]}
    assert recent.series("users_approx") == {"a.test": [(2.0, 7.0), (3.0, 7.0), (4.0, 7.0)]}
    assert recent.series("logins") == {}


def test_chart_draws_a_line_per_backend_and_escapes_names() -> None:
    svg = load_chart({"<b>x</b>": [(0.0, 1.0), (10.0, 3.0)], "y": [(0.0, 0.0), (10.0, 0.0)]})
    assert svg.count("<polyline") == 2
    assert "<b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg
    assert ">3<" in svg  # the top of the value axis is the largest value
    assert "No samples" in load_chart({})
