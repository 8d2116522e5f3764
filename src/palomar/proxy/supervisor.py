"""The parent of a proxy run as several worker processes (docs/design/proxy-workers.md).

It opens every listening socket once and starts the workers with those sockets inherited, so all
of them accept on the same queue; it restarts a worker that dies (with backoff) without the port
ever closing, passes SIGHUP on, and on SIGTERM lets every worker drain and waits for them. It also
serves the proxy's `/metrics` port, adding up what the workers serve on their own UNIX sockets, and
holds the proxy's auth penalty table, which every worker asks (proxy/penalty_link.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from palomar.config import Config
from palomar.metrics.http import scrape_unix, serve_stats
from palomar.net.drain import FLUSH_GRACE, LOGIN_GRACE
from palomar.proxy.penalty_link import PENALTY_ENV, serve_worker
from palomar.proxy.workers import Backoff, WorkerRole, merge_expositions, worker_metrics_address
from palomar.service_runtime import stop_signal

log = logging.getLogger("palomar.proxy")

ROLE_ENV = "PALOMAR_PROXY_WORKER"
"""`index/count` of a worker process; unset in a proxy that runs alone."""
SOCKETS_ENV = "PALOMAR_PROXY_SOCKETS"
"""`key=fd;...`: the listening sockets a worker inherited, by `service.listener_key`."""
STARTUP_FAILED = 3
"""A worker's exit status when it could not start (a configuration or store problem): at the proxy's own
start the parent stops, as a single process would; a restarted worker is retried with backoff."""
STOP_BOUND = LOGIN_GRACE + FLUSH_GRACE + 10
"""Seconds the parent waits for draining workers after SIGTERM before it kills them."""
SCRAPE_TIMEOUT = 5.0


@dataclass
class Slot:
    """One worker position: the process in it now and its restart history."""

    role: WorkerRole
    proc: asyncio.subprocess.Process | None = None
    backoff: Backoff = field(default_factory=Backoff)
    starts: int = 0


def encode_sockets(sockets: dict[str, socket.socket]) -> str:
    return ";".join(f"{key}={sock.fileno()}" for key, sock in sockets.items())


def decode_sockets(text: str) -> dict[str, socket.socket]:
    """The inherited listening sockets, non-blocking as the accept loops want them."""
    sockets = {}
    for item in filter(None, text.split(";")):
        key, _, fd = item.rpartition("=")
        sock = socket.socket(fileno=int(fd))
        sock.setblocking(False)
        sockets[key] = sock
    return sockets


def die_with_parent() -> None:
    """A worker must not outlive a killed parent (it would keep the ports and the LocalDB busy)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(self, cfg: Config, config_path: str, count: int) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.slots = [Slot(WorkerRole(index, count)) for index in range(count)]
        self.stopping = False
        self.failed_start: str | None = None
        self.fatal = asyncio.Event()
        from palomar.proxy.service import penalty_table

        self.penalty = penalty_table(cfg)
        """The proxy's one auth penalty table, asked by every worker (as Dovecot's anvil)."""

    def _signal_all(self, sig: signal.Signals) -> int:
        sent = 0
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(sig)
                    sent += 1
        return sent

    def reload(self) -> list[str]:
        return [f"SIGHUP passed to {self._signal_all(signal.SIGHUP)} worker(s)"]

    async def _keep(self, slot: Slot, sockets: str, fds: list[int]) -> None:
        """Run the worker of `slot` until the proxy stops; start it again when it dies."""
        while not self.stopping:
            ours, theirs = socket.socketpair()  # the worker's link to the auth penalty table
            env = {**os.environ, ROLE_ENV: slot.role.encode(), SOCKETS_ENV: sockets, PENALTY_ENV: str(theirs.fileno())}
            started = time.monotonic()
            slot.starts += 1
            try:
                slot.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "palomar", "proxy", "-c", self.config_path, env=env,
                    pass_fds=[*fds, theirs.fileno()])
            except OSError as exc:  # no process or descriptor left now: the slot retries, it never goes away
                ours.close()
                delay = slot.backoff.next_delay(time.monotonic() - started)
                log.error("worker %d could not be started (%s); trying again in %gs", slot.role.index, exc, delay)
                await asyncio.sleep(delay)  # deliberate: the restart backoff
                continue
            finally:
                theirs.close()
            link = asyncio.create_task(serve_worker(self.penalty, ours))
            log.info("worker %d started, pid %d", slot.role.index, slot.proc.pid)
            status = await slot.proc.wait()
            link.cancel()
            if self.stopping:
                return
            if status == STARTUP_FAILED and slot.starts == 1:  # a restart meeting a GeoDB outage retries
                self.failed_start = f"worker {slot.role.index} could not start (see its log lines above)"
                self.fatal.set()
                return
            delay = slot.backoff.next_delay(time.monotonic() - started)
            log.warning("worker %d (pid %d) exited with status %d; starting it again in %gs", slot.role.index,
                        slot.proc.pid, status, delay)
            await asyncio.sleep(delay)  # deliberate: the restart backoff

    async def render_metrics(self) -> str:
        """The workers' metrics added up; a worker that is restarting is left out of this scrape."""
        texts = []
        for slot in self.slots:
            try:
                texts.append((slot.role.index, await scrape_unix(
                    worker_metrics_address(os.getpid(), slot.role.index), SCRAPE_TIMEOUT)))
            except (OSError, TimeoutError) as exc:
                log.debug("metrics of worker %d not read: %s", slot.role.index, exc)
        return merge_expositions(texts)

    async def run(self) -> int:
        from palomar.proxy.service import open_listeners

        sockets = open_listeners(self.cfg)
        fds = [sock.fileno() for sock in sockets.values()]
        for sock in sockets.values():
            sock.set_inheritable(True)
        encoded = encode_sockets(sockets)
        stop = stop_signal(self.reload)
        metrics_servers = await serve_stats(self.cfg, self.render_metrics)
        keepers = [asyncio.create_task(self._keep(slot, encoded, fds)) for slot in self.slots]
        log.info("proxy parent started %d workers for site %s", len(self.slots), self.cfg["cluster_local_site"])
        fatal = asyncio.ensure_future(self.fatal.wait())
        await asyncio.wait([stop, fatal], return_when=asyncio.FIRST_COMPLETED)
        fatal.cancel()
        self.stopping = True
        for server in metrics_servers:
            server.close()
        sent = self._signal_all(signal.SIGTERM)
        log.info("stopping: SIGTERM passed to %d worker(s)", sent)
        statuses = await self._wait_workers()
        for task in keepers:
            task.cancel()
        for sock in sockets.values():
            sock.close()
        if self.failed_start is not None:
            raise RuntimeError(self.failed_start)
        failed = [status for status in statuses if status not in (0, None)]
        log.info("proxy parent stopped%s", f"; {len(failed)} worker(s) exited with an error" if failed else "")
        return 1 if failed else 0

    async def _wait_workers(self) -> list[int | None]:
        procs = [slot.proc for slot in self.slots if slot.proc is not None]
        try:
            async with asyncio.timeout(STOP_BOUND):
                return [await proc.wait() for proc in procs]
        except TimeoutError:
            log.error("workers still running %gs after SIGTERM: killing them", STOP_BOUND)
            self._signal_all(signal.SIGKILL)
            return [await proc.wait() for proc in procs]


async def run_parent(cfg: Config, config_path: str, count: int) -> int:
    return await Supervisor(cfg, config_path, count).run()
