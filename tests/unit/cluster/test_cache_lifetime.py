"""How long a proxy keeps its cached copy of a group row (`user_groups.refresh_after`)."""

from __future__ import annotations

import uuid

import pytest

from palomar.cluster.cache_lifetime import group_cache_lifetime
from palomar.cluster.model import Group

SITE = uuid.uuid4()


@pytest.mark.parametrize(("refresh_after", "cache_ttl", "lifetime"), [
    (None, 3, 3),     # no refresh_after: the proxy's cache_ttl
    (1, 3, 1),        # sooner than cache_ttl
    (3, 3, 3),
    (600, 3, 3),      # never later than cache_ttl: it asks for fresher reads, not staler ones
    (0, 3, 1),        # written by another tool: the LocalDB counts whole seconds, 1 is the least
])
def test_group_cache_lifetime(refresh_after: int | None, cache_ttl: int, lifetime: int) -> None:
    group = Group(site_id=SITE, name="g", refresh_after=refresh_after)
    assert group_cache_lifetime(group, cache_ttl) == lifetime


def test_a_missing_group_is_cached_for_cache_ttl() -> None:
    assert group_cache_lifetime(None, 3) == 3
