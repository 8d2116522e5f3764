"""The auth penalty as the proxy's sessions use it: one table per proxy, however many workers.

Dovecot keeps the penalty in one process, anvil, that every login process asks. A proxy run as
worker processes (docs/design/proxy-workers.md) does the same: the parent holds the one
`AuthPenalty` table and each worker asks it over a private socket pair (created by the parent at
the worker's start, inherited as a descriptor: no name another process could connect to). So N
workers allow no more guesses than one process. A proxy that runs alone keeps the table in
process (`LocalPenalty`).

The link carries one JSON line per request and per answer, one request at a time per worker. It
carries no password: a worker sends a keyed checksum of user and password, under a key the parent
sends first. If the parent stops answering (it never should: it outlives its workers), the worker
falls back to a table of its own and says so once in the log: degraded (per worker), not stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from typing import Protocol

from palomar.auth.penalty import AuthPenalty, Verdict

log = logging.getLogger("palomar.proxy")

PENALTY_ENV = "PALOMAR_PROXY_PENALTY"
"""The descriptor of a worker's end of its penalty socket pair."""
ANSWER_TIMEOUT = 5.0
"""The parent answers from memory in microseconds; this only bounds a wedged parent."""
MAX_LINE = 64 * 1024


class Penalty(Protocol):
    """What a session asks about the auth penalty (`AuthPenalty`'s verbs, awaitable)."""

    @property
    def enabled(self) -> bool: ...

    async def before_check(self, address: str, user: str) -> Verdict: ...

    async def failed(self, verdict: Verdict, address: str, user: str, password: str) -> None: ...

    async def succeeded(self, address: str, user: str) -> None: ...


class LocalPenalty:
    """The table in this process: a proxy that runs alone (and a worker whose parent link broke)."""

    def __init__(self, penalty: AuthPenalty) -> None:
        self.table = penalty

    @property
    def enabled(self) -> bool:
        return self.table.enabled

    async def before_check(self, address: str, user: str) -> Verdict:
        return self.table.before_check(address, user, time.monotonic())

    async def failed(self, verdict: Verdict, address: str, user: str, password: str) -> None:
        self.table.failed(verdict, address, user, password, time.monotonic())

    async def succeeded(self, address: str, user: str) -> None:
        self.table.succeeded(address, user)


class SharedPenalty:
    """A worker's view of the parent's table."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, checksum_key: bytes,
                 fallback: AuthPenalty) -> None:
        self._reader, self._writer = reader, writer
        self._key = checksum_key
        self._fallback = LocalPenalty(fallback)
        self._lock = asyncio.Lock()
        self._broken = False

    @classmethod
    async def connect(cls, sock: socket.socket, fallback: AuthPenalty) -> SharedPenalty:
        """Open the link on the inherited socket; the parent's first line is the checksum key."""
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_LINE)
        async with asyncio.timeout(ANSWER_TIMEOUT):
            hello = json.loads(await reader.readline())
        return cls(reader, writer, bytes.fromhex(hello["key"]), fallback)

    @property
    def enabled(self) -> bool:
        return self._fallback.enabled

    async def _ask(self, request: dict) -> dict | None:
        """One round trip; None (and the fallback from then on) when the parent does not answer.

        Shielded: a login cancelled while it waits (its client went away) lets the round trip
        finish, so its answer is read here and not taken for the next question's."""
        if self._broken:
            return None
        return await asyncio.shield(self._round_trip(request))

    async def _round_trip(self, request: dict) -> dict | None:
        try:
            async with self._lock:
                if self._broken:  # it broke while this login waited for the lock: logged once already
                    return None
                self._writer.write(json.dumps(request).encode() + b"\n")
                async with asyncio.timeout(ANSWER_TIMEOUT):
                    await self._writer.drain()
                    line = await self._reader.readline()
            if not line:
                raise ConnectionError("the parent closed the penalty link")
            reply = json.loads(line)
        except (OSError, TimeoutError, ValueError) as exc:
            self._broken = True
            log.error("auth penalty: the proxy parent does not answer (%s); this worker keeps a table of its "
                      "own from now on", exc)
            with contextlib.suppress(Exception):
                self._writer.close()
            return None
        return None if "error" in reply else reply  # the parent logged what it refused

    async def before_check(self, address: str, user: str) -> Verdict:
        answer = await self._ask({"op": "before", "address": address, "user": user})
        if answer is None:
            return await self._fallback.before_check(address, user)
        return Verdict(float(answer["wait"]), int(answer["source_level"]), int(answer["user_level"]))

    async def failed(self, verdict: Verdict, address: str, user: str, password: str) -> None:
        checksum = AuthPenalty.keyed_checksum(self._key, user, password)
        answer = await self._ask({"op": "failed", "address": address, "user": user, "checksum": checksum.hex(),
                                  "source_level": verdict.source_level, "user_level": verdict.user_level})
        if answer is None:
            await self._fallback.failed(verdict, address, user, password)

    async def succeeded(self, address: str, user: str) -> None:
        if await self._ask({"op": "succeeded", "address": address, "user": user}) is None:
            await self._fallback.succeeded(address, user)


def answer(penalty: AuthPenalty, request: dict, now: float) -> dict:
    """The parent's answer to one worker request (pure apart from the table it updates)."""
    op, address, user = request["op"], str(request["address"]), str(request["user"])
    if op == "before":
        verdict = penalty.before_check(address, user, now)
        return {"wait": verdict.wait, "source_level": verdict.source_level, "user_level": verdict.user_level}
    if op == "failed":
        verdict = Verdict(0.0, int(request["source_level"]), int(request["user_level"]))
        penalty.failed_checksum(verdict, address, user, bytes.fromhex(request["checksum"]), now)
        return {}
    if op == "succeeded":
        penalty.succeeded(address, user)
        return {}
    raise ValueError(f"unknown penalty request {op!r}")


async def serve_worker(penalty: AuthPenalty, sock: socket.socket) -> None:
    """The parent's end of one worker's link: answer until the worker goes away."""
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_LINE)
    try:
        writer.write(json.dumps({"key": penalty.checksum_key.hex()}).encode() + b"\n")
        while line := await reader.readline():
            try:
                reply = answer(penalty, json.loads(line), time.monotonic())
            except (ValueError, KeyError, TypeError) as exc:  # a worker bug: say so, keep serving it
                log.error("auth penalty: bad request from a worker: %s", exc)
                reply = {"error": str(exc)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
    except (OSError, ValueError) as exc:
        log.debug("auth penalty link closed: %s", exc)
    finally:
        writer.close()
