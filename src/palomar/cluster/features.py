"""Controller feature states (`on`, `dryrun`, `off`) as stored in `cluster_settings`, resolved purely.

A feature's state lives in the row (section `controller`, site_id, backend_id = NO_ID,
setting_name = feature). The site's own row wins over the all-sites row (site_id = NO_ID);
without either the feature is `off`. Palomar's compatibility rule: when `cluster_settings`
is absent entirely every feature is on. A Cassandra table cannot be "absent" once the schema
is created, so palomar reads "the table has no rows at all" as "absent" (a fresh cluster runs
with every feature on until an operator writes the first state).
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from palomar.cluster.model import FEATURE_STATES, NO_ID, Setting

FEATURE_SECTION = "controller"
"""The cluster_settings section holding the feature states."""

FEATURES: tuple[str, ...] = ("health", "evacuate", "failback", "balance", "group-size", "site-failover")
"""Every controller feature, in display order (the order the controller plans them in each pass:
a group an earlier feature moves is not planned again by a later one). See docs/design/controller.md."""

DEFAULT_STATE = "off"
ABSENT_TABLE_STATE = "on"


def feature_source(
    settings: Iterable[Setting], site_id: UUID, feature: str, *, table_present: bool
) -> tuple[str, str]:
    """The effective state of `feature` in `site_id` and where it comes from.

    The source is `site` (the site's row), `all-sites` (the NO_ID row), `default`, or
    `no-settings` (the table has no rows, so everything is on). A row holding a value that
    is not a state is ignored rather than trusted: an unknown value must not switch automation on.
    """
    if not table_present:
        return ABSENT_TABLE_STATE, "no-settings"
    by_site: dict[UUID, str] = {}
    for s in settings:
        if s.section == FEATURE_SECTION and s.name == feature and s.backend_id == NO_ID:
            value = s.value.strip().lower()
            if value in FEATURE_STATES:
                by_site[s.site_id] = value
    if site_id in by_site:
        return by_site[site_id], "site"
    if NO_ID in by_site:
        return by_site[NO_ID], "all-sites"
    return DEFAULT_STATE, "default"


def feature_state(settings: Iterable[Setting], site_id: UUID, feature: str, *, table_present: bool) -> str:
    """`on`, `dryrun` or `off` for `feature` in `site_id` (see `feature_source`)."""
    return feature_source(settings, site_id, feature, table_present=table_present)[0]
