"""The site table of docs/design/routing.md, read into scenarios the tests replay.

One table is the truth for the pure rule (test_site_selection), and for the proxy's router and
`cluster user access` agreeing with each other (tests/unit/cli/test_user_access_agrees.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from uuid import NAMESPACE_DNS, UUID, uuid5

from palomar.cluster.model import ForceMove, GroupSite, Site, User
from palomar.cluster.site_selection import GROUP_SITE_STATUSES, SiteState

ROUTING_MD = Path(__file__).resolve().parents[3] / "docs" / "design" / "routing.md"
SITE_IDS = {name: uuid5(NAMESPACE_DNS, f"{name}.site.test") for name in ("DC1", "DC2", "DC3")}
SALT = UUID("0f0e0d0c-0b0a-0908-0706-050403020100")
GROUP = "default-1"
USERNAME = "user7"


@dataclass(frozen=True)
class Scenario:
    line: str
    user: User
    group_site: GroupSite
    sites: tuple[Site, ...]
    unreachable: frozenset[UUID]
    served_in: str | None
    via: str

    def state(self, local: str = "DC1") -> SiteState:
        return SiteState(SITE_IDS[local], self.sites, self.unreachable)


def _percent(text: str) -> int | None:
    return None if text == "—" else int(text.split("%")[0])


def scenario(cells: list[str], line: str) -> Scenario:
    home, status, reachable, group_state, recover, force_move, others, served_in, via = cells
    sites = {name: Site(SITE_IDS[name], name) for name in SITE_IDS}
    unreachable: set[UUID] = set()
    home_id = None if home == "none" else SITE_IDS[home]
    if home_id is not None:
        site = replace(sites[home], status=status)
        if _percent(recover) is not None:
            site = replace(site, recover_id=SALT, recover_percentage=_percent(recover))
        if _percent(force_move) is not None:
            dest = force_move.split("→")[1].strip() if "→" in force_move else "DC3"
            site = replace(site, force_move=ForceMove(SALT, _percent(force_move) or 0, (str(SITE_IDS[dest]),)))
        sites[home] = site
        if reachable == "no":
            unreachable.add(home_id)
    if others == "DC3 offline":
        sites["DC3"] = replace(sites["DC3"], status="offline")
    elif others == "DC3 unreachable":
        unreachable.add(SITE_IDS["DC3"])
    elif others == "none usable":
        for name in ("DC1", "DC3"):
            if name != home:
                sites[name] = replace(sites[name], status="standby")
    user = User(USERNAME, GROUP, preferred_site_id=home_id)
    group_site = GroupSite(GROUP, home_id or SITE_IDS["DC1"], GROUP_SITE_STATUSES[group_state], SITE_IDS["DC3"])
    return Scenario(line, user, group_site, tuple(sites.values()), frozenset(unreachable),
                    None if served_in == "—" else served_in, via)


def site_table() -> list[Scenario]:
    text = ROUTING_MD.read_text(encoding="utf-8")
    section = text.split("### The site table", 1)[1]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| home") or line.startswith("|---"):
            if rows and not line.startswith("|"):
                break
            continue
        rows.append(scenario([c.strip() for c in line.strip("|").split("|")], line))
    return rows
