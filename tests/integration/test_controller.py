"""A real `palomar controller` process on a SQLite GeoDB: the health feature in its three states.

The proxies' probe results are written straight into `proxy_dest_stats` through the repository,
the way a proxy writes them. The test follows the controller through its log lines (one
`controller_tick` debug line per evaluation), never through sleeps: "two ticks after my write"
means at least one whole evaluation read the GeoDB after the write.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from palomar.cluster.model import Backend, ProxyDestStat, Setting, Site
from palomar.devcluster.net import free_port
from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB

WAIT = 30.0


class ControllerProcess:
    """`python -m palomar controller -c CONFIG` with its log lines collected as they come."""

    def __init__(self, config: Path) -> None:
        env = {**os.environ, "PALOMAR_DEBUG": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "palomar", "controller", "-c", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str) -> str:
        """The next log line containing `text` (lines before it are consumed)."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no log line with {text!r}; log:\n" + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"controller exited before logging {text!r}:\n" + "\n".join(self.lines))
            if text in line:
                return line

    def ticks(self, count: int = 2) -> None:
        """Wait until `count` evaluations have finished after this call."""
        for _ in range(count):
            self.wait_for("event=controller_tick ")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=WAIT)
        self._reader.join(timeout=WAIT)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)


class Setup:
    """Site east: b1 offline (set by a proxy), b2 offline (set by an administrator), b3 online."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.geodb_path = root / "geodb.sqlite"
        self.metrics_port = free_port()
        self.config = root / "controller.conf"
        self.config.write_text(
            "cluster_local_site = east\n"
            "cluster_geodb_driver = sqlite\n"
            f"cluster_geodb_path = {self.geodb_path}\n"
            f"base_dir = {root / 'run'}\n"
            "controller_interval = 200 ms\n"
            "service stats {\n"
            "  inet_listener http {\n"
            "    address = 127.0.0.1\n"
            f"    port = {self.metrics_port}\n"
            "  }\n"
            "}\n"
        )
        self.site = Site(uuid4(), "east")
        self.ids = {host: uuid4() for host in ("b1.test", "b2.test", "b3.test")}
        self.db(self._seed)

    def db(self, action):
        async def go():
            engine = open_engine("sqlite", path=str(self.geodb_path))
            await engine.open()
            db = GeoDB(engine)
            try:
                return await action(db)
            finally:
                await db.close()

        return asyncio.run(go())

    async def _seed(self, db: GeoDB) -> None:
        await db.site_add(self.site)
        for host, backend_id in self.ids.items():
            await db.backend_add(Backend(backend_id, self.site.id, host))
        await db.backend_set_status(self.site.id, self.ids["b3.test"], "online", "admin")
        self.offline_at = {
            "b1.test": await db.backend_set_status(self.site.id, self.ids["b1.test"], "offline",
                                                   "proxy p1: 3 destination failures in 10s"),
            "b2.test": await db.backend_set_status(self.site.id, self.ids["b2.test"], "offline", "admin"),
        }

    def probes(self, host: str, consecutive: int) -> None:
        """What proxy p1 writes after probing `host` successfully `consecutive` times since it failed."""
        last = max(time.time(), self.offline_at[host] / 1e6 + 0.001)
        rows = [
            ProxyDestStat(self.site.id, host, "p1", "probe_success", consecutive, "counter"),
            ProxyDestStat(self.site.id, host, "p1", "probe_last_success", last, "gauge"),
            ProxyDestStat(self.site.id, host, "p1", "probe_consecutive_success", consecutive, "gauge"),
        ]
        self.db(lambda db: db.proxy_dest_stats_put(rows))

    def feature(self, state: str) -> None:
        self.db(lambda db: db.setting_put(Setting("controller", "health", state, site_id=self.site.id)))

    def backend(self, host: str) -> Backend:
        return self.db(lambda db: db.backend_get(self.site.id, self.ids[host]))

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


@pytest.fixture
def start(setup: Setup) -> Iterator:
    started: list[ControllerProcess] = []

    def run() -> ControllerProcess:
        controller = ControllerProcess(setup.config)
        started.append(controller)
        controller.wait_for("event=controller_started site=east")
        return controller

    yield run
    for controller in started:
        controller.kill()


def _uuid(value: UUID) -> str:
    return str(value)


def test_health_on_sets_the_proxy_marked_backend_online_and_leaves_the_admins(setup: Setup, start) -> None:
    setup.feature("on")
    setup.probes("b1.test", 3)
    setup.probes("b2.test", 3)
    controller = start()
    event = controller.wait_for("event=cluster_backend_status_changed")
    assert f"backend=b1.test backend_id={_uuid(setup.ids['b1.test'])} site=east status=online" in event
    assert 'reason="controller: probes succeeded on 1 proxy' in event
    b1 = setup.backend("b1.test")
    assert (b1.status, b1.status_reason) == ("online", event.split('reason="')[1].split('"')[0])
    assert b1.status_changed_us > setup.offline_at["b1.test"]
    controller.ticks(2)
    b2 = setup.backend("b2.test")
    assert (b2.status, b2.status_reason) == ("offline", "admin")
    metrics = setup.metrics()
    assert 'palomar_controller_backends{site="east",status="online"} 2' in metrics
    assert 'palomar_controller_backends{site="east",status="offline"} 1' in metrics
    assert 'palomar_controller_decisions_total{feature="health",state="on",action="set_online"} 1' in metrics
    assert 'palomar_controller_feature_state{site="east",feature="health",state="on"} 1' in metrics
    assert sum("cluster_backend_status_changed" in line for line in controller.lines) == 1
    assert controller.stop() == 0


def test_dryrun_only_logs_then_on_acts(setup: Setup, start) -> None:
    setup.feature("dryrun")
    setup.probes("b1.test", 5)
    controller = start()
    line = controller.wait_for("event=controller_dryrun")
    assert 'feature=health site=east backend=b1.test would="set status online"' in line
    controller.ticks(3)
    b1 = setup.backend("b1.test")
    assert (b1.status, b1.status_reason) == ("offline", "proxy p1: 3 destination failures in 10s")
    assert sum("controller_dryrun" in line for line in controller.lines) == 1
    assert 'palomar_controller_decisions_total{feature="health",state="dryrun",action="set_online"} 1' in (
        setup.metrics()
    )
    setup.feature("on")
    controller.wait_for("event=cluster_backend_status_changed backend=b1.test")
    assert setup.backend("b1.test").status == "online"
    assert controller.stop() == 0


def test_off_does_nothing(setup: Setup, start) -> None:
    setup.feature("off")
    setup.probes("b1.test", 5)
    controller = start()
    controller.ticks(3)
    b1 = setup.backend("b1.test")
    assert (b1.status, b1.status_changed_us) == ("offline", setup.offline_at["b1.test"])
    assert not any("controller_dryrun" in line or "status_changed" in line for line in controller.lines)
    assert 'palomar_controller_feature_state{site="east",feature="health",state="off"} 1' in setup.metrics()
    assert controller.stop() == 0


def test_unsteady_probes_wait_and_a_restarted_controller_carries_on(setup: Setup, start) -> None:
    setup.feature("on")
    setup.probes("b1.test", 2)
    controller = start()
    controller.ticks(3)
    assert setup.backend("b1.test").status == "offline"
    assert controller.stop() == 0
    assert any("event=controller_stopped site=east" in line for line in controller.lines)
    setup.probes("b1.test", 3)
    restarted = start()
    restarted.wait_for("event=cluster_backend_status_changed backend=b1.test")
    assert setup.backend("b1.test").status == "online"
    assert restarted.stop() == 0


def test_controller_without_a_site_name_fails_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.conf"
    config.write_text(f"cluster_geodb_path = {tmp_path / 'g.sqlite'}\nbase_dir = {tmp_path / 'run'}\n")
    result = subprocess.run([sys.executable, "-m", "palomar", "controller", "-c", str(config)],
                            capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "palomar controller: cluster_local_site is not set: a controller manages exactly one site"
    )
    assert "Traceback" not in result.stderr
