"""The controller's load history: bounded per backend, new samples only, and kept across a restart."""

from __future__ import annotations

from uuid import UUID

from palomar.backend.load_sample import SAMPLED_AT
from palomar.cluster.model import Backend, Stat
from palomar.cluster.planning import MoveRecord
from palomar.controller.history import MOVE_MEMORY_SECS, History

B1, B2 = UUID(int=1), UUID(int=2)


def _stats(at: float, cpu: float) -> list[Stat]:
    return [Stat(SAMPLED_AT, at, "gauge"), Stat("load_cpu_pct", cpu, "gauge"), Stat("logins", 9, "counter")]


def test_only_new_samples_are_added_and_the_window_is_bounded(tmp_path) -> None:
    history = History(str(tmp_path / "h.sqlite"), samples_per_backend=3)
    assert history.observe({B1: _stats(10, 1), B2: [Stat("logins", 1)]}) == 1  # B2 predates sampling
    assert history.observe({B1: _stats(10, 1)}) == 0  # the same sample read again
    for at in (20, 30, 40):
        history.observe({B1: _stats(at, at)})
    assert [s.at for s in history.samples[B1]] == [20, 30, 40]
    assert history.seen[B1] == 4
    assert history.samples[B1][-1].values == {SAMPLED_AT: 40, "load_cpu_pct": 40}  # gauges only
    history.close()

    again = History(str(tmp_path / "h.sqlite"), samples_per_backend=3)
    assert [s.at for s in again.samples[B1]] == [20, 30, 40]
    assert again.seen[B1] == 4


def test_moves_and_timers_survive_a_restart_and_old_moves_are_forgotten(tmp_path) -> None:
    path = str(tmp_path / "h.sqlite")
    history = History(path, 10)
    history.record_move(MoveRecord("balance", "g1", B1, B2, 100.0))
    history.record_move(MoveRecord("evacuate", "g2", None, B2, 100.0 + MOVE_MEMORY_SECS + 1))
    history.set_timer("site-down:x", "42")
    history.set_timer("gone", "1")
    history.set_timer("gone", None)
    history.close()
    again = History(path, 10)
    assert again.moves == [MoveRecord("evacuate", "g2", None, B2, 100.0 + MOVE_MEMORY_SECS + 1)]
    assert again.timers == {"site-down:x": "42"}


def test_forgotten_backends_lose_their_history(tmp_path) -> None:
    history = History(str(tmp_path / "h.sqlite"), 5)
    history.observe({B1: _stats(1, 1), B2: _stats(1, 2)})
    history.keep_backends([Backend(B2, UUID(int=9), "b2")])
    history.close()
    again = History(str(tmp_path / "h.sqlite"), 5)
    assert set(again.samples) == {B2} and set(again.seen) == {B2}
