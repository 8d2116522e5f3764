"""The controller's decisions as a pure function of one snapshot of its site.

The loop (`controller.service`) reads a `Snapshot`, adds its memory (`Memory`: load history,
recent moves, timers), calls `plan`, and carries out the actions whose feature is `on`; actions
of a `dryrun` feature are only logged. Keeping this pure means every feature is tested from
tables, and `palomar cluster simulate` drives the same planners without a GeoDB.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from palomar.cluster.balance import BalanceSettings, plan_balance
from palomar.cluster.evacuate import EvacuateSettings, plan_evacuate
from palomar.cluster.failback import FailbackSettings, plan_failback
from palomar.cluster.features import feature_source
from palomar.cluster.group_size import GroupSizeSettings, UserMove, next_pass
from palomar.cluster.health import Decision, HealthRule, probe_views, should_set_online
from palomar.cluster.model import Backend, Group, ProxyDestStat, Reachability, Setting, Site, Stat
from palomar.cluster.planning import GroupMove, LoadSample, MoveRecord, Plan, PlanInput, with_moves_requested
from palomar.cluster.site_failover import SiteAction, SiteFailoverSettings, SiteLink, plan_site_failover

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
    groups: tuple[Group, ...] = ()
    backend_stats: Mapping[UUID, Sequence[Stat]] = field(default_factory=dict)
    sites: tuple[Site, ...] = ()
    """Every site (site-failover acts for other sites)."""
    reachability: tuple[Reachability, ...] = ()
    """This site's reachability rows towards the others."""

    def feature_state(self, feature: str) -> str:
        return self.feature_source(feature)[0]

    def feature_source(self, feature: str) -> tuple[str, str]:
        return feature_source(
            self.settings, self.site.id, feature, table_present=self.settings_table_present
        )


@dataclass(frozen=True)
class Memory:
    """What the controller remembers across ticks (controller.history), as plain data."""

    samples: Mapping[UUID, Sequence[LoadSample]] = field(default_factory=dict)
    seen: Mapping[UUID, int] = field(default_factory=dict)
    moves: tuple[MoveRecord, ...] = ()
    site_links: Mapping[UUID, SiteLink] = field(default_factory=dict)
    site_steps: Mapping[UUID, float] = field(default_factory=dict)
    regroup_plan: tuple[UserMove, ...] = ()
    regroup_done: int = 0
    regroup_last_pass: float | None = None


@dataclass(frozen=True)
class ControllerRules:
    """The tunables of every feature (from the controller's configuration)."""

    health: HealthRule = field(default_factory=HealthRule)
    balance: BalanceSettings = field(default_factory=BalanceSettings)
    failback: FailbackSettings = field(default_factory=FailbackSettings)
    evacuate: EvacuateSettings = field(default_factory=EvacuateSettings)
    group_size: GroupSizeSettings = field(default_factory=GroupSizeSettings)
    site_failover: SiteFailoverSettings = field(default_factory=SiteFailoverSettings)


@dataclass(frozen=True)
class FeatureAction:
    """What every action carries: its feature and that feature's state; only `on` is carried out."""

    feature: str
    state: str

    @property
    def execute(self) -> bool:
        return self.state == "on"


@dataclass(frozen=True)
class SetBackendStatus(FeatureAction):
    """Change a backend's status. `state` is the feature's state: only `on` is carried out."""

    backend: Backend
    status: str
    reason: str

    @property
    def kind(self) -> str:
        return f"set_{self.status}"

    @property
    def key(self) -> tuple:
        return (self.feature, str(self.backend.id), self.backend.status_changed_us, self.kind)


@dataclass(frozen=True)
class MoveGroup(FeatureAction):
    """Move a group (balance, failback, evacuate) through the group-move machinery."""

    move: GroupMove
    group: Group

    @property
    def kind(self) -> str:
        return "move_group"

    @property
    def key(self) -> tuple:
        return (self.feature, self.move.group, str(self.move.dest), self.kind)


@dataclass(frozen=True)
class RegroupUser(FeatureAction):
    """Re-group a user (group-size) through the user-move machinery."""

    move: UserMove
    index: int
    """Position in the day's plan: the pass counter advances past it once carried out."""

    @property
    def kind(self) -> str:
        return "move_user"

    @property
    def key(self) -> tuple:
        return (self.feature, self.move.username, self.move.to_group, self.kind)


@dataclass(frozen=True)
class RampSite(FeatureAction):
    """Start or change a site's force-move, set its recover percentage, or clear both (site-failover)."""

    action: SiteAction

    @property
    def kind(self) -> str:
        return f"site_{self.action.kind}"

    @property
    def key(self) -> tuple:
        return (self.feature, str(self.action.site_id), self.action.percentage, self.kind)


Action = SetBackendStatus | MoveGroup | RegroupUser | RampSite


@dataclass(frozen=True)
class Held:
    """Something a feature looked at and left alone, and why (for debug logs)."""

    feature: str
    backend_id: UUID | None
    host: str
    reason: str


def health_decisions(snapshot: Snapshot, rule: HealthRule) -> list[tuple[Backend, Decision]]:
    """The health rule for every offline backend of the site."""
    return [
        (b, should_set_online(b, list(snapshot.proxy_stats), snapshot.now, rule))
        for b in snapshot.backends
        if b.status == "offline"
    ]


def unhealthy_backends(snapshot: Snapshot) -> frozenset[UUID]:
    """Backends some proxy's newest probe of failed: they are never move targets."""
    bad = set()
    for b in snapshot.backends:
        for view in probe_views(snapshot.proxy_stats, b.host):
            if view.last_failure is not None and view.last_failure >= (view.last_success or 0):
                bad.add(b.id)
    return frozenset(bad)


def plan_input(snapshot: Snapshot, memory: Memory) -> PlanInput:
    return PlanInput(snapshot.site, snapshot.backends, snapshot.groups, snapshot.now, samples=memory.samples,
                     seen=memory.seen, moves=memory.moves, unhealthy=unhealthy_backends(snapshot))


def decide(snapshot: Snapshot, rules: ControllerRules, memory: Memory | None = None) -> list[Action]:
    """Every action the enabled (`on` or `dryrun`) features want now, in a stable order."""
    return plan(snapshot, rules, memory)[0]


GROUP_PLANNERS = (
    ("evacuate", lambda inp, rules: plan_evacuate(inp, rules.evacuate)),
    ("failback", lambda inp, rules: plan_failback(inp, rules.failback)),
    ("balance", lambda inp, rules: plan_balance(inp, rules.balance)),
)
"""Group-moving features in planning order: evacuation first (users waiting on a dead backend),
then failback (a returning backend), then load balance."""


def plan(snapshot: Snapshot, rules: ControllerRules, memory: Memory | None = None
         ) -> tuple[list[Action], list[Held]]:
    """`decide`, plus what each enabled feature held back and why."""
    memory = memory or Memory()
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
    inp = plan_input(snapshot, memory)
    for feature, planner in GROUP_PLANNERS:
        state = snapshot.feature_state(feature)
        if state not in ("on", "dryrun"):
            continue
        result: Plan = planner(inp, rules)
        held.extend(Held(feature, None, "-", reason) for reason in result.held)
        if not result.moves:
            continue
        by_name = {g.name: g for m in result.moves for g in inp.by_backend.get(m.source, ()) if g.name == m.group}
        actions.extend(MoveGroup(feature, state, m, by_name[m.group]) for m in result.moves)
        if state == "on":
            inp = with_moves_requested(inp, result.moves)
    state = snapshot.feature_state("group-size")
    if state in ("on", "dryrun") and memory.regroup_plan:
        last = memory.regroup_last_pass
        if last is None or snapshot.now - last >= rules.group_size.pass_interval:
            batch = next_pass(memory.regroup_plan, memory.regroup_done, rules.group_size)
            actions.extend(RegroupUser("group-size", state, m, memory.regroup_done + i) for i, m in enumerate(batch))
    state = snapshot.feature_state("site-failover")
    if state in ("on", "dryrun") and snapshot.sites:
        for action in plan_site_failover(snapshot.site, snapshot.sites, memory.site_links, memory.site_steps,
                                         snapshot.now, rules.site_failover):
            actions.append(RampSite("site-failover", state, action))
    return actions, held
