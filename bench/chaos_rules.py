"""The chaos suite's pure parts: the seeded fault schedule, the mail accounting verdicts, and
which sessions a fault touched. No sockets, no processes: table-tested in tests/bench.

Accounting follows what the protocols promise. A 2xx answer is a promise to store the message
exactly once. A refusal before the message was sent promises nothing was stored. An attempt that
sent the whole message and then lost its answer (the connection dropped, or a 4xx came back
after the final dot because the proxy lost its hop) is uncertain: SMTP's at-least-once window
(RFC 5321 section 6.1), where a client's retry can store a second copy. Copies beyond the 2xx
answers and the uncertain attempts have no excuse.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

KINDS: tuple[str, ...] = (
    "kill-dovecot", "stop-dovecot", "kill-backend", "stop-backend", "kill-proxy", "stop-proxy",
    "kill-controller", "stop-controller", "geodb-write-lock", "lossy-hop",
)
"""SIGKILL or SIGSTOP/SIGCONT of each process kind, a GeoDB that refuses writes for a while, and
packet loss and latency on the hop to one backend."""

TARGETS = {"dovecot": "backends", "backend": "backends", "proxy": "proxies", "hop": "backends"}
"""Process kinds with several instances; the schedule picks one by index."""


@dataclass(frozen=True)
class Fault:
    kind: str
    target: int
    """Index of the backend or proxy (0 when there is only one of its kind)."""
    hold: float
    """Seconds a stop or a lock lasts before SIGCONT or release (0 for a kill)."""
    gap: float
    """Quiet seconds after recovery before the next fault."""


def plan(seed: int, rounds: int, *, backends: int, proxies: int,
         hold: tuple[float, float] = (6.0, 12.0), gap: tuple[float, float] = (3.0, 8.0)) -> list[Fault]:
    """`rounds` rounds, each every kind once in a seeded order, targets and times drawn from `seed`."""
    rng = random.Random(seed)
    counts = {"backends": backends, "proxies": proxies}
    faults = []
    for _ in range(rounds):
        order = list(KINDS)
        rng.shuffle(order)
        for kind in order:
            process = kind.split("-", 1)[1]
            many = TARGETS.get(process)
            target = rng.randrange(counts[many]) if many else 0
            held = 0.0 if kind.startswith("kill-") else round(rng.uniform(*hold), 1)
            faults.append(Fault(kind, target, held, round(rng.uniform(*gap), 1)))
    return faults


# --- mail accounting -------------------------------------------------------------------------------
ACKED = "2xx"
REFUSED = "refused"
"""Refused (4xx/5xx) or cut before the whole message was sent: nothing can have been stored."""
UNCERTAIN = "uncertain"
"""The whole message was sent and no 2xx came back (a drop, a timeout, or a 4xx/5xx after DATA)."""


@dataclass
class Message:
    """One message with a unique Message-ID, to one mailbox, and every attempt to hand it over."""

    msgid: str
    user: str
    protocol: str
    outcomes: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    """The server's answers (or the client's error), one per attempt, for the report."""

    @property
    def acked(self) -> int:
        return self.outcomes.count(ACKED)

    @property
    def uncertain(self) -> int:
        return self.outcomes.count(UNCERTAIN)


LOST = "lost"
DUPLICATED = "duplicated"
STORED_AFTER_REFUSAL = "stored-after-refusal"
VIOLATIONS = (LOST, DUPLICATED, STORED_AFTER_REFUSAL)
EXACTLY_ONCE = "exactly-once"
DUPLICATE_AFTER_UNCERTAIN = "duplicate-after-uncertain"
ABSENT_AFTER_UNCERTAIN = "absent-after-uncertain"
STORED_AFTER_UNCERTAIN = "stored-after-uncertain"
NEVER_ACCEPTED = "never-accepted"


def verdict(message: Message, copies: int) -> str:
    """What `copies` stored copies of `message` mean, given every answer its attempts got."""
    if message.acked:
        if copies == 0:
            return LOST
        if copies == 1:
            return EXACTLY_ONCE
        return DUPLICATE_AFTER_UNCERTAIN if copies <= message.acked + message.uncertain else DUPLICATED
    if copies == 0:
        return ABSENT_AFTER_UNCERTAIN if message.uncertain else NEVER_ACCEPTED
    if copies <= message.uncertain:
        return STORED_AFTER_UNCERTAIN
    return STORED_AFTER_REFUSAL


def tally(messages: Iterable[Message], copies: dict[str, int]) -> dict[str, list[Message]]:
    """Messages by verdict; `copies` maps Message-ID to the number found in the store."""
    found: dict[str, list[Message]] = {}
    for message in messages:
        found.setdefault(verdict(message, copies.get(message.msgid, 0)), []).append(message)
    return found


def strays(sent: Iterable[Message], copies: dict[str, int]) -> list[str]:
    """Message-IDs in the store that no client ever sent (must be none)."""
    known = {m.msgid for m in sent}
    return sorted(msgid for msgid, n in copies.items() if n and msgid not in known)


# --- fault windows and sessions --------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    kind: str
    start: float
    end: float
    """When the cluster was healthy again (or the recovery bound ran out)."""


@dataclass(frozen=True)
class Session:
    protocol: str
    start: float
    end: float
    ok: bool
    step: str = ""
    """Where a failed session failed (connect, login, select, fetch, append, idle, logout)."""
    error: str = ""


def attribute(session: Session, windows: Sequence[Window]) -> str:
    """The fault kind whose window the session overlapped (the latest one), or `none`."""
    touched = [w for w in windows if session.start < w.end and session.end > w.start]
    return touched[-1].kind if touched else "none"


def failure_rates(sessions: Iterable[Session], windows: Sequence[Window]) -> dict[str, tuple[int, int]]:
    """(failed, total) sessions by the fault kind they overlapped, `none` for undisturbed ones."""
    rates: dict[str, tuple[int, int]] = {}
    for session in sessions:
        kind = attribute(session, windows)
        failed, total = rates.get(kind, (0, 0))
        rates[kind] = (failed + (not session.ok), total + 1)
    return rates


@dataclass(frozen=True)
class Stall:
    """A backend's `palomar backend` or Dovecot stopped (SIGSTOP) from `start` to `end` (SIGCONT)."""

    backend: str
    start: float
    end: float = math.inf
    """math.inf while the stall goes on."""


SETTLE = 5.0
"""Seconds after a stalled backend resumes in which its `doveadm who` may still list sessions that its
proxies cut during the stall: the resumed `palomar backend` sees their hops closed and closes them at
its Dovecot, whose session processes then exit (about a second; tests/integration/test_backend_stall.py)."""


def stalled(stalls: Iterable[Stall], start: float, end: float, settle: float = SETTLE) -> set[str]:
    """Backends stalled at some moment of the sample [start, end], or resumed less than `settle` before."""
    return {s.backend for s in stalls if s.start <= end and start <= s.end + settle}


def double_service(sample: dict[str, set[str] | None], stalled: Iterable[str] = ()) -> set[str]:
    """Users listed by `doveadm who` on more than one backend in one sample (None: no answer).

    A listing on a `stalled` backend is not service: no byte of it can reach a client (its relay
    or its Dovecot is stopped, and the proxies cut its sessions when it went offline, see
    docs/design/health.md, "Fencing"); such a session is a leftover that the backend ends after it
    resumes. Two listings on backends that run are double service."""
    skip = set(stalled)
    seen: set[str] = set()
    twice: set[str] = set()
    for backend, users in sample.items():
        if backend in skip:
            continue
        for user in users or ():
            (twice if user in seen else seen).add(user)
    return twice
