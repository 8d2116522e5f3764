"""The controller's metrics: backends per status, feature states, decisions, ticks."""

from __future__ import annotations

from palomar.cluster.features import FEATURES
from palomar.cluster.model import BACKEND_STATUSES, FEATURE_STATES
from palomar.controller.decide import Action, Snapshot
from palomar.metrics.registry import Registry


class ControllerMetrics:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.backends = registry.gauge(
            "controller_backends", "Backends of the controller's site per status", ("site", "status")
        )
        self.feature_state = registry.gauge(
            "controller_feature_state", "1 for the state each feature is in", ("site", "feature", "state")
        )
        self.decisions = registry.counter(
            "controller_decisions",
            "Decisions carried out (on) or only logged (dryrun, once per decision)",
            ("feature", "state", "action"),
        )
        self.ticks = registry.counter("controller_ticks", "Controller evaluations by outcome", ("result",))

    def observe(self, snapshot: Snapshot) -> None:
        site = snapshot.site.name
        for status in BACKEND_STATUSES:
            count = sum(1 for b in snapshot.backends if b.status == status)
            self.backends.set(count, site=site, status=status)
        for feature in FEATURES:
            current = snapshot.feature_state(feature)
            for state in FEATURE_STATES:
                self.feature_state.set(1 if state == current else 0, site=site, feature=feature, state=state)

    def decided(self, action: Action) -> None:
        self.decisions.inc(feature=action.feature, state=action.state, action=action.kind)
