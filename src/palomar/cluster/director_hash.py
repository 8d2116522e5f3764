"""Dovecot 2.3's director assignment of users to mail servers, reproduced bit for bit.

An operator leaving a director ring wants every user's first palomar login to land on the
backend the director would have sent it to, where its indexes are warm. So this module
computes exactly what the director computes (src/director/mail-host.c and
src/lib-mail/mail-user-hash.c of Dovecot 2.3):

* user hash: MD5 of `director_username_hash` expanded for the user (default `%Lu`), first
  four bytes big-endian, 0 replaced by 1;
* ring: for every mail server that is up, `vhost_count` points, point i being the first four
  bytes (big-endian) of MD5(ip_text + "-" + i); sorted by point, ties by address;
* lookup: the first point at or after the user hash (Dovecot's binary search, replayed
  step for step so that equal points pick the same one), wrapping to the first point.

Pure: no I/O; tested against vectors captured from a real Dovecot 2.3 director.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DEFAULT_USERNAME_HASH = "%Lu"
"""Dovecot 2.3's default `director_username_hash`."""

DEFAULT_VHOST_COUNT = 100
"""VHOST_MULTIPLIER: the vhost count of a mail server added without one."""

_VARIABLES = {"u": "user", "n": "username", "d": "domain"}
_MODIFIERS = "LURTM"
"""The var_expand modifiers supported here: lower, upper, reverse, trim, md5 (hex)."""


class DirectorHashError(ValueError):
    """A director_username_hash or ring description palomar cannot reproduce; one line for the operator."""


def _md5_u32(data: bytes) -> int:
    return int.from_bytes(hashlib.md5(data).digest()[:4], "big")


def _apply(modifier: str, value: bytes) -> bytes:
    if modifier == "L":
        return value.lower()  # bytes.lower() is ASCII-only, as Dovecot's i_tolower
    if modifier == "U":
        return value.upper()
    if modifier == "R":
        return value[::-1]
    if modifier == "T":
        return value.rstrip(b" \t\r\n\v\f")
    return hashlib.md5(value).hexdigest().encode()  # "M"


def _expand(fmt: str, username: bytes) -> bytes:
    """Dovecot's var_expand of `fmt` with %u, %n, %d (and their long names) for `username`."""
    user, _, domain = username.partition(b"@")
    values = {"user": username, "username": user, "domain": domain}
    out = bytearray()
    i = 0
    while i < len(fmt):
        char = fmt[i]
        i += 1
        if char != "%":
            out += char.encode()
            continue
        if i < len(fmt) and fmt[i] == "%":
            out += b"%"
            i += 1
            continue
        sign = 1
        if i < len(fmt) and fmt[i] == "-":
            sign, i = -1, i + 1
        if i < len(fmt) and fmt[i] == "0":
            raise DirectorHashError(f"director_username_hash {fmt!r}: zero padding is not supported")
        width_start = i
        while i < len(fmt) and fmt[i].isdigit():
            i += 1
        width = int(fmt[width_start:i] or 0)
        offset = 0
        if i < len(fmt) and fmt[i] == ".":
            offset, i = sign * width, i + 1
            width_start = i
            while i < len(fmt) and fmt[i].isdigit():
                i += 1
            width = int(fmt[width_start:i] or 0)
        elif sign < 0:
            raise DirectorHashError(f"director_username_hash {fmt!r}: a negative width is not supported")
        modifiers = ""
        while i < len(fmt) and fmt[i] in _MODIFIERS:
            modifiers += fmt[i]
            i += 1
        if i >= len(fmt):
            raise DirectorHashError(f"director_username_hash {fmt!r} ends inside a variable")
        if fmt[i] == "{":
            end = fmt.find("}", i)
            if end < 0:
                raise DirectorHashError(f"director_username_hash {fmt!r}: unclosed %{{")
            name, i = fmt[i + 1:end], end + 1
        else:
            name, i = _VARIABLES.get(fmt[i], ""), i + 1
        if name not in values:
            raise DirectorHashError(
                f"director_username_hash {fmt!r}: only %u, %n, %d (%{{user}}, %{{username}}, %{{domain}}) "
                f"with the modifiers {', '.join(_MODIFIERS)} are supported"
            )
        value = values[name]
        for modifier in modifiers:
            value = _apply(modifier, value)
        value = value[len(value) + offset:] if offset < 0 else value[offset:]
        out += value[:width] if width else value
    return bytes(out)


def check_username_hash(fmt: str) -> str:
    """`fmt` if palomar can expand it as the director does; DirectorHashError otherwise."""
    _expand(fmt, b"user@example.test")
    return fmt


def user_hash(username: str, fmt: str = DEFAULT_USERNAME_HASH) -> int:
    """Dovecot's mail_user_hash(): the 32-bit hash `doveadm director map` prints for the user."""
    value = _md5_u32(_expand(fmt, username.encode()))
    return value or 1  # Dovecot never returns 0: it means "none" in its hash tables


@dataclass(frozen=True)
class MailHost:
    """One of the director's mail servers, as `doveadm director status` lists it."""

    ip: str
    vhost_count: int = DEFAULT_VHOST_COUNT
    down: bool = False

    def __post_init__(self) -> None:
        try:
            address = ipaddress.ip_address(self.ip)
        except ValueError:
            raise DirectorHashError(f"mail server {self.ip!r} is not an IP address") from None
        if str(address) != self.ip:
            object.__setattr__(self, "ip", str(address))  # the director hashes net_ip2addr()'s text
        if self.vhost_count < 0:
            raise DirectorHashError(f"mail server {self.ip}: vhost count {self.vhost_count} is negative")

    @property
    def sort_key(self) -> tuple[int, bytes]:
        """net_ip_cmp(): family first, then the address bytes."""
        address = ipaddress.ip_address(self.ip)
        return (address.version, address.packed)


@dataclass(frozen=True)
class Vhost:
    point: int
    host: MailHost


def build_ring(hosts: Iterable[MailHost]) -> tuple[Vhost, ...]:
    """The sorted vhost ring of the hosts that are up (mail_tag_vhosts_sort_ring())."""
    vhosts = [
        Vhost(_md5_u32(f"{host.ip}-{i}".encode()), host)
        for host in sorted(hosts, key=lambda h: h.sort_key)
        if not host.down
        for i in range(host.vhost_count)
    ]
    vhosts.sort(key=lambda v: (v.point, v.host.sort_key))
    return tuple(vhosts)


def _insert_pos(ring: Sequence[Vhost], key: int) -> int:
    """Dovecot's bsearch_insert_pos() over the ring points, step for step."""
    idx, left, right = 0, 0, len(ring)
    while left < right:
        idx = (left + right) // 2
        point = ring[idx].point
        if point < key:
            left = idx + 1
        elif point > key:
            right = idx
        else:
            return idx
    return idx + 1 if left > idx else idx


def host_for_hash(ring: Sequence[Vhost], key: int) -> MailHost | None:
    """mail_host_get_by_hash(): the host owning `key`, None when no host is up."""
    if not ring:
        return None
    idx = _insert_pos(ring, key)
    return ring[0 if idx == len(ring) else idx].host


@dataclass(frozen=True)
class DirectorRing:
    """A director's untagged ring and its username hash format: user -> mail server IP."""

    hosts: tuple[MailHost, ...]
    username_hash: str = DEFAULT_USERNAME_HASH
    vhosts: tuple[Vhost, ...] = field(init=False, repr=False, compare=False)
    """The sorted ring, built once: a login only hashes and searches it."""

    def __post_init__(self) -> None:
        check_username_hash(self.username_hash)
        ips = [h.ip for h in self.hosts]
        if len(ips) != len(set(ips)):
            raise DirectorHashError("a mail server is listed twice")
        object.__setattr__(self, "vhosts", build_ring(self.hosts))

    def host_for(self, username: str) -> str | None:
        """The mail server IP the director hashes `username` to (None when no server is up)."""
        host = host_for_hash(self.vhosts, user_hash(username, self.username_hash))
        return None if host is None else host.ip
