"""The way in from a Dovecot 2.3 director ring: where a new user goes, and what to import.

Two sources tell palomar which backend a director gave a user:

* the director's hash ring (`DirectorTransition`, from `cluster_director_transition_config`):
  covers every user, including those the director has not seen lately;
* `doveadm director map` of a running director (`parse_director_map`): the director's current
  user directory, which differs from the ring for users assigned before the ring last changed.

Either way a new user joins the group `director-<backend>-<N>` (N as in `default-N`), created
on that backend; after that the group is an ordinary group that moves and fails over like any
other. Pure: the file loader lives in `config/director_transition.py`, the writes in the CLI.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from palomar.cluster.director_hash import DirectorHashError, DirectorRing, MailHost
from palomar.cluster.hashing import group_number
from palomar.cluster.model import Backend, SiteView

GROUP_PREFIX = "director-"
UNKNOWN_USER = "<unknown>"
"""What `doveadm director map` prints for a hash no listed user has."""


@dataclass(frozen=True)
class DirectorTransition:
    """The director's ring and the palomar backend name of each of its mail servers (by IP)."""

    ring: DirectorRing
    backends: Mapping[str, str]

    def backend_for(self, username: str) -> str | None:
        """The palomar backend name the director assigns `username` to (None: no server up)."""
        ip = self.ring.host_for(username)
        return None if ip is None else self.backends[ip]


def director_group_name(backend_name: str, username: str, group_count: int) -> str:
    """The group a user placed by the director joins: one family of groups per backend."""
    return f"{GROUP_PREFIX}{backend_name}-{group_number(username, group_count)}"


def takes_new_groups(backend: Backend, site_view: SiteView) -> bool:
    """Online and not draining (load factor 0), unless every online backend drains."""
    if not backend.online:
        return False
    return backend.load_factor > 0 or not any(b.online and b.load_factor > 0 for b in site_view.backends)


def director_placement(
    username: str, site_view: SiteView, transition: DirectorTransition | None
) -> Backend | None:
    """The backend the director had for a user without a group, if it can take a new group here.

    None (the user then joins its `default-N` group) when there is no transition, the director's
    backend is not a backend of this site, or it is offline, standby or draining.
    """
    if transition is None:
        return None
    name = transition.backend_for(username)
    backend = site_view.backend_by_host(name) if name else None
    return backend if backend is not None and takes_new_groups(backend, site_view) else None


# --- doveadm director map ---------------------------------------------------------------------------


class DirectorOutputError(ValueError):
    """`doveadm director map` or `status` output that cannot be read; the message names the line."""


@dataclass(frozen=True)
class MapRow:
    """One row of `doveadm director map`: user (or `<unknown>`), user hash, mail server IP."""

    user: str
    user_hash: int
    ip: str
    line: int


_FLOW = re.compile(r"^user=(.*) hash=(\S*) mail server ip=(\S*) expire time=.*$")
_HEADER = re.compile(r"^user\s+hash\s+mail server ip\s+expire time\s*$")


def _row(user: str, hash_text: str, ip_text: str, number: int) -> MapRow:
    try:
        value = int(hash_text, 10)
        if not 0 <= value < 2**32:
            raise ValueError
    except ValueError:
        raise DirectorOutputError(f"line {number}: {hash_text!r} is not a user hash") from None
    try:
        ip = str(ipaddress.ip_address(ip_text))
    except ValueError:
        raise DirectorOutputError(f"line {number}: {ip_text!r} is not a mail server IP address") from None
    if not user:
        raise DirectorOutputError(f"line {number}: empty user name")
    return MapRow(user, value, ip, number)


def parse_director_map(text: str) -> list[MapRow]:
    """Rows of `doveadm director map` in the table (default), tab (`-f tab`) or flow (`-f flow`) format.

    The table format pads with spaces, so a user name with a space in it needs `-f tab`.
    """
    rows = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or _HEADER.match(line.replace("\t", " ")):
            continue
        flow = _FLOW.match(line)
        if flow:
            rows.append(_row(flow[1], flow[2], flow[3], number))
            continue
        if "\t" in line:
            fields = line.split("\t")
            if len(fields) != 4:
                raise DirectorOutputError(f"line {number}: expected 4 tab-separated fields, found {len(fields)}")
            rows.append(_row(fields[0], fields[1], fields[2], number))
            continue
        words = line.split()
        if len(words) < 5:
            raise DirectorOutputError(
                f"line {number}: not a `doveadm director map` row (user, hash, mail server ip, expire time)"
            )
        rows.append(_row(" ".join(words[:-4]), words[-4], words[-3], number))
    return rows


# --- doveadm director status ---------------------------------------------------------------------

_STATUS_HEADER = re.compile(r"^mail server ip\s+tag\s+vhosts\s+state\b")


def parse_director_status(text: str) -> list[MailHost]:
    """The mail servers of `doveadm director status` (table or `-f tab`): IP, vhost count, up/down.

    A tagged server is refused: palomar reproduces the untagged ring only.
    """
    hosts = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or _STATUS_HEADER.match(line.replace("\t", " ")):
            continue
        if "\t" in line:
            fields = line.split("\t")
        else:  # the table pads an empty tag column with spaces: a number second means no tag
            words = line.split()
            fields = words if len(words) > 1 and not words[1].isdigit() else [words[0], "", *words[1:]]
        if len(fields) < 4:
            raise DirectorOutputError(f"line {number}: not a `doveadm director status` row "
                                   "(mail server ip, tag, vhosts, state, ...)")
        ip, tag, vhosts, state = fields[0], fields[1], fields[2], fields[3]
        if tag:
            raise DirectorOutputError(f"line {number}: mail server {ip} has tag {tag!r}: only the untagged ring "
                                   "is supported")
        if not vhosts.isdigit() or state not in ("up", "down"):
            raise DirectorOutputError(f"line {number}: expected a vhost count and up/down, found {vhosts!r} "
                                   f"{state!r}")
        try:
            hosts.append(MailHost(ip, int(vhosts), state == "down"))
        except DirectorHashError as exc:
            raise DirectorOutputError(f"line {number}: {exc}") from None
    return hosts


def render_transition(hosts: Iterable[MailHost], backends: Mapping[str, str], username_hash: str) -> str:
    """A transition file (the format of config/director_transition.py) for these servers."""
    lines = [f"director_username_hash = {username_hash}", ""]
    for host in hosts:
        lines += [f"mail_server {host.ip} {{", f"  backend = {backends.get(host.ip, host.ip)}",
                  f"  vhost_count = {host.vhost_count}", f"  state = {'down' if host.down else 'up'}", "}"]
    return "\n".join(lines) + "\n"


# --- import plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Put `username` in `group_name`, a group on `backend`."""

    username: str
    group_name: str
    backend: Backend


@dataclass(frozen=True)
class ImportPlan:
    placements: tuple[Placement, ...]
    already_grouped: tuple[str, ...]
    """Users that already have a group: their backend is decided, the import leaves them."""
    unknown_users: int
    """`<unknown>` rows: hashes of users the director's userdb listing did not name."""
    problems: tuple[str, ...]
    """Rows that cannot be placed, one line each; the import writes nothing while there are any."""


def plan_import(
    rows: Iterable[MapRow],
    *,
    backends_by_ip: Mapping[str, str],
    site_view: SiteView,
    grouped_users: Iterable[str],
    group_count: int,
    user_hash: Callable[[str], int] | None = None,
) -> ImportPlan:
    """What `palomar cluster director import` writes for the director's map rows.

    `backends_by_ip` names the palomar backend of each director mail server; `grouped_users`
    are the users that already have a group in the GeoDB; `user_hash` (a function of the user
    name) checks each row's hash, so a wrong director_username_hash is caught before any write.
    """
    grouped = set(grouped_users)
    placements: dict[str, Placement] = {}
    already: list[str] = []
    problems: list[str] = []
    unknown = 0
    for row in rows:
        if row.user == UNKNOWN_USER:
            unknown += 1
            continue
        if user_hash is not None and user_hash(row.user) != row.user_hash:
            problems.append(f"line {row.line}: user {row.user} hashes to {user_hash(row.user)}, the director "
                            f"printed {row.user_hash}: director_username_hash differs from the director's")
            continue
        name = backends_by_ip.get(row.ip)
        if name is None:
            problems.append(f"line {row.line}: mail server {row.ip} has no palomar backend in the transition "
                            "config")
            continue
        backend = site_view.backend_by_host(name)
        if backend is None:
            problems.append(f"line {row.line}: backend {name} (mail server {row.ip}) is not a backend of site "
                            f"{site_view.site.name}")
            continue
        if row.user in grouped:
            already.append(row.user)
            continue
        earlier = placements.get(row.user)
        if earlier is not None and earlier.backend.id != backend.id:
            problems.append(f"line {row.line}: user {row.user} is listed on two mail servers")
            continue
        placements[row.user] = Placement(row.user, director_group_name(name, row.user, group_count), backend)
    return ImportPlan(tuple(placements.values()), tuple(sorted(set(already))), unknown, tuple(problems))
