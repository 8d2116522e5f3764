"""The web UI's chart and decision list come from the controller's (persisted) history, and the
inline SVG chart."""

from __future__ import annotations

from uuid import uuid4

from palomar.backend.load_sample import SAMPLED_AT
from palomar.cluster.model import Backend, Stat
from palomar.controller.history import DecisionRecord, History
from palomar.controller.web_ui import load_chart

SITE = uuid4()


def test_the_chart_series_are_the_planners_samples_by_host_and_survive_a_restart(tmp_path) -> None:
    a = Backend(uuid4(), SITE, "a.test", user_count_approx=7)
    b = Backend(uuid4(), SITE, "b.test")
    history = History(str(tmp_path / "h.sqlite"), samples_per_backend=3)
    for t in range(5):
        history.keep_backends([a, b])
        history.observe({a.id: [Stat(SAMPLED_AT, float(t), "gauge"), Stat("sessions_active", t, "gauge"),
                                Stat("logins", 99, "counter")],
                         b.id: [Stat(SAMPLED_AT, float(t), "gauge"), Stat("cpu", 0.5, "gauge")]},
                        {a.id: a.user_count_approx, b.id: None})
    assert history.metrics() == ["cpu", "sessions_active", "users_approx"]
    assert history.series("sessions_active") == {"a.test": [(2.0, 2), (3.0, 3), (4.0, 4)]}
    assert history.series("users_approx") == {"a.test": [(2.0, 7.0), (3.0, 7.0), (4.0, 7.0)]}
    assert history.series("logins") == {}
    history.close()
    again = History(str(tmp_path / "h.sqlite"), samples_per_backend=3)
    assert again.series("cpu") == {"b.test": [(2.0, 0.5), (3.0, 0.5), (4.0, 0.5)]}
    again.keep_backends([a])
    assert again.series("cpu") == {}


def test_decisions_are_bounded_and_survive_a_restart(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("palomar.controller.history.RECENT_DECISIONS", 3)
    history = History(str(tmp_path / "h.sqlite"), 5)
    for t in range(5):
        history.decided(DecisionRecord(float(t), "balance", "on", "b1", "move_group", f"r{t}", t % 2 == 0))
    assert [d.reason for d in history.decisions] == ["r2", "r3", "r4"]
    history.close()
    again = History(str(tmp_path / "h.sqlite"), 5)
    assert list(again.decisions) == [DecisionRecord(float(t), "balance", "on", "b1", "move_group", f"r{t}", t % 2 == 0)
                                     for t in (2, 3, 4)]


def test_chart_draws_a_line_per_backend_and_escapes_names() -> None:
    svg = load_chart({"<b>x</b>": [(0.0, 1.0), (10.0, 3.0)], "y": [(0.0, 0.0), (10.0, 0.0)]})
    assert svg.count("<polyline") == 2
    assert "<b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg
    assert ">3<" in svg  # the top of the value axis is the largest value
    assert "No samples" in load_chart({})
