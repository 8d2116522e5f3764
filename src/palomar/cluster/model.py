"""Plain data the cluster rules decide over: one class per GeoDB entity, no I/O.

The GeoDB repository converts rows to and from these; the routing, move, health and
controller rules take them as input. Statuses are plain strings with the values the
`doveadm cluster` commands use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

BACKEND_STATUSES = ("online", "offline", "standby")
SITE_STATUSES = ("online", "offline", "standby", "evacuate")
FEATURE_STATES = ("on", "dryrun", "off")
NO_ID = UUID(int=0)
"""Stands for "none" where a key column cannot be null (cluster_settings.site_id/backend_id)."""


@dataclass(frozen=True)
class Tag:
    id: UUID
    name: str


@dataclass(frozen=True)
class ForceMove:
    """Force-move state of a site or backend: users whose bucket < percentage go to `dest`."""

    id: UUID
    percentage: int
    dest: tuple[str, ...]


@dataclass(frozen=True)
class Site:
    id: UUID
    name: str
    status: str = "online"
    load_balancer: str | None = None
    tag: UUID | None = None
    force_move: ForceMove | None = None
    recover_id: UUID | None = None
    recover_percentage: int | None = None


@dataclass(frozen=True)
class Backend:
    id: UUID
    site_id: UUID
    host: str
    status: str = "standby"
    status_reason: str | None = None
    status_changed_us: int | None = None
    """Write time of `status` (microseconds), as `writetime(status)` in the seed."""
    load_factor: int = 100
    user_count_approx: int | None = None
    last_moved_from: str | None = None
    last_moved_to: str | None = None
    force_move: ForceMove | None = None

    @property
    def online(self) -> bool:
        return self.status == "online"


@dataclass(frozen=True)
class Group:
    site_id: UUID
    name: str
    backend_id: UUID | None = None
    alt_backend_id: UUID | None = None
    moving: str | None = None
    """Non-empty while a move to `alt_backend_id` is pending or running."""
    sticky_users: bool = False
    sticky_backend: bool = False
    refresh_after: int | None = None
    backend_changed_us: int | None = None
    """Write time of `backend_id` (microseconds)."""


@dataclass(frozen=True)
class User:
    username: str
    group_name: str | None = None
    preferred_site_id: UUID | None = None
    failover_site_group_name: str | None = None
    moving_group_name: str | None = None
    moving_preferred_site_id: UUID | None = None
    moving_failover_site_group_name: str | None = None
    metacache_last_host: str | None = None

    @property
    def moving(self) -> bool:
        return self.moving_group_name is not None or self.moving_preferred_site_id is not None


@dataclass(frozen=True)
class UserSite:
    """A user_sites row: the backend a user was last routed to in one site."""

    username: str
    site_id: UUID
    backend_id: UUID | None = None
    preferred_site: bool = False


@dataclass(frozen=True)
class GroupSite:
    """A group_sites row: a group's state in one site and the site its users fail over to."""

    group_name: str
    site_id: UUID
    status: int | None = None
    failover_site_id: UUID | None = None
    status_changed_us: int | None = None


@dataclass(frozen=True)
class Reachability:
    src_site_id: UUID
    dest_site_id: UUID
    reachable: bool


@dataclass(frozen=True)
class Stat:
    """One statistic row (backend_stats or proxy_dest_stats): counter or gauge."""

    key: str
    value: float
    type: str = "counter"


@dataclass(frozen=True)
class ProxyDestStat:
    proxy_site_id: UUID
    dest_host: str
    proxy_host: str
    key: str
    value: float
    type: str = "counter"


@dataclass(frozen=True)
class Setting:
    """A cluster_settings row, e.g. a controller feature state for a site."""

    section: str
    name: str
    value: str
    site_id: UUID = NO_ID
    backend_id: UUID = NO_ID


@dataclass(frozen=True)
class SiteView:
    """What the routing rules need to know about one site: the site and its backends."""

    site: Site
    backends: tuple[Backend, ...] = field(default_factory=tuple)

    def backend(self, backend_id: UUID | None) -> Backend | None:
        return next((b for b in self.backends if b.id == backend_id), None)

    def backend_by_host(self, host: str) -> Backend | None:
        return next((b for b in self.backends if b.host == host), None)
