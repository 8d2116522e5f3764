"""A real SMTP server on loopback that accepts everything and records it (the submission relay)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller

from palomar.devcluster.net import free_port


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    peer: Any


class _Recorder:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self._sink._record(Received(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.content,
                                    session.peer))
        return "250 OK stored"


class SmtpSink:
    """aiosmtpd in a background thread; `wait_for(n)` blocks until n messages arrived."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._received: list[Received] = []
        self._cond = threading.Condition()
        self._controller = Controller(_Recorder(self), hostname=host, port=self.port, ready_timeout=10)
        self._started = False

    def start(self) -> SmtpSink:
        if not self._started:
            self._controller.start()
            self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self._controller.stop()
            self._started = False

    def _record(self, message: Received) -> None:
        with self._cond:
            self._received.append(message)
            self._cond.notify_all()

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._received)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """All messages once at least `count` have arrived; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._received) >= count, timeout):
                raise TimeoutError(f"{len(self._received)} of {count} messages reached the SMTP sink")
            return list(self._received)

    def wait_for_match(self, predicate, timeout: float = 10.0) -> list[Received]:
        """The messages satisfying `predicate`, once there is at least one; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: any(predicate(m) for m in self._received), timeout):
                raise TimeoutError("no matching message reached the SMTP sink")
            return [m for m in self._received if predicate(m)]
