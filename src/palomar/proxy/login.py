"""The protocol-neutral part of a login on the proxy: authenticate, route, hop, account.

Each protocol front end (IMAP now; POP3, Submission, ManageSieve later) turns its own
commands into a `LoginAttempt` and its outcome back into protocol replies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

from palomar.auth.passdb import AuthRequest
from palomar.boundary import is_store_error, log_failure
from palomar.cluster.model import Site
from palomar.logsafe import safe
from palomar.proxy.frontend import trusted
from palomar.proxy.hop_client import Established, HopFailed, HopTarget
from palomar.proxy.state import ProxyState

log = logging.getLogger("palomar.proxy")


@dataclass(frozen=True)
class LoginAttempt:
    session_id: str
    protocol: str
    username: str
    password: str
    mechanism: str
    client: tuple[str, int]
    local: tuple[str, int]
    client_tls: bool
    client_id: tuple[tuple[str, str | None], ...] = ()

    def __repr__(self) -> str:  # never show the password
        return f"LoginAttempt(session={self.session_id}, user={self.username!r}, protocol={self.protocol})"


@dataclass(frozen=True)
class AuthFailed:
    """Wrong credentials (after the failure delay); `reason` is for the session's log line only."""

    reason: str = "authentication failed"


@dataclass(frozen=True)
class NoLogin:
    reason: str


@dataclass(frozen=True)
class TempFailed:
    """Nothing the user did wrong: retry later. `error_code` is Dovecot's code for the log and metrics."""

    error_code: str
    text: str


LoginOutcome = Established | AuthFailed | NoLogin | TempFailed


@dataclass
class LoginTally:
    """What one client connection's logins came to, for Dovecot's `login_aborted` event."""

    attempts: int = 0
    last: LoginOutcome | None = None

    def record(self, outcome: LoginOutcome) -> None:
        self.attempts += 1
        self.last = outcome

    def aborted_reason(self) -> str:
        """The `reason` Dovecot's login_aborted event gives (login-common, client_get_extra_disconnect_reason)."""
        last = self.last
        if self.attempts == 0 or last is None:
            return "no_auth_attempts"
        if isinstance(last, NoLogin):
            return "login_disabled"
        if isinstance(last, TempFailed):
            return last.error_code if last.error_code.startswith("proxy_dest_") else "auth_temp_failed"
        return "auth_failed"


async def perform_login(state: ProxyState, attempt: LoginAttempt) -> tuple[LoginOutcome, str]:
    """Run one login to its end. Returns the outcome and the user name after passdb renames.

    The login's exception boundary: whatever fails on the way (the GeoDB or LocalDB while
    routing, a bug) is logged once and becomes a temporary failure the client may retry; the
    session and the listener go on."""
    try:
        return await _login(state, attempt)
    except Exception as exc:
        log_failure(log, f"session={attempt.session_id} user={safe(attempt.username)} proto={attempt.protocol} login",
                    exc)
        if is_store_error(exc):
            return TempFailed("store_unavailable", "cluster state temporarily unavailable"), attempt.username
        return TempFailed("internal_failure", "internal error"), attempt.username


def penalty_name(passdb: object, username: str) -> str:
    """The name a user's penalty is kept under: the name after `auth_username_format` (and
    `auth_username_chars`), as Dovecot's auth process uses it, so `Alice@Example` and `alice@example`
    (or, with `%Ln`, every domain of alice) share one record; a name the passdb refuses keeps its
    lower-cased self."""
    normalize = getattr(passdb, "normalize_username", None)
    return (normalize(username) if normalize is not None else None) or username.lower()


async def _login(state: ProxyState, attempt: LoginAttempt) -> tuple[LoginOutcome, str]:
    request = AuthRequest(
        username=attempt.username, password=attempt.password, service=attempt.protocol,
        remote_ip=attempt.client[0], local_ip=attempt.local[0], secured=attempt.client_tls,
        mechanism=attempt.mechanism,
    )
    penalised = state.penalty.enabled and not trusted(attempt.client[0], state.login_trusted)
    penalty_user = penalty_name(state.passdb, attempt.username)
    verdict = await state.penalty.before_check(attempt.client[0], penalty_user) if penalised else None
    if verdict is not None and verdict.wait:
        state.metrics.auth_penalty_delayed.inc()
        state.metrics.auth_penalty_seconds.inc(verdict.wait)
        await asyncio.sleep(verdict.wait)  # deliberate: the escalating penalty of this source
    result = await state.passdb.authenticate(request)
    if result.status in ("failed", "unknown_user"):
        if verdict is not None:
            await state.penalty.failed(verdict, attempt.client[0], penalty_user, attempt.password)
        state.metrics.auth_failures.inc()
        await asyncio.sleep(state.auth_failure_delay)  # deliberate: slows password guessing
        return AuthFailed(result.reason or result.status.replace("_", " ")), attempt.username
    if penalised and result.status in ("ok", "nologin"):
        await state.penalty.succeeded(attempt.client[0], penalty_user)
    if result.status == "nologin":
        await asyncio.sleep(state.auth_failure_delay)
        return NoLogin(result.reason or "Login disabled."), result.user
    if result.status != "ok":
        return TempFailed("temp_fail", "authentication service temporarily failed"), attempt.username
    user = result.user
    state.metrics.auth_successes.inc()
    return await _hop(state, attempt, user, result.fields.get("host"))


async def _hop(state: ProxyState, attempt: LoginAttempt, user: str, host_override: str | None
               ) -> tuple[LoginOutcome, str]:
    """Route and connect; when the backend fails and is (now) offline, re-route this login once."""
    target = HopTarget(
        user=user, protocol=attempt.protocol, session_id=attempt.session_id, client=attempt.client,
        local=attempt.local, client_tls=attempt.client_tls, client_id=attempt.client_id,
    )
    return await route_and_connect(state, target, host_override), user


async def route_and_connect(state: ProxyState, target: HopTarget, host_override: str | None
                            ) -> Established | AuthFailed | TempFailed:
    """Route `target.user` and open its hop (logins and doveadm commands alike); when the backend
    fails and is (now) offline, route once more."""
    user = target.user
    failed: TempFailed | None = None
    failed_host: str | None = None
    for _ in range(2):
        route = await state.router.route(user, host_override=host_override)
        if route.site is not None:
            return await connect_other_site(state, target, route.site)
        if route.host is None:
            return TempFailed("proxy_dest_unavailable", route.reason)
        if failed is not None and route.host == failed_host:
            break
        started = time.monotonic()
        outcome = await state.hops.connect(route.host, target, on_redirect=state.count_redirect)
        if not isinstance(outcome, HopFailed):
            state.count_success(outcome.host)
            if state.health is not None:
                state.health.session_succeeded(outcome.host)
            log.debug("session=%s user=%s established to %s in %.3fs", target.session_id, safe(user), outcome.host,
                      time.monotonic() - started)
            return outcome
        state.count_failure(outcome.host, outcome.error_code)
        if outcome.auth:
            return AuthFailed(f"backend {outcome.host}: {outcome.text}")
        log.warning("session=%s user=%s proxy dest %s to %s: %s", target.session_id, safe(user),
                    outcome.error_code, outcome.host, safe(outcome.text))
        failed, failed_host = TempFailed(outcome.error_code, outcome.text), outcome.host
        if state.health is None or not await state.health.session_failed(outcome.host, outcome.error_code):
            break
        log.info("session=%s user=%s backend %s is offline, routing again", target.session_id, safe(user),
                 outcome.host)
    assert failed is not None
    return failed


async def connect_other_site(state: ProxyState, target: HopTarget, site: Site) -> Established | AuthFailed | TempFailed:
    """Relay the login to `site`'s load balancer, where one of its proxies routes it (proxy/site_hop.py)."""
    if not site.load_balancer:
        return TempFailed("proxy_dest_unavailable", f"user is served in site {site.name}, which has no load balancer")
    remote = replace(target, via_sites=(*target.via_sites, str(state.site_id)) if state.site_id else target.via_sites)
    outcome = await state.hops.connect(site.load_balancer, remote, on_redirect=state.count_redirect)
    if isinstance(outcome, HopFailed):
        log.warning("session=%s user=%s site %s (%s): %s %s", target.session_id, safe(target.user), site.name,
                    site.load_balancer, outcome.error_code, safe(outcome.text))
        if outcome.auth:
            return AuthFailed(f"site {site.name}: {outcome.text}")
        return TempFailed(outcome.error_code, outcome.text)
    log.debug("session=%s user=%s relayed to site %s", target.session_id, safe(target.user), site.name)
    return replace(outcome, remote_site=site.name)
