"""How long a proxy may use its cached copy of a group row: `user_groups.refresh_after`.

The seed names the column (uint) and nothing more; palomar reads it as seconds. A group whose
placement an administrator is changing by hand, or that is being watched, can ask the proxies to
read it again sooner than their `cache_ttl`, without lowering `cache_ttl` for every group. It
never makes a copy live longer than `cache_ttl`: a stale group only costs a referral, but the
proxies' own setting bounds how long they may route from an old view. Pure.
"""

from __future__ import annotations

from palomar.cluster.model import Group


def group_cache_lifetime(group: Group | None, cache_ttl: int) -> int:
    """Seconds to keep `group` cached: its refresh_after, at most `cache_ttl`, at least 1 (the LocalDB
    counts whole seconds)."""
    if group is None or group.refresh_after is None:
        return cache_ttl
    return max(1, min(group.refresh_after, cache_ttl))
