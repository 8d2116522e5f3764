"""Stable hashes the cluster rules share.

Every proxy must reach the same answer from the same data without talking to the
others, and the answer must survive restarts and upgrades. So these functions hash
with SHA-256 over explicit bytes; Python's `hash()` is salted per process and would
send the same user to different places from different proxies.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from uuid import UUID

FORCE_MOVE_BUCKETS = 100
"""Force-move buckets are 0..99, so a percentage selects exactly that share of users."""

_SEPARATOR = b"\x00"
"""Keeps ("ab", "c") and ("a", "bc") apart when two strings are hashed together."""


def _hash64(*parts: bytes) -> int:
    """First 64 bits of SHA-256 over the parts joined by NUL, as an unsigned integer."""
    digest = hashlib.sha256(_SEPARATOR.join(parts)).digest()
    return int.from_bytes(digest[:8], "big")


def default_group_name(username: str, group_count: int) -> str:
    """The `default-N` group a new user joins, N in 1..group_count.

    Derived from the username alone so that two proxies creating the same new user at
    the same time write the same group name (the write is then harmless to repeat).
    """
    return f"default-{group_number(username, group_count)}"


def group_number(username: str, group_count: int) -> int:
    """The user's group number 1..group_count, shared by `default-N` and the director transition's groups."""
    if group_count < 1:
        raise ValueError(f"cluster_default_group_count must be at least 1, not {group_count}")
    return _hash64(username.encode()) % group_count + 1


def force_move_bucket(move_id: UUID, username: str) -> int:
    """The user's bucket 0..99 for one force-move.

    Salted with the move id so that separate force-moves pick unrelated users, while
    raising the percentage of the same move keeps every user it had already moved.
    """
    return _hash64(move_id.bytes, username.encode()) % FORCE_MOVE_BUCKETS


def _unit_interval(key: str, candidate: str) -> float:
    """A uniform value strictly inside (0, 1) for the pair, from 53 hash bits (a float's mantissa)."""
    bits = _hash64(key.encode(), candidate.encode()) >> 11
    return (bits + 0.5) / (1 << 53)


def rendezvous_score(key: str, candidate: str, weight: float) -> float:
    """Weighted highest-random-weight score: -weight / ln(u).

    With u uniform, the candidate with the highest score wins with probability
    weight / sum(weights), which is what makes load factors shape the distribution.
    """
    return -weight / math.log(_unit_interval(key, candidate))


def weighted_rendezvous(key: str, candidates: Iterable[tuple[str, float]]) -> str | None:
    """The candidate that wins `key`, or None when no candidate has a positive weight.

    Adding or removing one candidate only moves the keys that it wins or had won, so a
    new backend takes about 1/n of the groups and leaves the rest where they are.
    """
    best: tuple[float, str] | None = None
    for name, weight in candidates:
        if weight <= 0:
            continue
        score = (rendezvous_score(key, name, weight), name)
        if best is None or score > best:
            best = score
    return None if best is None else best[1]
