"""Site selection (cluster/site_selection.py): the table of docs/design/routing.md, row by row,
and the ramp properties of site force-move and site recover."""

from __future__ import annotations

from dataclasses import replace
from uuid import UUID

import pytest

from palomar.cluster.hashing import force_move_bucket
from palomar.cluster.model import ForceMove, GroupSite, Site, User
from palomar.cluster.site_selection import (
    GROUP_SITE_FOLLOW,
    NoSite,
    SiteChoice,
    SiteState,
    failover_site,
    select_site,
)
from unit.cluster.site_table import GROUP, SALT, SITE_IDS, Scenario, site_table

ROWS = site_table()
NAMES = {v: k for k, v in SITE_IDS.items()}


def test_the_table_has_every_row() -> None:
    assert len(ROWS) == 30


@pytest.mark.parametrize("row", ROWS, ids=[r.line for r in ROWS])
def test_site_table_row(row: Scenario) -> None:
    decision = select_site(row.user.username, row.user, GROUP, row.group_site, row.state())
    if row.served_in is None:
        assert isinstance(decision, NoSite), decision
        return
    assert isinstance(decision, SiteChoice), decision
    assert (decision.site.name, decision.via) == (row.served_in, row.via)
    assert decision.group_name == GROUP


def test_a_user_without_home_is_homed_where_it_logs_in() -> None:
    sites = tuple(Site(i, n) for n, i in SITE_IDS.items())
    for local in ("DC1", "DC2"):
        decision = select_site("new", None, GROUP, None, SiteState(SITE_IDS[local], sites))
        assert isinstance(decision, SiteChoice)
        assert (decision.site.name, decision.new_home) == (local, SITE_IDS[local])
    known = select_site("old", User("old", GROUP, SITE_IDS["DC2"]), GROUP, None, SiteState(SITE_IDS["DC1"], sites))
    assert isinstance(known, SiteChoice) and known.new_home is None


def test_failover_site_group_name_is_used_away_from_home() -> None:
    sites = (Site(SITE_IDS["DC1"], "DC1"), Site(SITE_IDS["DC2"], "DC2", status="offline"))
    user = User("u", "default-3", SITE_IDS["DC2"], failover_site_group_name="spare-9")
    decision = select_site("u", user, "default-3", None, SiteState(SITE_IDS["DC1"], sites))
    assert isinstance(decision, SiteChoice)
    assert (decision.site.name, decision.group_name, decision.via) == ("DC1", "spare-9", "failover")


def _sites(home: Site) -> SiteState:
    return SiteState(SITE_IDS["DC1"], (Site(SITE_IDS["DC1"], "DC1"), home, Site(SITE_IDS["DC3"], "DC3")))


USERS = [f"user{i}" for i in range(400)]


def _moved(home: Site) -> set[str]:
    moved = set()
    for name in USERS:
        decision = select_site(name, User(name, GROUP, home.id), GROUP, None, _sites(home))
        assert isinstance(decision, SiteChoice)
        if decision.site.id != home.id:
            moved.add(name)
    return moved


def test_force_move_ramp_keeps_moved_users_and_selects_the_share() -> None:
    home = Site(SITE_IDS["DC2"], "DC2")
    previous: set[str] = set()
    for pct in (10, 50, 100):
        moved = _moved(replace(home, force_move=ForceMove(SALT, pct, (str(SITE_IDS["DC3"]),))))
        assert previous <= moved
        assert moved == {u for u in USERS if force_move_bucket(SALT, u) < pct}
        previous = moved
    assert previous == set(USERS)


def _recover_ramp(home: Site, steps: tuple[int, ...]) -> set[str]:
    """Ramp `site recover` of `home` through `steps`: each step keeps away only the users at or above
    its percentage, a subset of the previous step's; the users still away at the end."""
    away_before = set(USERS)
    for pct in steps:
        away = _moved(replace(home, recover_id=SALT, recover_percentage=pct))
        assert away <= away_before
        assert away == {u for u in USERS if force_move_bucket(SALT, u) >= pct}
        away_before = away
    return away_before


def test_recover_ramp_brings_users_home_and_keeps_them_there() -> None:
    home = Site(SITE_IDS["DC2"], "DC2")
    _recover_ramp(home, (0, 10, 50))
    assert _moved(home) == set()


def test_recover_ramp_under_a_full_force_move_brings_users_home_in_steps() -> None:
    """What the controller's site-failover does after a site returns: its force-move stays at 100 %
    while `site recover` ramps, and each step must bring its share home (not all at the clear)."""
    home = Site(SITE_IDS["DC2"], "DC2", force_move=ForceMove(SALT, 100, (str(SITE_IDS["DC3"]),)))
    assert _moved(home) == set(USERS)
    assert _recover_ramp(home, (10, 50, 100)) == set()


def test_rendezvous_failover_is_the_same_from_every_site_and_spreads_groups() -> None:
    sites = tuple(Site(i, n) for n, i in SITE_IDS.items()) + (
        Site(UUID(int=7), "DC4"),)
    home = sites[1]
    picks = {}
    for group in (f"default-{n}" for n in range(1, 41)):
        seen = {failover_site(home, group, None, SiteState(local, sites)).id  # type: ignore[union-attr]
                for local in (SITE_IDS["DC1"], SITE_IDS["DC3"])}
        assert len(seen) == 1
        picks[group] = seen.pop()
    assert len(set(picks.values())) == 3


def test_a_named_failover_site_that_is_not_usable_falls_back_to_rendezvous() -> None:
    sites = (Site(SITE_IDS["DC1"], "DC1"), Site(SITE_IDS["DC2"], "DC2", status="offline"),
             Site(SITE_IDS["DC3"], "DC3", status="standby"))
    row = GroupSite(GROUP, SITE_IDS["DC2"], GROUP_SITE_FOLLOW, SITE_IDS["DC3"])
    assert failover_site(sites[1], GROUP, row, SiteState(SITE_IDS["DC1"], sites)) == sites[0]
