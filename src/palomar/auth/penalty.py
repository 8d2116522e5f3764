"""Escalating delays for failed authentications, after Dovecot 2.3's auth penalty.

Dovecot (src/auth/auth-penalty.c, src/anvil/penalty.c) keeps a penalty level 0..4 per source IP
(IPv6 masked to /48). Before a login is checked it waits 2 * 2^level seconds, at most 15 (so 4, 8, 15,
15); every failure with a password not among the source's recent ones raises the level by one (the same
wrong password again, e.g. a misconfigured client, does not); a success resets it; 15 seconds without a
new failure drop it to 0. On top of that comes the flat `auth_failure_delay` before a failure is answered.

palomar keeps those rules and adds two things:

* **A source's attempts are serialised.** Dovecot delays each attempt, but attempts on parallel
  connections wait side by side, so 20 connections still give 20 guesses per 17 seconds. Here each
  attempt from a penalised source is checked no earlier than `delay` after the previous one from the
  same source, so guesses from one address are at most one per `delay` however many connections it opens.
* **A per-user level** (optional), so that many addresses guessing one account slow down too. It is not
  serialised: a queue per user would let an attacker lock the owner out for as long as he liked; a
  plain delay costs the owner at most `max_delay` per login while the account is under attack.

Everything here is pure: a `PenaltyRecord` plus an event plus the time gives the new record and the
delay. `PenaltyTable` holds the records of many sources in bounded memory (LRU plus expiry).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import NamedTuple

INITIAL_SECS = 2.0
"""Dovecot's AUTH_PENALTY_INIT_SECS: level n waits INITIAL_SECS * 2^n."""
MAX_LEVEL = 4
"""Dovecot's AUTH_PENALTY_MAX_PENALTY."""
RECENT_CHECKSUMS = 10
"""Dovecot's anvil remembers this many password checksums per source (CHECKSUM_VALUE_PTR_COUNT)."""
IPV6_PREFIX = 48
"""Dovecot's PENALTY_IPV6_MASK_BITS: one IPv6 host cannot flood the table from its whole /64s."""


@dataclass(frozen=True)
class PenaltyPolicy:
    max_delay: float = 15.0
    """Longest wait before a login is checked (Dovecot's AUTH_PENALTY_MAX_SECS); 0 turns penalties off."""

    def delay(self, level: int) -> float:
        """Dovecot's auth_penalty_to_secs: 0 for level 0, else 2 * 2^level capped at max_delay."""
        if level <= 0:
            return 0.0
        return min(INITIAL_SECS * 2 ** level, self.max_delay)

    @property
    def expire(self) -> float:
        """How long an untouched record matters: after max_delay without a failure its level is 0 again
        (Dovecot's AUTH_PENALTY_TIMEOUT is the sum 2+4+8+15 for the same reason: long enough)."""
        return INITIAL_SECS + 4 + 8 + self.max_delay


@dataclass(frozen=True)
class PenaltyRecord:
    level: int = 0
    last_penalty: float = 0.0
    """When the level last rose (decay counts from here, as in Dovecot)."""
    next_check: float = 0.0
    """Earliest time the next attempt of this source may be checked (serialisation)."""
    checksums: tuple[bytes, ...] = ()
    """Keyed hashes of recent wrong user+password pairs, newest first."""
    touched: float = 0.0


def current_level(record: PenaltyRecord, now: float, policy: PenaltyPolicy) -> int:
    """The level after decay: Dovecot's loop in auth_penalty_anvil_callback, with its clock-skew guard."""
    level = record.level
    elapsed = max(0.0, now - record.last_penalty)
    drop = MAX_LEVEL
    while level > 0 and elapsed >= policy.delay(drop):
        drop -= 1
        level -= 1
    return level


def on_attempt(record: PenaltyRecord, now: float, policy: PenaltyPolicy, *, serialise: bool
               ) -> tuple[PenaltyRecord, float]:
    """A login is about to be checked: the record to keep and how long to wait first."""
    wait = policy.delay(current_level(record, now, policy))
    if wait <= 0:
        return record, 0.0
    check_at = max(now, record.next_check if serialise else now) + wait
    return replace(record, next_check=check_at if serialise else record.next_check, touched=now), check_at - now


def on_failure(record: PenaltyRecord, checksum: bytes, now: float, policy: PenaltyPolicy, seen: int = 0
               ) -> PenaltyRecord:
    """A login failed. `seen` is the level when the attempt arrived: as in Dovecot, the wait itself does
    not let the level decay. A checksum seen recently keeps the level (Dovecot's penalty_inc)."""
    level = max(seen, current_level(record, now, policy))
    if checksum in record.checksums:
        recent = (checksum, *(c for c in record.checksums if c != checksum))
        return replace(record, level=level, checksums=recent, touched=now)
    return replace(record, level=min(level + 1, MAX_LEVEL), last_penalty=now,
                   checksums=(checksum, *record.checksums)[:RECENT_CHECKSUMS], touched=now)


def is_expired(record: PenaltyRecord, now: float, policy: PenaltyPolicy) -> bool:
    """Whether the record can be forgotten: no level left and no attempt still scheduled."""
    return now - record.touched >= policy.expire and record.next_check <= now


def source_key(address: str) -> str:
    """Dovecot's penalty identity of a client address: IPv4 as is, IPv6 masked to /48."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False).network_address)
    return str(ip)


class PenaltyTable:
    """Records by key in bounded memory: the least recently touched go first when full, the expired
    whenever they reach the old end. A million sources can only push each other out."""

    def __init__(self, policy: PenaltyPolicy, max_entries: int) -> None:
        self.policy = policy
        self.max_entries = max_entries
        self._records: OrderedDict[str, PenaltyRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str, now: float) -> PenaltyRecord:
        self._expire(now)
        return self._records.get(key) or PenaltyRecord(touched=now)

    def put(self, key: str, record: PenaltyRecord) -> None:
        self._records[key] = record
        self._records.move_to_end(key)
        while len(self._records) > self.max_entries:
            self._records.popitem(last=False)

    def forget(self, key: str) -> None:
        self._records.pop(key, None)

    def _expire(self, now: float) -> None:
        while self._records:
            key, oldest = next(iter(self._records.items()))
            if not is_expired(oldest, now, self.policy):
                return
            del self._records[key]


class Verdict(NamedTuple):
    """What `before_check` decided for one login attempt; `failed` needs it back."""

    wait: float
    source_level: int = 0
    user_level: int = 0


class AuthPenalty:
    """The per-source (and optionally per-user) penalty of one proxy process, shared by all protocols."""

    def __init__(self, policy: PenaltyPolicy, *, max_entries: int, per_user: bool) -> None:
        self.policy = policy
        self.sources = PenaltyTable(policy, max_entries)
        self.users = PenaltyTable(policy, max_entries) if per_user else None
        self.checksum_key = secrets.token_bytes(16)
        """Random per table; the workers of a proxy checksum with their parent's (proxy/penalty_link.py)."""

    @property
    def enabled(self) -> bool:
        return self.policy.max_delay > 0

    @staticmethod
    def keyed_checksum(key: bytes, user: str, password: str) -> bytes:
        """A keyed hash: tells repeated passwords apart without keeping anything guessable."""
        return hashlib.blake2b(f"{user}\0{password}".encode(), key=key, digest_size=8).digest()

    def checksum(self, user: str, password: str) -> bytes:
        return self.keyed_checksum(self.checksum_key, user, password)

    def before_check(self, address: str, user: str, now: float) -> Verdict:
        """How long to wait before checking this login (also reserves the source's next slot)."""
        if not self.enabled:
            return Verdict(0.0)
        key = source_key(address)
        source = self.sources.get(key, now)
        record, wait = on_attempt(source, now, self.policy, serialise=True)
        if wait:
            self.sources.put(key, record)
        user_level = 0
        if self.users is not None:
            account = self.users.get(user, now)
            user_level = current_level(account, now, self.policy)
            wait = max(wait, on_attempt(account, now, self.policy, serialise=False)[1])
        return Verdict(wait, current_level(source, now, self.policy), user_level)

    def failed(self, verdict: Verdict, address: str, user: str, password: str, now: float) -> None:
        self.failed_checksum(verdict, address, user, self.checksum(user, password), now)

    def failed_checksum(self, verdict: Verdict, address: str, user: str, checksum: bytes, now: float) -> None:
        """`failed` with the checksum already made (by a worker, with this table's key)."""
        if not self.enabled:
            return
        key = source_key(address)
        self.sources.put(key, on_failure(self.sources.get(key, now), checksum, now, self.policy,
                                         verdict.source_level))
        if self.users is not None:
            self.users.put(user, on_failure(self.users.get(user, now), checksum, now, self.policy,
                                            verdict.user_level))

    def succeeded(self, address: str, user: str) -> None:
        """Dovecot resets the source's penalty on success; the user's too."""
        self.sources.forget(source_key(address))
        if self.users is not None:
            self.users.forget(user)
