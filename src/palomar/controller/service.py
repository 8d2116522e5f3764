"""`palomar controller`: the per-site automation loop. Thin: read a snapshot, `decide`, act, log.

One controller runs per site (`cluster_local_site`). Every `controller_interval` it reads its
site from the GeoDB and runs the enabled features. A GeoDB error never stops it: the tick is
logged as failed, the connection is dropped and reopened on the next tick. What it remembers
between ticks (the load history, its recent moves for the rate limits, the site-failover timers,
the day's group-size plan) is written through to `controller_history_path`, so it can be
restarted at any time; only which dryrun decisions were already logged is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import astuple
from uuid import UUID

from palomar.cluster.balance import BalanceSettings
from palomar.cluster.evacuate import EvacuateSettings
from palomar.cluster.failback import FailbackSettings
from palomar.cluster.group_size import GroupSizeSettings, UserMove, plan_group_sizes
from palomar.cluster.health import HealthRule
from palomar.cluster.model import ForceMove, Group, User
from palomar.cluster.moves import group_move_request
from palomar.cluster.planning import MoveRecord
from palomar.cluster.site_failover import SiteFailoverSettings, SiteLink
from palomar.config import Config
from palomar.controller.decide import (
    Action,
    ControllerRules,
    Memory,
    MoveGroup,
    RampSite,
    RegroupUser,
    SetBackendStatus,
    Snapshot,
    plan,
)
from palomar.controller.events import event_line
from palomar.controller.history import DecisionRecord, History
from palomar.controller.http import serve_http
from palomar.controller.metrics import ControllerMetrics
from palomar.controller.snapshot import read_snapshot
from palomar.geodb.repository import GeoDB
from palomar.metrics.http import serve_stats
from palomar.metrics.registry import Registry
from palomar.service_runtime import open_geodb, stop_signal

log = logging.getLogger("palomar.controller")


def rules_from_config(cfg: Config) -> ControllerRules:
    return ControllerRules(
        health=HealthRule(
            min_consecutive=int(cfg["controller_health_min_probe_successes"]),
            quiet_secs=float(cfg["controller_health_quiet_time"]),
            min_proxies=int(cfg["controller_health_min_proxies"]),
        ),
        balance=BalanceSettings(
            resources=tuple(cfg["controller_balance_resources"]),
            window=int(cfg["controller_balance_window"]),
            min_samples=int(cfg["controller_balance_min_samples"]),
            score_delta=float(cfg["controller_balance_score_delta"]),
            min_spread_pct=int(cfg["controller_balance_min_spread"]),
            groups_per_hour=int(cfg["controller_balance_groups_per_hour"]),
            min_residence=float(cfg["controller_balance_min_residence"]),
        ),
        failback=FailbackSettings(
            window=float(cfg["controller_failback_window"]),
            tolerance=int(cfg["controller_failback_tolerance"]),
            groups_per_hour=int(cfg["controller_failback_groups_per_hour"]),
            min_residence=float(cfg["controller_failback_min_residence"]),
        ),
        evacuate=EvacuateSettings(
            after=float(cfg["controller_evacuate_after"]),
            groups_per_hour=int(cfg["controller_evacuate_groups_per_hour"]),
        ),
        group_size=GroupSizeSettings(
            slack_pct=int(cfg["controller_group_size_slack"]),
            max_planned=int(cfg["controller_group_size_max_planned"]),
            per_pass=int(cfg["controller_group_size_moves_per_pass"]),
            pass_interval=float(cfg["controller_group_size_pass_interval"]),
        ),
        site_failover=SiteFailoverSettings(
            after=float(cfg["controller_site_failover_after"]),
            recover_after=float(cfg["controller_site_recover_after"]),
            step=int(cfg["controller_site_ramp_step"]),
            interval=float(cfg["controller_site_ramp_interval"]),
        ),
    )


SITE_LINK = "site-link:"
SITE_STEP = "site-step:"
REGROUP_DAY = "group-size-day"
REGROUP_PLAN = "group-size-plan"
REGROUP_DONE = "group-size-done"
REGROUP_PASS = "group-size-last-pass"
REGROUP_PAGE_USERS = 2000
"""Users read per GeoDB page by the daily group-size plan: a page is decoded on the event loop
between other work (a few milliseconds), never the whole user table at once."""


class Controller:
    """One site's controller; `tick()` is one evaluation and never raises for GeoDB trouble."""

    def __init__(
        self,
        open_db: Callable[[], Awaitable[GeoDB]],
        site_name: str,
        rules: ControllerRules,
        metrics: ControllerMetrics,
        *,
        clock: Callable[[], float] = time.time,
        history: History | None = None,
    ) -> None:
        self._open_db = open_db
        self.site_name = site_name
        self.rules = rules
        self.metrics = metrics
        self.clock = clock
        self.history = history if history is not None else History(None, 120)
        """What the planners remember; the web UI and the API show the same samples and decisions."""
        self.db: GeoDB | None = None
        self.regroup_page_size = REGROUP_PAGE_USERS
        self._regroup_plan: tuple[str | None, tuple[UserMove, ...]] = (None, ())
        self._planning: tuple[str, asyncio.Task[tuple[tuple[UserMove, ...], str]]] | None = None
        """The day and the task of a group-size scan under way."""
        self._logged_dryruns: set[tuple] = set()
        self._last_problem: str | None = None

    async def close(self) -> None:
        self._stop_planning()  # its reads use the connection closed here
        db, self.db = self.db, None
        if db is not None:
            with contextlib.suppress(Exception):
                await db.close()

    def _problem(self, message: str) -> None:
        """Log a problem once while it persists, not on every tick."""
        if message != self._last_problem:
            log.warning("%s", message)
            self._last_problem = message

    async def tick(self) -> bool:
        """Evaluate once. True when the site was read and every action was handled."""
        started = time.monotonic()
        try:
            if self.db is None:
                self.db = await self._open_db()
            snapshot = await read_snapshot(self.db, self.site_name, self.clock())
            if snapshot is None:
                self._problem(event_line("controller_site_missing", site=self.site_name))
                self.metrics.ticks.inc(result="no-site")
                return False
            self.metrics.observe(snapshot)
            memory = await self._remember(snapshot)
            actions, held = plan(snapshot, self.rules, memory)
            for item in held:
                log.debug("%s", event_line("controller_hold", feature=item.feature, backend=item.host,
                                           reason=item.reason))
            for action in actions:
                await self._handle(action, snapshot)
        except Exception as exc:  # any GeoDB/engine failure: log, reconnect next tick, keep running
            self._problem(event_line("controller_geodb_error", site=self.site_name,
                                     error=f"{type(exc).__name__}: {exc}"))
            self.metrics.ticks.inc(result="error")
            await self.close()
            return False
        if self._last_problem is not None:
            log.info("%s", event_line("controller_recovered", site=self.site_name))
            self._last_problem = None
        self.metrics.ticks.inc(result="ok")
        log.debug("%s", event_line("controller_tick", site=self.site_name, backends=len(snapshot.backends),
                                   actions=len(actions), ms=round((time.monotonic() - started) * 1000)))
        return True

    async def _remember(self, snapshot: Snapshot) -> Memory:
        """Feed the history with this snapshot and return what the planners need of it."""
        history, now = self.history, snapshot.now
        history.observe(snapshot.backend_stats, {b.id: b.user_count_approx for b in snapshot.backends})
        history.keep_backends(snapshot.backends)
        links: dict[UUID, SiteLink] = {}
        for row in snapshot.reachability:
            if row.dest_site_id == snapshot.site.id:
                continue
            name = f"{SITE_LINK}{row.dest_site_id}"
            stored = history.timers.get(name, "")
            flag, _, since = stored.partition(":")
            if flag != str(int(row.reachable)):
                since = repr(now)
                history.set_timer(name, f"{int(row.reachable)}:{since}")
            links[row.dest_site_id] = SiteLink(row.reachable, float(since))
        steps = {UUID(k[len(SITE_STEP):]): float(v) for k, v in history.timers.items() if k.startswith(SITE_STEP)}
        await self._plan_regrouping(snapshot)
        plan_text = history.timers.get(REGROUP_PLAN)
        if plan_text != self._regroup_plan[0]:  # decoded once per plan (up to 100,000 moves), off the loop
            self._regroup_plan = (plan_text, await asyncio.to_thread(decode_regroup_plan, plan_text))
        regroup = self._regroup_plan[1]
        last_pass = history.timers.get(REGROUP_PASS)
        return Memory(samples=history.samples, seen=history.seen, moves=tuple(history.moves), site_links=links,
                      site_steps=steps, regroup_plan=regroup, regroup_done=int(history.timers.get(REGROUP_DONE, 0)),
                      regroup_last_pass=None if last_pass is None else float(last_pass))

    async def _plan_regrouping(self, snapshot: Snapshot) -> None:
        """Group-size: make the day's plan once each UTC day (a scan of the users, once a day, as the
        vendor's midnight plan); the passes then work through it.

        The scan reads every user (seconds at a million users), so it runs beside the ticks, not in
        one: health, evacuation and the other features keep their interval meanwhile, and the tick
        after the scan ends stores the plan."""
        if snapshot.feature_state("group-size") not in ("on", "dryrun"):
            return
        day = time.strftime("%Y-%m-%d", time.gmtime(snapshot.now))
        if self.history.timers.get(REGROUP_DAY) == day:
            return
        if self._planning is None or self._planning[0] != day:
            assert self.db is not None
            self._stop_planning()
            self._planning = (day, asyncio.create_task(self._make_regroup_plan(self.db, snapshot)))
            return
        task = self._planning[1]
        if not task.done():
            return
        self._planning = None
        moves, text = task.result()  # a failed scan raises here: the tick fails and the next one starts again
        self.history.set_timer(REGROUP_PLAN, text)
        self._regroup_plan = (text, moves)  # what decoding `text` would give
        self.history.set_timer(REGROUP_DONE, "0")
        self.history.set_timer(REGROUP_PASS, None)
        self.history.set_timer(REGROUP_DAY, day)
        log.info("%s", event_line("controller_group_size_plan", site=snapshot.site.name, day=day, users=len(moves)))

    async def _make_regroup_plan(self, db: GeoDB, snapshot: Snapshot) -> tuple[tuple[UserMove, ...], str]:
        names = {g.name for g in snapshot.groups}
        members: dict[str, list[str]] = {}
        async for users in db.user_pages(self.regroup_page_size):
            add_group_members(members, users, names, snapshot.site.id)
        # Planning and encoding up to 100,000 moves is a second of CPU: off the loop.
        return await asyncio.to_thread(encode_regroup_plan, snapshot.groups, members, self.rules.group_size)

    async def regroup_plan_made(self) -> bool:
        """Wait until a group-size scan under way has ended (tests; the next tick stores its plan).
        False if none was under way."""
        if self._planning is None:
            return False
        await asyncio.wait([self._planning[1]])
        return True

    def _stop_planning(self) -> None:
        if self._planning is not None:
            self._planning[1].cancel()
            self._planning = None

    def _record(self, action: Action, snapshot: Snapshot, *, executed: bool) -> None:
        """The decision for the web UI and the API."""
        fields = _fields(action, snapshot)
        subject = fields.get("backend") or fields.get("to") or fields.get("target_site") or "-"
        self.history.decided(DecisionRecord(self.clock(), action.feature, action.state, str(subject),
                                           action.kind, str(fields.get("reason", "")), executed))

    async def _handle(self, action: Action, snapshot: Snapshot) -> None:
        if not action.execute:
            if action.key not in self._logged_dryruns:
                self._logged_dryruns.add(action.key)
                self.metrics.decided(action)
                self._record(action, snapshot, executed=False)
                log.info("%s", event_line("controller_dryrun", feature=action.feature, site=snapshot.site.name,
                                          **describe(action, snapshot, "would")))
            return
        assert self.db is not None
        if isinstance(action, SetBackendStatus):
            await self._set_status(action, snapshot)
        elif isinstance(action, MoveGroup):
            await self._move_group(action, snapshot)
        elif isinstance(action, RegroupUser):
            await self._regroup(action, snapshot)
        else:
            await self._ramp_site(action, snapshot)

    async def _set_status(self, action: SetBackendStatus, snapshot: Snapshot) -> None:
        assert self.db is not None
        site_name = snapshot.site.name
        backend = action.backend
        # The snapshot may be seconds old: act only if nobody (an administrator above all)
        # changed the status since, so the controller never overrides a newer decision.
        fresh = await self.db.backend_get(backend.site_id, backend.id)
        if fresh is None or (fresh.status, fresh.status_reason, fresh.status_changed_us) != (
            backend.status, backend.status_reason, backend.status_changed_us
        ):
            log.info("%s", event_line("controller_skipped", feature=action.feature, backend=backend.host,
                                      reason="status changed since the snapshot"))
            return
        await self.db.backend_set_status(backend.site_id, backend.id, action.status, action.reason)
        self.metrics.decided(action)
        self._record(action, snapshot, executed=True)
        log.info("%s", event_line("cluster_backend_status_changed", backend=backend.host,
                                  backend_id=backend.id, site=site_name, status=action.status,
                                  previous=backend.status, reason=action.reason, feature=action.feature))

    async def _move_group(self, action: MoveGroup, snapshot: Snapshot) -> None:
        """Request the move as `cluster group move` does, if the group is as the snapshot saw it."""
        assert self.db is not None
        move = action.move
        fresh = await self.db.group_get(snapshot.site.id, move.group)
        seen = action.group
        if fresh is None or (fresh.backend_id, fresh.alt_backend_id, fresh.moving) != (
                seen.backend_id, seen.alt_backend_id, seen.moving):
            log.info("%s", event_line("controller_skipped", feature=action.feature, group=move.group,
                                      reason="group changed since the snapshot"))
            return
        request = group_move_request(fresh, move.dest)
        if request == "busy" and move.replaces_move:
            request = "start"  # the pending move's destination is offline for good (evacuate)
        if request == "start":
            await self.db.group_start_move(snapshot.site.id, move.group, move.dest)
        elif request == "assign":
            await self.db.group_update(snapshot.site.id, move.group, backend_id=move.dest)
        else:
            log.info("%s", event_line("controller_skipped", feature=action.feature, group=move.group,
                                      reason=request))
            return
        self.history.record_move(MoveRecord(action.feature, move.group, move.source, move.dest, snapshot.now))
        self.metrics.decided(action)
        self._record(action, snapshot, executed=True)
        log.info("%s", event_line("controller_group_move", feature=action.feature, site=snapshot.site.name,
                                  **describe(action, snapshot, "action")))

    async def _regroup(self, action: RegroupUser, snapshot: Snapshot) -> None:
        """Request the user move as `cluster user move` does, if the user is still where the plan saw it."""
        assert self.db is not None
        move = action.move
        user = await self.db.user_get(move.username)
        self.history.set_timer(REGROUP_DONE, str(action.index + 1))
        self.history.set_timer(REGROUP_PASS, repr(snapshot.now))
        if user is None or user.group_name != move.from_group or user.moving:
            log.info("%s", event_line("controller_skipped", feature=action.feature, user=move.username,
                                      reason="user changed since the plan"))
            return
        await self.db.user_start_move(move.username, move.to_group, snapshot.site.id, user.failover_site_group_name)
        self.metrics.decided(action)
        self._record(action, snapshot, executed=True)
        log.info("%s", event_line("controller_user_move", feature=action.feature, site=snapshot.site.name,
                                  **describe(action, snapshot, "action")))

    async def _ramp_site(self, action: RampSite, snapshot: Snapshot) -> None:
        assert self.db is not None
        step = action.action
        if step.kind == "force_move":
            assert step.move_id is not None
            await self.db.site_force_move_set(step.site_id, ForceMove(step.move_id, step.percentage, step.dest))
        elif step.kind == "recover":
            assert step.move_id is not None
            await self.db.site_recover_set(step.site_id, step.move_id, step.percentage)
        else:
            await self.db.site_force_move_clear(step.site_id)
            await self.db.site_recover_clear(step.site_id)
        self.history.set_timer(f"{SITE_STEP}{step.site_id}", None if step.kind == "clear" else repr(snapshot.now))
        self.metrics.decided(action)
        self._record(action, snapshot, executed=True)
        log.info("%s", event_line("controller_site_ramp", feature=action.feature, site=snapshot.site.name,
                                  **describe(action, snapshot, "action")))


def encode_regroup_plan(groups: Sequence[Group], members: Mapping[str, Sequence[str]], settings: GroupSizeSettings
                        ) -> tuple[tuple[UserMove, ...], str]:
    """The day's group-size plan and its stored form (a JSON list of `UserMove` fields), encoded
    move by move: one `json.dumps` of 100,000 moves would hold the GIL, and so stall the
    controller's event loop, for a tenth of a second."""
    moves = tuple(plan_group_sizes(groups, members, settings))
    return moves, "[" + ", ".join(json.dumps(list(astuple(m))) for m in moves) + "]"


def decode_regroup_plan(text: str | None) -> tuple[UserMove, ...]:
    return tuple(UserMove(*item) for item in json.loads(text)) if text else ()


def add_group_members(members: dict[str, list[str]], users: Iterable[User], groups: set[str], site_id: UUID) -> None:
    """Group-size counts the users of this site's groups that prefer this site (or none) and are
    not moving: add one page of users to `members` (group name -> usernames)."""
    for user in users:
        if user.group_name in groups and user.preferred_site_id in (None, site_id) and not user.moving:
            members.setdefault(user.group_name, []).append(user.username)


def describe(action: Action, snapshot: Snapshot, verb: str) -> dict[str, object]:
    """The log fields of an action: what it does (`verb` = `action`) or would do (`would`) and why,
    with the inputs it decided from."""
    return {verb if k == "would" else k: v for k, v in _fields(action, snapshot).items()}


def _fields(action: Action, snapshot: Snapshot) -> dict[str, object]:
    hosts = {b.id: b.host for b in snapshot.backends}
    if isinstance(action, SetBackendStatus):
        return {"backend": action.backend.host, "would": f"set status {action.status}", "reason": action.reason}
    if isinstance(action, MoveGroup):
        m = action.move
        return {"group": m.group, "from": hosts.get(m.source, str(m.source)) if m.source else None,
                "to": hosts.get(m.dest, str(m.dest)), "would": f"move group {m.group}", "reason": m.reason}
    if isinstance(action, RegroupUser):
        u = action.move
        return {"user": u.username, "from": u.from_group, "to": u.to_group,
                "would": f"move user to group {u.to_group}", "reason": u.reason}
    s = action.action
    names = {str(site.id): site.name for site in snapshot.sites}
    return {"target_site": s.site, "would": f"{s.kind.replace('_', '-')} {s.percentage}%",
            "dest": ",".join(names.get(d, d) for d in s.dest) or None, "reason": s.reason}


async def run_controller(cfg: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT: tick every `controller_interval`, serve metrics if configured."""
    site_name = cfg["cluster_local_site"]
    if not site_name:
        raise RuntimeError("cluster_local_site is not set: a controller manages exactly one site")
    interval = float(cfg["controller_interval"])
    if interval <= 0:
        raise RuntimeError("controller_interval must be greater than zero")
    registry = Registry(dovecot_prefix=cfg["metrics_prefix"])
    history = History(cfg["controller_history_path"], int(cfg["controller_history_samples"]))
    controller = Controller(lambda: open_geodb(cfg), site_name, rules_from_config(cfg),
                            ControllerMetrics(registry), history=history)
    servers = await serve_stats(cfg, registry)
    try:
        http = await serve_http(cfg, history, lambda: open_geodb(cfg))
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None
    stop = stop_signal()
    log.info("%s", event_line("controller_started", site=site_name, interval=f"{interval:g}s"))
    if ready is not None:
        ready.set()
    try:
        while not stop.done():
            await controller.tick()
            await asyncio.wait({stop}, timeout=interval)
    finally:
        await controller.close()
        history.close()
        if http is not None:
            await http[0].cleanup()
            await http[1].close()
        for server in servers:
            server.close()
        log.info("%s", event_line("controller_stopped", site=site_name))
