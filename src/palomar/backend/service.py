"""`palomar backend`: accepts hops from proxies, enforces one backend per user, logs users in to
the local Dovecot and relays. Registers itself in the GeoDB and reports backend_stats."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from palomar.backend.admin import execute_admin
from palomar.backend.doveadm_gateway import runner
from palomar.backend.lmtp_gateway import serve_lmtp
from palomar.backend.load_sample import LoadSampler, doveadm_session_count
from palomar.backend.localdb_upkeep import prune_loop
from palomar.backend.login_check import start_login_check
from palomar.backend.moves import MoveExecutor, executor_from_config
from palomar.boundary import is_store_error, log_failure
from palomar.cluster import codec
from palomar.cluster.model import Backend, Group, SiteView, Stat, User
from palomar.cluster.ownership import NotMine, Own, Refer, check_ownership, expand_test_username, site_group
from palomar.cluster.site_selection import SiteState, failover_group, group_of, home_site
from palomar.cluster.stale import CachedEntry, ownership_when_stale, usable_when_stale
from palomar.dovecot_login import FLAVOURS, DovecotEndpoint, connect, login_over
from palomar.geodb.guarded import GeoDBUnavailable
from palomar.geodb.repository import GeoDB
from palomar.logsafe import safe
from palomar.metrics.http import serve_stats
from palomar.metrics.registry import Registry
from palomar.net.doveadm_hop import read_payload
from palomar.net.drain import Drain, ShuttingDown, drain_service
from palomar.net.hop_tls import hop_server_context
from palomar.net.link import Link, accept_link
from palomar.net.proxyheader import read_proxy_header_from
from palomar.net.relay import Relay, RelayStats
from palomar.protocols import doveadm, hop
from palomar.protocols.proxyproto import ProxyProtocolError
from palomar.protocols.shutdown import shutdown_line

log = logging.getLogger("palomar.backend")

HOP_HEADER_TIMEOUT = 5.0
"""Seconds a proxy has for the TLS handshake, and again for its header after the challenge."""
TLS_HANDSHAKE_RECORD = b"\x16\x03"
SITES_TTL = 1.0
"""Seconds a backend reuses its read of the sites table and its site's reachability for the logins
that follow (the proxy caches its site view the same way): site status, force-move and failover
reach a backend's ownership checks at most this late. Backends, users and groups are read fresh."""
STALE_TTL = 1
"""LocalDB lifetime of a remembered ownership read: it is never read fresh, only during an outage."""
STALE_SITE_KEY = "backend-site"
STALE_SITES_KEY = "backend-sites"
STALE_USER_PREFIX = "backend-user/"


@dataclass
class BackendState:
    geodb: GeoDB
    localdb: object
    name: str
    site_name: str
    secret: bytes
    dovecot: DovecotEndpoint
    test_username: str | None = None
    tls: ssl.SSLContext | None = None
    """The hop's TLS context (`cluster_hop_ssl = yes`); None serves a plaintext hop."""
    recipient_delimiter: str = "+"
    """Splits LMTP recipients into user and detail, as this backend's Dovecot does (same setting)."""
    group_count: int = 100
    """`cluster_default_group_count`: site selection needs the home group of a user without one."""
    backend_id: UUID | None = None
    site_id: UUID | None = None
    active: dict[int, Relay] = field(default_factory=dict)
    by_user: dict[str, dict[int, Relay]] = field(default_factory=dict)
    """The relays of each user, so a move or a kick can close them."""
    clock: Callable[[], float] = time.time
    """Time for moves and straggler redirects (tests shift it, see docs/design/moves.md)."""
    moves: MoveExecutor | None = None
    """The MoveExecutor (backend/moves.py) once the service runs."""
    drain: Drain = field(default_factory=Drain)
    stale_max: float = 0.0
    """`cluster_geodb_stale_max`: how old the last ownership read may be and still decide during
    a GeoDB outage (0: never)."""
    trusted_since: float = field(default_factory=time.time)
    """Reads made before this moment are never used stale: the process started (or resumed from a
    stall) then, and may have missed a failover of its groups while it was away."""
    _shared_written: int | None = None
    """The second the site view and the sites rows were last remembered (`_remember_ownership_inputs`)."""
    _view_seen: SiteView | None = None
    _sites_seen: SiteState | None = None
    _sites_read: tuple[float, SiteState] | None = None
    """The last read of the sites table and this site's reachability rows, and when (SITES_TTL)."""
    logins: int = 0
    referrals: int = 0
    refused: int = 0
    stats_written: int = 0
    """How many times `write_stats` completed."""
    load: LoadSampler | None = None
    """Samples the host and its Dovecot for the controller (None: palomar's own counters only)."""

    async def register(self) -> Backend:
        """`cluster backend add --self`: make sure this backend exists (new ones start standby)."""
        site = await self.geodb.site_get_by_name(self.site_name)
        if site is None:
            raise RuntimeError(f"site {self.site_name!r} does not exist in the GeoDB (cluster site add)")
        existing = await self.geodb.backend_find_by_host(self.name)
        if existing is None:
            await self.geodb.backend_add(Backend(id=uuid4(), site_id=site.id, host=self.name))
            existing = await self.geodb.backend_find_by_host(self.name)
            log.info("registered backend %s in site %s (standby)", self.name, self.site_name)
        assert existing is not None
        self.backend_id, self.site_id = existing.id, site.id
        return existing

    async def site_view(self) -> SiteView:
        assert self.site_id is not None
        site = await self.geodb.site_get(self.site_id)
        assert site is not None
        return SiteView(site, tuple(await self.geodb.backend_list(self.site_id)))

    def forget_site_state(self) -> None:
        """Read the sites table and the reachability rows again at the next login (SITES_TTL)."""
        self._sites_read = None

    async def ownership(self, username: str):
        """Decide with fresh GeoDB data: a backend must never serve a user it does not own."""
        decision, group, _ = await self.ownership_and_user(username)
        return decision, group

    async def ownership_and_user(self, username: str):
        """`ownership`, plus the user's GeoDB record it read (the move check needs it too).

        One engine call, not five (`GeoDB.ownership_rows`): the site, its backends and the user in
        one batch, then the user's groups (their names come from the user record), both batches in
        one job of the SQLite engine's worker thread. The ownership data (the site's
        backends, the user, its groups) is fresh every time; the sites table and this site's
        reachability rows (a range scan on Cassandra) are read at most once per `SITES_TTL`, as
        the proxy caches its site view. Only while the GeoDB cannot answer does the last fresh read
        stand in, under the stricter rule of `cluster.stale` (docs/design/geodb-outage.md).
        """
        try:
            return (await self.ownership_of([username]))[username]
        except GeoDBUnavailable:
            cached = self._stale_ownership_inputs(username)
            if cached is None:
                raise
            view, sites, user, group_site, group = cached
            served = self._site_group(username, user, group_site, sites)
            if isinstance(served, NotMine):
                return served, group, user
            decision = self._decide(username, view, group)
            me = view.backend(self.backend_id)
            moves = self.moves
            moving_here = group is not None and moves is not None and (
                group.name in moves.running or group.name in moves.finishing)
            return ownership_when_stale(
                decision, group, self_online=me is not None and me.online, moving_here=moving_here,
                test_user=username == self._test_user()), group, user

    async def ownership_of(self, usernames: Sequence[str]) -> dict[str, tuple[Any, Group | None, User | None]]:
        """The fresh path of `ownership_and_user` for several users at once (the pipelined RCPTs of
        an LMTP hop): the same one engine call for all of them, each user's data read fresh. A
        GeoDB that cannot answer fails the whole batch (GeoDBUnavailable): callers then check each
        user alone, where the stale rule applies."""
        assert self.backend_id is not None and self.site_id is not None
        now = self.clock()
        recent = self._sites_read
        cached = recent[1] if recent is not None and 0 <= now - recent[0] < SITES_TTL else None
        sites, backends, users, group_sites, groups = await self.geodb.ownership_rows(
            self.site_id, usernames, cached, self._group_keys)
        if cached is None:
            self._sites_read = (now, sites)
        site = sites.local
        assert site is not None
        view = SiteView(site, tuple(backends))
        homes = {username: self._home(username, user, sites) for username, user in users.items()}
        decided: dict[str, tuple[Any, Group | None, User | None]] = {}
        seen: list[tuple[str, Any, Any, Any]] = []
        for username, user in users.items():
            group_site = group_sites[homes[username]]
            served = self._site_group(username, user, group_site, sites)
            group = groups.get(served) if isinstance(served, str) else None
            seen.append((username, user, group, group_site))
            decided[username] = (served if isinstance(served, NotMine) else self._decide(username, view, group),
                                 group, user)
        self._remember_ownership_inputs(view, sites, seen)
        return decided

    def _group_keys(self, sites: SiteState, users: dict[str, User | None]
                    ) -> tuple[list[tuple[str, UUID]], list[str]]:
        """The (home group, home site) pairs whose `group_sites` rows decide between the groups each
        user may be served in here (home, failover), and those groups. Pure: the GeoDB engine may call
        it on its worker thread (`GeoDB.ownership_rows`)."""
        pairs: list[tuple[str, UUID]] = []
        names: list[str] = []
        for username, user in users.items():
            home_group, home_site_id = self._home(username, user, sites)
            pairs.append((home_group, home_site_id))
            if user is not None and user.group_name:
                names += [home_group, failover_group(user, home_group)]
        return pairs, names

    def _home(self, username: str, user: User | None, sites: SiteState) -> tuple[str, UUID]:
        """The user's home group and the site whose `group_sites` row of it counts."""
        home, _ = home_site(user, sites)
        local = sites.local
        assert local is not None
        return group_of(username, user, self.group_count), (home or local).id

    def _site_group(self, username: str, user, group_site, sites) -> str | NotMine:
        return site_group(username, user, group_site, sites, group_count=self.group_count,
                          test_username=self._test_user())

    def _test_user(self) -> str | None:
        return expand_test_username(self.test_username, self.name) if self.test_username else None

    def _decide(self, username: str, view: SiteView, group):
        assert self.backend_id is not None
        user_redirect = None
        group_redirect = None
        if group is not None:
            row = self.localdb.user_get(group.name, username)
            user_redirect = row.redirect_host if row is not None else None
            grow = self.localdb.group_get(group.name)
            if grow is not None and grow.redirect_host:
                group_redirect = (grow.redirect_host, float(grow.last_update))
        return check_ownership(self.backend_id, username, group, user_redirect, group_redirect,
                               self.clock(), site_view=view, test_username=self._test_user())

    def _remember_ownership_inputs(self, view: SiteView, sites: SiteState,
                                   seen: list[tuple[str, Any, Any, Any]]) -> None:
        """Keep what a fresh ownership read saw, for a GeoDB outage: one LocalDB write per login or
        batch of LMTP recipients, with the site view and the sites rows when they changed or at most
        once a second. A row is as old as its write (the stale rule bounds that age, and the LocalDB
        purges rows that old), so the shared rows are written again while they stay the same; they
        are compared as objects and encoded only when written. `seen`: (username, user, group,
        group_site) of each user read."""
        if self.stale_max <= 0:
            return
        now = int(time.time())
        items = [(f"{STALE_USER_PREFIX}{username}", codec.dumps([user, group, group_site]))
                 for username, user, group, group_site in seen]
        if now != self._shared_written or view != self._view_seen or sites != self._sites_seen:
            items += [(STALE_SITE_KEY, codec.dumps(view)), (STALE_SITES_KEY, codec.dumps(sites))]
            self._shared_written, self._view_seen, self._sites_seen = now, view, sites
        self.localdb.cache_put_many(items, STALE_TTL, now)

    def _stale_ownership_inputs(self, username: str):
        """(view, sites, user, group_site, group) from the last fresh read, if the stale rule allows
        using it."""
        now = time.time()
        rows = [self.localdb.cache_get_stale(key, int(now)) for key in (
            STALE_SITE_KEY, STALE_SITES_KEY, f"{STALE_USER_PREFIX}{username}")]
        entries = [None if r is None else CachedEntry(r[0], r[1] - STALE_TTL) for r in rows]
        # The LocalDB keeps whole seconds: a read in the second this process started or resumed counts
        # as after it (a failover it missed needs the seconds of a probe window, not a fraction).
        trusted_since = float(int(self.trusted_since))
        if not all(usable_when_stale(e, now, max_stale=self.stale_max, trusted_since=trusted_since)
                   for e in entries):
            return None
        site_entry, sites_entry, user_entry = entries
        assert site_entry is not None and sites_entry is not None and user_entry is not None
        user, group, group_site = codec.load_user_group_and_site(user_entry.text)
        return (codec.load_site_view(site_entry.text), codec.load_site_state(sites_entry.text), user,
                group_site, group)

    async def write_stats(self) -> None:
        assert self.site_id is not None and self.backend_id is not None
        users = self.localdb.users_served()  # a counter row, not a scan (docs/design/periodic-tasks.md)
        load: list[Stat] = []
        if self.load is not None:  # /proc reads and doveadm who block: off the event loop
            load = await asyncio.to_thread(self.load.sample)
            if self.load.last_error:
                log.debug("load sample without Dovecot sessions: %s", self.load.last_error)
        await self.geodb.backend_stats_put(self.site_id, self.backend_id, [
            *load,
            Stat("sessions_active", float(len(self.active)), "gauge"),
            Stat("logins", float(self.logins), "counter"),
            Stat("referrals", float(self.referrals), "counter"),
            Stat("hops_refused", float(self.refused), "counter"),
            *(Stat(k, v, "counter") for k, v in (self.moves.stats() if self.moves else {}).items()),
        ])
        await self.geodb.backend_update(self.site_id, self.backend_id, user_count_approx=users)
        self.stats_written += 1


STALL_TICK = 1.0
STALL_THRESHOLD = 3.0
"""A tick this much later than due means the process was frozen (SIGSTOP, a VM pause, swap)."""


async def _watch_stalls(state: BackendState) -> None:
    """Notice that this process was frozen: what it read before may be outdated by a failover it
    could not see, so nothing read before the stall is used stale (docs/design/geodb-outage.md)."""
    last = time.monotonic()
    while True:
        await asyncio.sleep(STALL_TICK)
        now = time.monotonic()
        if now - last > STALL_TICK + STALL_THRESHOLD:
            state.trusted_since = time.time()
            log.warning("backend resumed after a stall of %.1fs: cached GeoDB state from before it is "
                        "no longer trusted", now - last - STALL_TICK)
        last = now


async def handle_hop(state: BackendState, sock: socket.socket) -> None:
    try:
        peer = sock.getpeername()
    except OSError:  # already gone
        sock.close()
        return
    handshake_timeout = HOP_HEADER_TIMEOUT if state.tls else None
    try:
        link = await accept_link(sock, tls=state.tls, handshake_timeout=handshake_timeout)
    except OSError as exc:  # with TLS: the handshake failed (ssl.SSLError is an OSError)
        if _closed_in_handshake(exc):  # a port check, or a proxy that rejected this certificate
            log.info("hop from %s closed during the TLS handshake (a port check, or a proxy that does not "
                     "trust this backend's certificate)", peer[0])
        elif state.tls is not None:
            state.refused += 1
            log.warning("hop from %s refused: %s", peer[0], _handshake_failure(exc))
        return
    try:
        await _hop_session(state, link, peer[0])
    except (ConnectionError, OSError) as exc:
        log.debug("hop from %s: connection error: %s", peer[0], exc)
        link.abort()
    except Exception as exc:  # last resort (a bug after the reply): log once, close the transport
        log_failure(log, f"hop from {peer[0]}", exc)
        link.close()


async def _hop_session(state: BackendState, link: Link, peer: str) -> None:
    challenge = hop.new_challenge()
    link.write(hop.encode_challenge(challenge))
    try:
        async with asyncio.timeout(HOP_HEADER_TIMEOUT):
            header = await _read_header(link, state.drain, tls=state.tls is not None)
        request = hop.verify(header.source, header.dest, header.tlvs, secret=state.secret, own_host=state.name,
                             challenge=challenge)
    except (ConnectionError, ShuttingDown):  # left without a word (a port probe, an unused spare), or we stop
        link.abort()
        return
    except (TimeoutError, ProxyProtocolError, OSError, hop.HopError) as exc:
        state.refused += 1
        log.warning("hop from %s refused: %s", peer, "no hop header in time" if isinstance(exc, TimeoutError)
                    else safe(str(exc) or type(exc).__name__))
        link.write(hop.encode_reply(hop.Failure("denied", "hop refused")))
        link.close()  # after the reply is sent
        return
    if request.admin is not None:  # an admin command (palomar cluster kick / group access ...)
        link.write(hop.encode_reply(await execute_admin(state, request)))
        link.close()
        return
    if request.protocol == "lmtp":  # recipients are checked one by one: a gateway, not a relay
        await serve_lmtp(state, request, link)
        return
    run = None
    if request.protocol == "doveadm":  # a doveadm command for one user, sent with the header
        try:
            payload = await read_payload(link, request.user)
        except (TimeoutError, doveadm.DoveadmProtocolError) as exc:
            log.warning("session=%s user=%s proto=doveadm hop refused: %s", request.session_id, safe(request.user),
                        "no doveadm command in time" if isinstance(exc, TimeoutError) else safe(str(exc)))
            link.write(hop.encode_reply(hop.Failure("protocol", "bad doveadm command")))
            link.close()
            return
        run = runner(state.dovecot, payload)
    reply, dovecot = await _serve_guarded(state, request, run)
    link.write(hop.encode_reply(reply))
    if dovecot is None:
        link.close()
        return
    state.logins += 1
    proxy_transport, dovecot_transport = link.transport, dovecot.transport
    assert proxy_transport is not None and dovecot_transport is not None
    key = id(proxy_transport)
    relay = Relay(proxy_transport, dovecot_transport,
                  RelayEnd(state, key, request.user, request.session_id, request.protocol, request.client[0]),
                  shutdown_line(request.protocol, state.name))
    state.active[key] = relay
    state.by_user.setdefault(request.user, {})[key] = relay
    relay.start(client_pending=link.take_buffer(), server_pending=dovecot.take_buffer(), client_eof=link.eof,
                server_eof=dovecot.eof)


def _closed_in_handshake(exc: BaseException) -> bool:
    """The peer just went away mid-handshake: it did nothing wrong this side can name."""
    return isinstance(exc, ConnectionResetError | BrokenPipeError) or (
        isinstance(exc, ssl.SSLError) and exc.reason == "UNEXPECTED_EOF_WHILE_READING")


def _handshake_failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        return ("no TLS handshake in time (a proxy with cluster_hop_ssl = no? this backend has "
                "cluster_hop_ssl = yes)")
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc}; a proxy not trusting this backend's certificate?)"
    return f"TLS handshake failed ({type(exc).__name__}: {exc})"


async def _read_header(link: Link, drain: Drain, *, tls: bool):
    """The proxy's PROXY header; a TLS ClientHello on a plaintext hop is named as such. A stop
    (SIGTERM) ends the wait at once: no login has started on this hop yet (a proxy's spare hop
    waits here for up to 2 s)."""
    first = await drain.read(link)
    if not tls and first.startswith(TLS_HANDSHAKE_RECORD):
        raise hop.HopError("a TLS handshake arrived but this backend has cluster_hop_ssl = no "
                           "(the proxy has cluster_hop_ssl = yes)")
    link.unread(first)
    return await read_proxy_header_from(link)


class RelayEnd:
    """What a relayed session keeps until it ends: its registry keys and its log line's fields
    (not the HopRequest, the Links or the login reply: idle sessions are many and long)."""

    __slots__ = ("state", "key", "user", "session_id", "protocol", "client_ip")

    def __init__(self, state: BackendState, key: int, user: str, session_id: str, protocol: str,
                 client_ip: str) -> None:
        self.state = state
        self.key = key
        self.user = user
        self.session_id = session_id
        self.protocol = protocol
        self.client_ip = client_ip

    def __call__(self, stats: RelayStats) -> None:
        state = self.state
        state.active.pop(self.key, None)
        user_relays = state.by_user.get(self.user)
        if user_relays is not None:
            user_relays.pop(self.key, None)
            if not user_relays:
                del state.by_user[self.user]
        log.info("session=%s user=%s proto=%s client=%s ended: in=%d out=%d closed_by=%s", self.session_id,
                 safe(self.user), self.protocol, self.client_ip, stats.bytes_in, stats.bytes_out,
                 stats.closed_by or "backend")


class LoginHold:
    """A login on its way to Dovecot, holding its user against moves (`MoveExecutor.begin_delivery`)."""

    __slots__ = ()

    def abort_delivery(self, reason: str) -> bool:
        return False  # a login cannot be aborted half-way; it ends within the Dovecot login timeout


def _referred(state: BackendState, session_id: str, user: str, host: str, reason: str) -> hop.Referral:
    state.referrals += 1
    log.info("session=%s user=%s referred to %s: %s", session_id, safe(user), host, safe(reason))
    return hop.Referral(host, reason)


@dataclass(frozen=True)
class Admitted:
    """This backend serves the login: `hold` holds its user against moves until the caller
    releases it (`MoveExecutor.end_delivery`) once the session exists in Dovecot."""

    group: object
    hold: LoginHold


async def admit(state: BackendState, user: str, session_id: str) -> Admitted | hop.Referral | hop.Failure:
    """The ownership check of every login (hop and direct path): fresh GeoDB data, pending moves
    first, then the move fence (moves.md)."""
    decision, group, record = await state.ownership_and_user(user)
    if state.moves is not None:  # a pending group or user move runs first (backend/moves.py)
        decision, group = await state.moves.on_access(user, decision, group, record=record)
    if isinstance(decision, Refer):
        return _referred(state, session_id, user, decision.host, decision.reason)
    if not isinstance(decision, Own):
        log.warning("session=%s user=%s not served here: %s", session_id, safe(user), decision.reason)
        return hop.Failure("unavailable", decision.reason)
    hold = LoginHold()
    # Held like an LMTP recipient (moves.md): a move either sees this login (and waits for it
    # before the user or the group counts as moved) or this login sees the move.
    moved_to = state.moves.begin_delivery(user, group, hold) if state.moves is not None else None
    if moved_to is not None:
        return _referred(state, session_id, user, moved_to, "user moved")
    return Admitted(group, hold)


async def _serve_guarded(state: BackendState, request: hop.HopRequest, run: DovecotRun | None = None
                         ) -> tuple[hop.HopReply, Link | None]:
    """`_serve` inside the login's boundary: a GeoDB or LocalDB that fails becomes `FAIL temp` (the
    proxy tells its client to retry later and does not count it against this backend's health);
    a bug becomes `FAIL internal`. Either is logged once."""
    try:
        return await _serve(state, request, run)
    except Exception as exc:
        log_failure(log, f"session={request.session_id} user={safe(request.user)} proto={request.protocol} hop", exc)
        if is_store_error(exc):
            return hop.Failure("temp", "cluster state temporarily unavailable"), None
        return hop.Failure("internal", "internal error"), None


DovecotRun = Callable[[], Awaitable[tuple[hop.HopReply, Link | None]]]
"""What a doveadm hop does with Dovecot once the user is owned here (instead of a login)."""


async def _serve(state: BackendState, request: hop.HopRequest, run: DovecotRun | None = None
                 ) -> tuple[hop.HopReply, Link | None]:
    if request.protocol not in FLAVOURS and run is None:
        return hop.Failure("protocol", f"protocol {request.protocol} is not served yet"), None
    # Dovecot's connect and greeting overlap the ownership check instead of following it.
    dovecot = None if run is not None else asyncio.ensure_future(connect(state.dovecot, request.protocol))
    try:
        if dovecot is not None:
            await asyncio.sleep(0)  # the check's reads may run inline, never yielding: the connect goes first
        admitted = await admit(state, request.user, request.session_id)
    except BaseException:
        _discard(dovecot)
        raise
    if not isinstance(admitted, Admitted):
        _discard(dovecot)
        return admitted, None
    moves, group = state.moves, admitted.group
    try:
        reply, link = await (run() if dovecot is None else _login(state, request, dovecot))
        moved_to = moves.moved_during_login(request.user, group) if moves and link else None
    finally:
        if moves is not None:
            moves.end_delivery(admitted.hold)  # the caller registers the relay before the loop switches
    if link is not None and moved_to is not None:  # the move reached this user while it logged in
        link.close()
        return _referred(state, request.session_id, request.user, moved_to, "user moved"), None
    log.info("session=%s user=%s proto=%s client=%s:%d login %s", request.session_id, safe(request.user),
             request.protocol, request.client[0], request.client[1],
             "ok" if link is not None else safe(getattr(reply, "text", "failed")))
    return reply, link


async def _login(state: BackendState, request: hop.HopRequest, dovecot: asyncio.Future[Link | hop.Failure]
                 ) -> tuple[hop.HopReply, Link | None]:
    link = await dovecot
    if isinstance(link, hop.Failure):
        return link, None
    return await login_over(link, state.dovecot, request)


def _discard(dovecot: asyncio.Future[Link | hop.Failure] | None) -> None:
    """Close a Dovecot connection the login will not use (or stop it being made): nothing was sent on it."""
    if dovecot is None:
        return
    if not dovecot.done():
        dovecot.cancel()
    elif not dovecot.cancelled() and dovecot.exception() is None and isinstance(link := dovecot.result(), Link):
        link.close()


def _clock() -> Callable[[], float]:
    """Wall time, shifted by $PALOMAR_BACKEND_CLOCK_OFFSET seconds (tests of the one-hour straggler
    window; never set in production). Only moves and straggler redirects use it, not the hop."""
    offset = float(os.environ.get("PALOMAR_BACKEND_CLOCK_OFFSET") or 0)
    return (lambda: time.time() + offset) if offset else time.time


async def stats_loop(state: BackendState, interval: float) -> None:
    """`write_stats` every `interval` seconds (`cluster_backend_stats_interval`), while the service runs."""
    while True:
        try:
            await state.write_stats()
        except GeoDBUnavailable as exc:  # the outage itself is logged once, by the guarded engine
            log.debug("writing backend_stats waits for the GeoDB: %s", exc)
        except Exception as exc:  # keep serving
            log.warning("writing backend_stats failed: %s", exc)
        await asyncio.sleep(interval)


def hop_metrics(state: BackendState, registry: Registry) -> None:
    """The hop outcomes BackendState counts (also written to backend_stats), on the backend's /metrics."""
    hops = registry.counter("backend_hops", "Hops from proxies: login (relayed to Dovecot), referral, refused",
                            ("result",))
    sessions = registry.gauge("backend_sessions", "Sessions relayed to the local Dovecot now")

    def collect() -> None:
        hops.set_total(state.logins, result="login")
        hops.set_total(state.referrals, result="referral")
        hops.set_total(state.refused, result="refused")
        sessions.set(len(state.active))

    registry.on_collect(collect)


async def run_backend(cfg, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT."""
    from palomar.net.server import AcceptLoop, listen_socket
    from palomar.service_runtime import geodb_available_gauge, open_geodb, open_localdb, wait_for_stop_signal

    secret = cfg["cluster_hop_secret"]
    if not secret:
        raise RuntimeError("cluster_hop_secret is not set")
    dovecot = DovecotEndpoint(
        host=cfg["cluster_backend_dovecot_host"],
        ports={proto: cfg[f"cluster_backend_dovecot_{proto}_port"]
               for proto in ("imap", "pop3", "lmtp", "submission", "sieve")}
        | {"doveadm": cfg.doveadm_tcp_port, "doveadm-http": cfg["cluster_backend_dovecot_doveadm_http_port"]},
        master_user=cfg["cluster_backend_dovecot_master_user"],
        master_password=cfg["cluster_backend_dovecot_master_password"],
        doveadm_password=cfg["doveadm_password"],
    )
    registry = Registry(dovecot_prefix=cfg["metrics_prefix"])
    on_geodb = geodb_available_gauge(registry, "backend decides from its last reads or answers a temporary failure")
    state = BackendState(
        geodb=await open_geodb(cfg, on_change=on_geodb), localdb=open_localdb(cfg), name=cfg["cluster_backend_name"],
        site_name=cfg["cluster_local_site"], secret=secret.encode(), dovecot=dovecot,
        test_username=cfg["cluster_backend_test_username"] or None,
        tls=hop_server_context(cfg),
        recipient_delimiter=cfg["recipient_delimiter"], group_count=cfg["cluster_default_group_count"],
        clock=_clock(), stale_max=cfg["cluster_geodb_stale_max"],
    )
    await state.register()
    state.moves = executor = executor_from_config(state, cfg, registry)
    executor.start()
    doveadm = executor.doveadm
    state.load = LoadSampler(None if doveadm is None else lambda: doveadm_session_count(doveadm.call("who", {})))
    hop_metrics(state, registry)
    metrics_servers = await serve_stats(cfg, registry)
    loops = []
    for address in cfg["listen"]:
        host = "0.0.0.0" if address == "*" else address
        sock = listen_socket(host, cfg["cluster_hop_port"])
        loop = AcceptLoop(sock, lambda s: handle_hop(state, s))
        loop.start()
        loops.append(loop)
        log.info("backend %s accepting hops on %s:%d (%s)", state.name, host, cfg["cluster_hop_port"],
                 "TLS" if state.tls else "plaintext: cluster_hop_ssl = no")
    login_check = None
    if cfg["cluster_backend_path"] == "direct":  # proxies log in to Dovecot; Dovecot asks us (login_check.py)
        login_check = await start_login_check(state, Path(cfg["cluster_backend_login_check_socket"]))
    stats = asyncio.get_running_loop().create_task(
        stats_loop(state, float(cfg["cluster_backend_stats_interval"])))
    upkeep = asyncio.get_running_loop().create_task(prune_loop(state))
    stalls = asyncio.get_running_loop().create_task(_watch_stalls(state))
    if ready is not None:
        ready.set()
    try:
        await wait_for_stop_signal()
        await drain_service(loops, state.drain, state.active.values())
    finally:
        stats.cancel()
        upkeep.cancel()
        stalls.cancel()
        for server in metrics_servers:
            server.close()
        if login_check is not None:
            login_check.close()
        await executor.stop()
        for accept_loop in loops:
            await accept_loop.close()
        for relay in list(state.active.values()):
            relay.close(by="proxy")
        await state.geodb.close()
        log.info("backend stopped")
