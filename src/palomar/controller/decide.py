"""The controller's decisions as a pure function of one snapshot of its site.

The loop (`controller.service`) reads a `Snapshot`, calls `decide`, and carries out the
actions whose feature is `on`; actions of a `dryrun` feature are only logged. Keeping this pure
means every feature is tested from tables, and a later simulation can drive it without a GeoDB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from palomar.cluster.features import feature_source
from palomar.cluster.health import Decision, HealthRule, should_set_online
from palomar.cluster.model import Backend, ProxyDestStat, Setting, Site

CONTROLLER_REASON_PREFIX = "controller: "
"""Every status the controller writes carries this reason prefix (see cluster.health)."""


@dataclass(frozen=True)
class Snapshot:
    """What the controller knows about its site at one moment (`now`, Unix seconds)."""

    site: Site
    backends: tuple[Backend, ...]
    proxy_stats: tuple[ProxyDestStat, ...]
    settings: tuple[Setting, ...]
    settings_table_present: bool
    now: float

    def feature_state(self, feature: str) -> str:
        return self.feature_source(feature)[0]

    def feature_source(self, feature: str) -> tuple[str, str]:
        return feature_source(
            self.settings, self.site.id, feature, table_present=self.settings_table_present
        )


@dataclass(frozen=True)
class ControllerRules:
    """The tunables of every feature (from the controller's configuration)."""

    health: HealthRule = field(default_factory=HealthRule)


@dataclass(frozen=True)
class SetBackendStatus:
    """Change a backend's status. `state` is the feature's state: only `on` is carried out."""

    feature: str
    state: str
    backend: Backend
    status: str
    reason: str

    @property
    def execute(self) -> bool:
        return self.state == "on"

    @property
    def kind(self) -> str:
        return f"set_{self.status}"


Action = SetBackendStatus


@dataclass(frozen=True)
class Held:
    """A backend a feature looked at and left alone, and why (for debug logs)."""

    feature: str
    backend_id: UUID
    host: str
    reason: str


def health_decisions(snapshot: Snapshot, rule: HealthRule) -> list[tuple[Backend, Decision]]:
    """The health rule for every offline backend of the site."""
    return [
        (b, should_set_online(b, list(snapshot.proxy_stats), snapshot.now, rule))
        for b in snapshot.backends
        if b.status == "offline"
    ]


def decide(snapshot: Snapshot, rules: ControllerRules) -> list[Action]:
    """Every action the enabled (`on` or `dryrun`) features want now, in a stable order."""
    return plan(snapshot, rules)[0]


def plan(snapshot: Snapshot, rules: ControllerRules) -> tuple[list[Action], list[Held]]:
    """`decide`, plus what each enabled feature held back and why."""
    actions: list[Action] = []
    held: list[Held] = []
    state = snapshot.feature_state("health")
    if state in ("on", "dryrun"):
        for backend, decision in health_decisions(snapshot, rules.health):
            if decision.action == "set_online":
                reason = CONTROLLER_REASON_PREFIX + decision.reason
                actions.append(SetBackendStatus("health", state, backend, "online", reason))
            else:
                held.append(Held("health", backend.id, backend.host, decision.reason))
    return actions, held
