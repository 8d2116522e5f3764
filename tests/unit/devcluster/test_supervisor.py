"""The demo's supervisor: restart rule (table), reports, giving up; with a test clock, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from palomar.devcluster.supervisor import Child, RestartPolicy, Supervisor, describe_exit

POLICY = RestartPolicy(first_delay=1.0, max_delay=8.0, burst=5, window=300.0)


@pytest.mark.parametrize(("deaths", "now", "delay"), [
    ([100.0], 100.0, 1.0),
    ([100.0, 102.0], 102.0, 2.0),
    ([100.0, 102.0, 105.0], 105.0, 4.0),
    ([100.0, 102.0, 105.0, 110.0], 110.0, 8.0),
    ([100.0, 102.0, 105.0, 110.0, 119.0], 119.0, 8.0),  # capped at max_delay
    ([100.0, 102.0, 105.0, 110.0, 119.0, 128.0], 128.0, None),  # a sixth death within the window
    ([0.0, 10.0, 20.0, 30.0, 40.0, 400.0], 400.0, 1.0),  # old deaths no longer count
])
def test_restart_delay(deaths: list[float], now: float, delay: float | None) -> None:
    assert POLICY.delay(deaths, now) == delay


@pytest.mark.parametrize(("code", "text"), [(-9, "signal SIGKILL"), (1, "exit status 1"), (0, "exit status 0"),
                                            (-15, "signal SIGTERM")])
def test_describe_exit(code: int, text: str) -> None:
    assert describe_exit(code) == text


class FakeProcess:
    """A child whose death and restart outcome the test decides."""

    def __init__(self) -> None:
        self.code: int | None = None
        self.restarts = 0
        self.fail_restart: str | None = None

    def restart(self) -> None:
        if self.fail_restart:
            raise RuntimeError(self.fail_restart + "\nmore detail")
        self.restarts += 1
        self.code = None


def make(now: list[float]) -> tuple[FakeProcess, Supervisor, list[str]]:
    process = FakeProcess()
    reports: list[str] = []
    child = Child("backend1 Dovecot", Path("/x/dovecot.log"), lambda: process.code, process.restart)
    return process, Supervisor([child], reports.append, POLICY, clock=lambda: now[0]), reports


def test_a_dead_child_is_reported_then_restarted_after_the_delay() -> None:
    now = [50.0]
    process, supervisor, reports = make(now)
    supervisor.tick()
    assert reports == [] and process.restarts == 0
    process.code = -9
    supervisor.tick()
    assert reports == ["backend1 Dovecot exited with signal SIGKILL; log /x/dovecot.log; restarting it in 1s"]
    supervisor.tick()
    assert process.restarts == 0  # not before the delay
    now[0] = 51.0
    supervisor.tick()
    assert process.restarts == 1 and reports[-1] == "backend1 Dovecot restarted"


def test_a_failed_restart_counts_as_a_death_and_backs_off() -> None:
    now = [0.0]
    process, supervisor, reports = make(now)
    process.code = 1
    process.fail_restart = "address in use"
    supervisor.tick()
    now[0] = 1.0
    supervisor.tick()
    assert reports[-1] == ("backend1 Dovecot did not restart (address in use); log /x/dovecot.log; "
                           "restarting it in 2s")
    process.fail_restart = None
    now[0] = 3.0
    supervisor.tick()
    assert reports[-1] == "backend1 Dovecot restarted"


def test_a_child_that_keeps_dying_is_given_up_on() -> None:
    now = [0.0]
    process, supervisor, reports = make(now)
    for _ in range(6):
        process.code = 1
        supervisor.tick()
        now[0] += 10.0
        supervisor.tick()
    assert process.restarts == 5
    assert reports[-1] == ("backend1 Dovecot exited with exit status 1; log /x/dovecot.log; not restarting it: "
                           "it failed 6 times, more than 5 in 300s")
    now[0] += 1000.0
    supervisor.tick()
    assert process.restarts == 5
