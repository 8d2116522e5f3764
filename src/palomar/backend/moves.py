"""The move executor on a backend: group moves (as their source), user moves, kicks, and the
sweep that keeps every user on one backend.

A group move starts lazily: the first access of any user of a moving group (or `cluster
group access`) on its source backend starts one background task for the group. The task
migrates the users this backend served, one at a time: it records the user as moved in the
LocalDB (so later logins get a referral to the destination), closes the user's relayed
sessions and kicks what Dovecot still has. When no user is left it writes the GeoDB
completion and keeps the group's redirect for stragglers. All progress is in the LocalDB
(users done, the "move running" group row) and the GeoDB (the group row), so a restarted
backend resumes the move or finishes it. The decisions are `palomar.cluster.moves`; see
docs/design/moves.md.

LMTP deliveries are accesses too, and they hold their recipients: a user counts as moved only
once no open LMTP transaction on this backend still holds it (`begin_delivery` /
`wait_for_deliveries`), so a message is stored by the backend that owns the user, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from palomar.backend.doveadm_client import DoveadmClient, DoveadmError
from palomar.cluster import moves as rules
from palomar.cluster.model import Group, SiteView
from palomar.cluster.ownership import STRAGGLER_WINDOW, Own, Refer, expand_test_username
from palomar.cluster.routing import Assign, resolve_group
from palomar.logsafe import safe
from palomar.metrics.registry import Registry

if TYPE_CHECKING:
    from palomar.backend.service import BackendState

log = logging.getLogger("palomar.backend.moves")

SWEEP_INTERVAL = 1.0
"""Seconds between sweeps: resume started moves, finish moves of a non-online source, close
sessions this backend no longer owns, forget expired straggler redirects."""
SWEEP_BATCH = 200
"""Most relayed users one sweep re-checks (each one ownership check: two GeoDB reads), and most
expired straggler redirects it drops. 200 per second re-checks 100,000 relayed users within
about eight minutes; a group that leaves re-checks its own users at once (`close_unowned_soon`)."""
_UNREAD: Any = object()
"""`on_access` without the user's record: read it."""
DRAIN_POLL = 0.05
"""Seconds between `doveadm who` polls while a user's Dovecot sessions go away."""


class DeliveryHolder(Protocol):
    """An open LMTP transaction (the backend's LMTP gateway) holding recipients here, or a login on
    its way to Dovecot (`LoginHold` in the backend service), which holds its user the same way."""

    def abort_delivery(self, reason: str) -> bool:
        """Abort the transaction if its message has not reached Dovecot completely (its recipients
        get a 4xx and nothing is stored); False when the final dot was already sent."""
        ...


def _event(name: str, **fields: Any) -> None:
    """One `event=...` log line, the form of Dovecot's cluster events."""
    text = " ".join(f"{key}={'' if value is None else value}" for key, value in fields.items())
    log.info("event=%s %s", name, text)


@dataclass
class MoveExecutor:
    """Runs on one backend; `state` is the backend service's state."""

    state: BackendState = field(repr=False)
    doveadm: DoveadmClient | None
    user_move_timeout: float = rules.DEFAULT_USER_MOVE_TIMEOUT
    metrics: Registry = field(default_factory=Registry)
    running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    finishing: dict[str, str] = field(default_factory=dict)
    """Group -> destination host while the executor writes a group's completion: every access of
    the group's users is referred from then on (the destination owns them, ownership rule 7)."""
    _sweeper: asyncio.Task[None] | None = None
    _deliveries: dict[DeliveryHolder, set[tuple[str, str]]] = field(default_factory=dict, repr=False)
    """Open LMTP transactions -> the (group, user) pairs they hold."""
    _released: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _recheck: deque[str] = field(default_factory=deque, repr=False)
    """Relayed users the sweep has yet to re-check in its current round."""

    def __post_init__(self) -> None:
        m = self.metrics
        self.group_started = m.counter("cluster_user_group_move_started", "Group moves started here")
        self.group_finished = m.counter("cluster_user_group_move_finished", "Group moves finished here",
                                        ("result",))
        self.user_started = m.counter("cluster_user_move_started", "User moves started here")
        self.user_finished = m.counter("cluster_user_move_finished", "User moves finished here", ("result",))
        self.kicks = m.counter("cluster_kicks", "Users kicked on this backend")

    # -- clock and identity ---------------------------------------------------------------

    @property
    def clock(self) -> Callable[[], float]:
        return self.state.clock

    def _test_user(self) -> str | None:
        template = self.state.test_username
        return expand_test_username(template, self.state.name) if template else None

    # -- kicking one user -------------------------------------------------------------------

    def close_relays(self, user: str) -> int:
        """Close the user's relayed sessions on this backend; returns how many."""
        relays = list(self.state.by_user.get(user, {}).values())
        for relay in relays:
            relay.close(by="proxy")
        return len(relays)

    async def drain(self, user: str, timeout: float) -> str | None:
        """Kick the user's remaining Dovecot sessions and wait until none is left.

        Returns None when Dovecot confirms the user is gone, else the reason it could not
        (a timeout, doveadm unreachable): after `timeout` the user counts as moved anyway.
        """
        if self.doveadm is None:
            return "no doveadm access configured"
        started = time.monotonic()
        error: str | None = None
        while True:
            try:
                if await self.doveadm.sessions(user) == 0:
                    return None
                await self.doveadm.kick(user)
            except DoveadmError as exc:
                error = str(exc)
            if rules.user_move_expired(started, time.monotonic(), timeout):
                return error or f"sessions still present after {timeout:g}s"
            await asyncio.sleep(DRAIN_POLL)

    async def kick(self, user: str) -> dict[str, Any]:
        """`cluster kick`: close the user's sessions here (relayed and Dovecot's)."""
        closed = self.close_relays(user)
        error = await self.drain(user, self.user_move_timeout)
        self.kicks.inc()
        log.info("kicked user=%s relays=%d error=%s", safe(user), closed, error or "")
        return {"user": user, "backend": self.state.name, "closed_sessions": closed, "error": error}

    # -- group moves ------------------------------------------------------------------------

    async def _site_view(self) -> SiteView:
        return await self.state.site_view()

    async def group_access(self, group: Group) -> str:
        """An access of a user of `group` here: start, finish or ignore its move. Returns what happened."""
        assert self.state.backend_id is not None
        if not group.moving or group.backend_id != self.state.backend_id:
            return "not moving" if not group.moving else "not the source"
        if group.name in self.running:
            return "running"
        view = await self._site_view()
        action = rules.group_move_action(group, self.state.backend_id, view)
        if isinstance(action, rules.FinishAtOnce):
            await self._finish_at_once(group, action)
            return "finished at once"
        if isinstance(action, rules.Migrate):
            self.start_group_move(group.name)
            return "started"
        return f"waiting: {action.reason}"

    def start_group_move(self, name: str) -> None:
        """One background task per group; a second access while it runs changes nothing."""
        if name in self.running:
            return
        task = asyncio.get_running_loop().create_task(self._run_group_move(name))
        self.running[name] = task
        task.add_done_callback(lambda _t: self.running.pop(name, None))

    async def _finish_at_once(self, group: Group, action: rules.FinishAtOnce) -> None:
        write = action.write
        applied, stored = await self.state.geodb.group_replace_backend(
            group.site_id, group.name, write.group.backend_id, write.group.alt_backend_id,
            expect_backend_id=write.expect_backend_id)
        if applied:
            _event("cluster_user_group_move_finished", group=group.name, moved_users=0, failed_users=0,
                   error=action.reason)
            self.group_finished.inc(result="at_once")
        await self._after_group_left(group.name, stored)

    async def _after_group_left(self, name: str, stored: Group) -> None:
        """The group is on another backend now: remember where for stragglers, forget its users."""
        if stored.backend_id == self.state.backend_id:
            self._forget_move(name)
            return
        dest = (await self._site_view()).backend(stored.backend_id)
        if dest is not None:
            self.state.localdb.group_put(name, redirect_host=dest.host, now=int(self.clock()))
        else:
            self.state.localdb.group_remove(name)
        users = [row.username for row in self.state.localdb.users_of_group(name)]
        self.state.localdb.users_of_group_remove(name)
        self.close_unowned_soon(users)

    def _forget_move(self, name: str) -> None:
        """The group stays here (move abandoned, cancelled, or given back): drop the move's marker and
        its user redirects, so nobody of the group is referred away any more."""
        self.state.localdb.group_remove(name)
        for row in self.state.localdb.users_of_group(name):
            if row.redirect_host is not None:
                self.state.localdb.user_put(name, row.username, now=int(self.clock()))

    async def _run_group_move(self, name: str) -> None:
        state = self.state
        assert state.site_id is not None and state.backend_id is not None
        moved = failed = 0
        error = ""
        dest_host = ""
        try:
            marker = state.localdb.group_get(name)
            if marker is None or marker.redirect_host is not None:
                state.localdb.group_put(name, redirect_host=None, now=int(self.clock()))
            announced = False
            while True:
                group = await state.geodb.group_get(state.site_id, name)
                view = await self._site_view()
                action = rules.group_move_action(group, state.backend_id, view)
                if isinstance(action, rules.FinishAtOnce):
                    assert group is not None
                    await self._finish_at_once(group, action)
                    return
                if not isinstance(action, rules.Migrate):
                    if group is not None and group.backend_id != state.backend_id:
                        await self._after_group_left(name, group)  # a proxy or --direct finished it
                    elif isinstance(action, rules.NoMove):
                        self._forget_move(name)  # the move was cancelled
                    log.info("group %s move stopped: %s", name, getattr(action, "reason", ""))
                    return
                dest_host = action.dest.host
                if not announced:
                    _event("cluster_user_group_move_started", group=name, dest_host=dest_host)
                    self.group_started.inc()
                    announced = True
                local = [rules.LocalUserState(u.username, u.redirect_host)
                         for u in state.localdb.users_of_group(name)]
                test_user = self._test_user()
                pending = rules.pending_users(local, dest_host, exclude=[test_user] if test_user else [])
                if not pending:
                    break
                for user in pending:
                    if user != pending[0] and not await self._still_migrating(name):
                        break  # the group changed (source offline, --direct): re-decide above
                    if await self._move_user(name, user, dest_host):
                        moved += 1
                    else:
                        failed += 1
            # No user left to migrate: from here on every access of the group is referred
            # (synchronously with this decision), and the deliveries still open for its users
            # must end before the group leaves.
            self.finishing[name] = dest_host
            late = await self.wait_for_deliveries(lambda g, _u: g == name, self.user_move_timeout)
            if late is not None:
                log.warning("group %s: %s", name, late)
            assert group is not None
            me = view.backend(state.backend_id)
            assert me is not None
            completion = rules.group_move_completion(group, action.dest, view, me)
            write = completion.write
            applied, stored = await state.geodb.group_replace_backend(
                state.site_id, name, write.group.backend_id, write.group.alt_backend_id,
                expect_backend_id=write.expect_backend_id)
            if applied:
                await state.geodb.backend_update(state.site_id, me.id, last_moved_to=completion.dest_host)
                await state.geodb.backend_update(state.site_id, action.dest.id,
                                                 last_moved_from=completion.source_host)
            else:
                error = "group changed during the move"
            await self._after_group_left(name, stored)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the GeoDB may be away; the sweep resumes the move later
            error = f"{type(exc).__name__}: {exc}"
            log.warning("group %s move interrupted: %s", name, error)
            return
        finally:
            self.finishing.pop(name, None)
        _event("cluster_user_group_move_finished", group=name, dest_host=dest_host, moved_users=moved,
               failed_users=failed, error=error)
        self.group_finished.inc(result="ok" if not error else "error")

    async def _still_migrating(self, name: str) -> bool:
        state = self.state
        assert state.site_id is not None and state.backend_id is not None
        group = await state.geodb.group_get(state.site_id, name)
        action = rules.group_move_action(group, state.backend_id, await self._site_view())
        return isinstance(action, rules.Migrate)

    async def _move_user(self, group: str, user: str, dest_host: str) -> bool:
        """Migrate one user: refer it from now on, close its sessions here. True when confirmed."""
        _event("cluster_user_move_started", user=user, dest_host=dest_host)
        self.user_started.inc()
        self.state.localdb.user_put(group, user, redirect_host=dest_host, now=int(self.clock()))
        started = time.monotonic()
        self.close_relays(user)
        error = await self.wait_for_deliveries(lambda _g, u: u == user, self.user_move_timeout)
        left = self.user_move_timeout - (time.monotonic() - started)
        error = await self.drain(user, max(0.0, left)) or error
        _event("cluster_user_move_finished", user=user, dest_host=dest_host, error=error or "")
        self.user_finished.inc(result="ok" if error is None else "timeout")
        return error is None

    # -- user moves ---------------------------------------------------------------------------

    async def user_access(self, user: str) -> str:
        """Carry out the user's pending move if this backend is its current one. Returns what happened."""
        state = self.state
        assert state.site_id is not None
        decision, _group = await state.ownership(user)
        if not isinstance(decision, Own):
            return "not served here" if not isinstance(decision, Refer) else f"refer {decision.host}"
        record = await state.geodb.user_get(user)
        effective = rules.user_move_effective(record)
        if effective is None or user == self._test_user():
            return "no pending move"
        old_group = record.group_name if record is not None else None
        self.close_relays(user)
        error = await self.drain(user, self.user_move_timeout)
        await state.geodb.user_put(user, **effective.fields())
        if old_group and state.localdb.user_get(old_group, user) is not None:
            state.localdb.user_remove(old_group, user)
        if effective.preferred_site_id in (None, state.site_id):
            await self._ensure_group_placed(effective.group_name)
        _event("cluster_user_move_finished", user=user, dest_host="", group=effective.group_name,
               error=error or "")
        self.user_finished.inc(result="ok" if error is None else "timeout")
        return f"moved to group {effective.group_name}"

    async def _ensure_group_placed(self, name: str) -> None:
        """A user moved into a group nobody has placed yet: place it as a proxy would (LWT)."""
        state = self.state
        assert state.site_id is not None
        existing = await state.geodb.group_get(state.site_id, name)
        if existing is not None and existing.backend_id is not None:
            return
        view = await self._site_view()
        decision = resolve_group(existing, name, view)
        if not isinstance(decision, Assign):
            return
        alt = decision.alt_backend.id if decision.alt_backend else None
        if existing is None:
            await state.geodb.group_create_if_absent(
                Group(site_id=state.site_id, name=name, backend_id=decision.backend.id, alt_backend_id=alt))
        else:
            await state.geodb.group_assign_backend(state.site_id, name, decision.backend.id, alt)

    # -- the access hook ----------------------------------------------------------------------

    async def on_access(self, user: str, decision: Any, group: Group | None, *,
                        record: Any = _UNREAD) -> tuple[Any, Group | None]:
        """Called on every login before it is served: moves first, then the final ownership.

        `record` is the user's GeoDB row when the caller just read it for the ownership check
        (saves a read per login); left out, it is read here.
        """
        changed = False
        if group is not None and group.moving and group.backend_id == self.state.backend_id:
            changed = (await self.group_access(group)) == "finished at once"
        if isinstance(decision, Own) and user != self._test_user():
            if record is _UNREAD or changed:
                record = await self.state.geodb.user_get(user)
            if record is not None and record.moving:
                await self.user_access(user)
                changed = True
        if changed:
            return await self.state.ownership(user)
        return decision, group

    def moved_during_login(self, user: str, group: Group | None) -> str | None:
        """The destination if the user was migrated while its login ran, else None.

        Synchronous on purpose: between this check and the relay being registered the event
        loop does not switch, so the executor either refers this login or closes its relay.
        """
        if group is None:
            return None
        return self._moved_to(group, self.state.localdb.user_get(group.name, user))

    def _moved_to(self, group: Group, row: Any) -> str | None:
        """The destination the LocalDB row of a user of `group` (or the group's finishing move) names."""
        if row is not None and row.redirect_host and row.redirect_host != self.state.name:
            return row.redirect_host
        return self.finishing.get(group.name)

    # -- LMTP deliveries ------------------------------------------------------------------------

    def begin_delivery(self, user: str, group: Group | None, holder: DeliveryHolder) -> str | None:
        """An LMTP RCPT this backend owns is about to go to Dovecot: the host to refer it to if the
        user was migrated meanwhile, else None and `holder` holds the user until `end_delivery`.

        Synchronous, like `moved_during_login`: the executor either sees the hold (and waits for
        the transaction before it counts the user as moved) or the RCPT sees the redirect.
        """
        if group is None:
            return None
        localdb = self.state.localdb
        row = localdb.user_get(group.name, user)
        moved_to = self._moved_to(group, row)
        if moved_to is not None:
            return moved_to
        # recorded now, not after Dovecot's reply: a later write would wipe a redirect the
        # executor wrote while the RCPT was on its way. A row that already says exactly this
        # (no redirect, this second) is not written again: a busy mailbox gets many RCPTs a second.
        now = int(self.clock())
        if row is None or row.redirect_host or row.redirect_group or row.last_update != now:
            localdb.user_put(group.name, user, now=now)
        self._deliveries.setdefault(holder, set()).add((group.name, user))
        return None

    def end_delivery(self, holder: DeliveryHolder, user: str | None = None) -> None:
        """The transaction ended (or gave up `user`): release what it held."""
        held = self._deliveries.get(holder)
        if held is None:
            return
        if user is None:
            held.clear()
        else:
            held.difference_update({pair for pair in held if pair[1] == user})
        if not held:
            del self._deliveries[holder]
        self._released.set()
        self._released = asyncio.Event()

    def held_users(self) -> set[str]:
        """The users an open LMTP transaction or a login on its way to Dovecot holds here."""
        return {user for held in self._deliveries.values() for _group, user in held}

    def open_deliveries(self, match: Callable[[str, str], bool]) -> list[DeliveryHolder]:
        """The transactions holding a (group, user) that `match` selects."""
        return [holder for holder, held in self._deliveries.items() if any(match(g, u) for g, u in held)]

    async def wait_for_deliveries(self, match: Callable[[str, str], bool], timeout: float) -> str | None:
        """Wait until no open LMTP transaction holds a matching user. After `timeout` the ones whose
        message is not complete at Dovecot are aborted (4xx, nothing stored: the MTA retries at the
        destination); one whose final dot was sent is waited for, its message is being stored.
        Returns None when none is left, else why not (those were still storing another `timeout`)."""
        deadline = time.monotonic() + timeout
        aborted = False
        while True:
            holders = self.open_deliveries(match)
            if not holders:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                if aborted:
                    return f"{len(holders)} LMTP transaction(s) still storing after {2 * timeout:g}s"
                aborted = True
                count = sum(1 for holder in holders if holder.abort_delivery("recipient moved"))
                log.info("aborted %d open LMTP transaction(s) after %gs", count, timeout)
                deadline = time.monotonic() + timeout
                continue
            released = self._released
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await released.wait()

    # -- the sweep ----------------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def stop(self) -> None:
        tasks = [t for t in (self._sweeper, *self.running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.doveadm is not None:
            self.doveadm.close()

    def close_unowned_soon(self, users: Iterable[str]) -> None:
        """Re-check those of `users` with relayed sessions now instead of waiting for the sweep."""
        relayed = [user for user in users if user in self.state.by_user]
        if relayed:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().create_task(self._close_unowned(relayed))

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the GeoDB may be briefly unreachable; try again later
                log.warning("move sweep failed: %s", exc)
            await asyncio.sleep(SWEEP_INTERVAL)

    async def sweep(self) -> None:
        """Resume moves this backend had started, finish moves it cannot run, drop expired redirects,
        and close sessions of users this backend no longer owns.

        Bounded per pass (docs/design/periodic-tasks.md): one GeoDB group read per move marker in
        the LocalDB, at most `SWEEP_BATCH` expired straggler redirects, at most `SWEEP_BATCH`
        relayed users re-checked; the site's whole group list only while this backend is not online.
        """
        state = self.state
        assert state.site_id is not None and state.backend_id is not None
        now = self.clock()
        for row in state.localdb.groups_moving_here():
            if row.name in self.running:
                continue
            group = await state.geodb.group_get(state.site_id, row.name)
            if group is not None and group.moving and group.backend_id == state.backend_id:
                log.info("resuming the move of group %s", row.name)
                self.start_group_move(row.name)
            elif group is not None and group.backend_id != state.backend_id:
                # The move ended while no task ran it (a restart): elsewhere now, or still here.
                await self._after_group_left(row.name, group)
            else:
                self._forget_move(row.name)
        for row in state.localdb.groups_redirected_before(int(now - STRAGGLER_WINDOW) + 1, SWEEP_BATCH):
            if not rules.straggler_active(float(row.last_update), now):
                state.localdb.group_remove(row.name)
                log.info("group %s: straggler redirect to %s expired", row.name, row.redirect_host)
        me = (await self._site_view()).backend(state.backend_id)
        if me is not None and not me.online:
            for group in await state.geodb.group_list(state.site_id):
                if group.moving and group.backend_id == state.backend_id and group.name not in self.running:
                    await self.group_access(group)
        await self._close_unowned(self._next_recheck_batch())

    def _next_recheck_batch(self) -> list[str]:
        """The next `SWEEP_BATCH` relayed users, round robin: every relayed user is re-checked once
        per ceil(users / SWEEP_BATCH) sweeps, and one sweep never checks more than the batch."""
        if not self._recheck:
            self._recheck.extend(self.state.by_user)
        batch = []
        while self._recheck and len(batch) < SWEEP_BATCH:
            batch.append(self._recheck.popleft())
        return batch

    async def _close_unowned(self, users: Iterable[str]) -> None:
        """Close the sessions of those `users` another backend owns now (moved, force-moved, failed over)."""
        for user in users:
            if not self.state.by_user.get(user):
                continue
            decision, _group = await self.state.ownership(user)
            if isinstance(decision, Refer):
                closed = self.close_relays(user)
                if closed:
                    log.info("closed %d session(s) of user=%s: owned by %s now (%s)", closed, safe(user),
                             decision.host, decision.reason)

    def stats(self) -> dict[str, float]:
        """Counters for backend_stats."""
        return {
            "group_moves_started": self.group_started.value(),
            "group_moves_finished": sum(v for _l, v in self.group_finished.items()),
            "user_moves_finished": sum(v for _l, v in self.user_finished.items()),
            "kicks": self.kicks.value(),
            "group_moves_running": float(len(self.running)),
        }

def executor_from_config(state: BackendState, cfg: Any, metrics: Registry) -> MoveExecutor:
    """The executor with doveadm access to the local Dovecot (`doveadm_password` and
    `cluster_backend_dovecot_doveadm_http_port`) and `cluster_user_move_timeout`, counting in the
    backend's `metrics`."""
    password = cfg["doveadm_password"]
    port = cfg["cluster_backend_dovecot_doveadm_http_port"]
    host = cfg["cluster_backend_dovecot_host"]
    doveadm = DoveadmClient(host, port, password) if password and port else None
    if doveadm is None:
        log.warning("doveadm_password is not set: moves cannot kick Dovecot sessions; "
                    "each user waits for cluster_user_move_timeout")
    timeout = float(cfg["cluster_user_move_timeout"])
    return MoveExecutor(state, doveadm, user_move_timeout=timeout, metrics=metrics)
