"""Dovecot's auth cache: passdb answers kept for ``auth_cache_ttl`` in at most ``auth_cache_size`` bytes.

What is cached is the driver's answer (the stored password hash and the extra fields), never a
verdict: a login is checked against the cached hash each time, so a wrong password can never be
served by a positive entry. Dovecot's rules: an unknown user is cached for
``auth_cache_negative_ttl``; a mismatch against an entry whose last use succeeded goes to the
database (the password may have changed); when the database fails, an entry past its TTL is used
still. With ``auth_bind`` the directory checks the password, so the cache holds a salted hash of
the password that bound (Dovecot keeps an unsalted SHA1 there).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from palomar.auth.driver import DriverLookup

ENTRY_OVERHEAD = 200
"""Bytes counted per entry beyond its strings (the dict slot, the objects): an estimate, so
that ``auth_cache_size`` bounds the memory and not only the text."""


@dataclass
class CacheEntry:
    lookup: DriverLookup
    expires: float
    negative_expires: float
    size: int
    last_success: bool = False

    def expired(self, now: float) -> bool:
        return now >= (self.negative_expires if not self.lookup.found else self.expires)


def entry_size(key: str, lookup: DriverLookup) -> int:
    fields = sum(len(k) + sum(len(p) if isinstance(p, str) else 8 for p in t.parts) for k, t in lookup.fields)
    return ENTRY_OVERHEAD + len(key) + len(lookup.password or "") + fields


class AuthCache:
    """An LRU of driver answers bounded by an estimate of their bytes."""

    def __init__(self, size: int, ttl: float, negative_ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size, self.ttl, self.negative_ttl = size, ttl, negative_ttl
        self._clock = clock
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self.used = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def now(self) -> float:
        return self._clock()

    def get(self, key: str) -> CacheEntry | None:
        """The entry, expired or not (the caller decides; an expired one still serves an outage)."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, lookup: DriverLookup, success: bool = False) -> None:
        if not lookup.found and self.negative_ttl <= 0:
            self.remove(key)
            return
        now = self._clock()
        entry = CacheEntry(lookup, now + self.ttl, now + self.negative_ttl, entry_size(key, lookup), success)
        if entry.size > self.size:
            self.remove(key)
            return
        self.remove(key)
        self._entries[key] = entry
        self.used += entry.size
        while self.used > self.size:
            _, old = self._entries.popitem(last=False)
            self.used -= old.size

    def remove(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.used -= old.size

    def clear(self) -> None:
        self._entries.clear()
        self.used = 0
