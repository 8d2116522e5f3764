"""One client session on the proxy, for every protocol with a login phase (IMAP, POP3,
Submission, ManageSieve): drive the protocol's sans-IO core, log in through the cluster, relay.

What differs per protocol lives in a small `Adapter` (how to build the core, how to word a
successful login) and in the failure table (`proxy.failures`). The session loop, its exception
boundary, the accounting and the switch to relaying are shared.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Protocol

from palomar.boundary import log_failure
from palomar.logsafe import safe
from palomar.metrics.registry import Counter
from palomar.net.drain import ShuttingDown
from palomar.net.relay import Relay, RelayStats
from palomar.protocols.shutdown import shutdown_line
from palomar.proxy.client_info import note_client_info
from palomar.proxy.failures import WORDING, failure_reason, login_failure
from palomar.proxy.fence import RelayedSessions
from palomar.proxy.frontend import ClientConnection, accept
from palomar.proxy.hop_client import Established
from palomar.proxy.limits import TOO_MANY_AUTH_FAILURES, Admission
from palomar.proxy.login import AuthFailed, LoginAttempt, LoginTally, perform_login
from palomar.proxy.state import ProxyState

log = logging.getLogger("palomar.proxy")
session_log = logging.getLogger("palomar.session")


class Adapter(Protocol):
    """The protocol-specific part of a session."""

    protocol: str
    """The hop protocol name: imap, pop3, submission or sieve."""

    def make_core(self, state: ProxyState, conn: ClientConnection) -> Any: ...

    def is_login(self, event: Any) -> bool: ...

    def is_starttls(self, event: Any) -> bool: ...

    def is_close(self, event: Any) -> bool: ...

    def refused_master(self, event: Any) -> str | None:
        """A response refusing a master-user style login (authzid differs), or None."""

    def success(self, event: Any, core: Any, established: Established) -> bytes:
        """What the client sees when the backend logged it in."""


class SessionEnd:
    """What a relayed session keeps until it ends: the fields of its log line and the metric.

    Everything else of the login phase (the client's Link and ClientConnection, the hop's
    Established with the backend's reply, the protocol core) is dropped at the switch to
    relaying; an IDLE session may live for hours, and thousands of them are open at once.
    """

    __slots__ = ("finished", "admission", "protocol", "session_id", "user", "client_ip", "client_port", "host",
                 "sessions", "relay")

    def __init__(self, finished: Counter, admission: Admission, protocol: str, session_id: str, user: str,
                 client: tuple[str, int], host: str, sessions: RelayedSessions) -> None:
        self.finished = finished
        self.admission = admission
        self.protocol = protocol
        self.session_id = session_id
        self.user = user
        self.client_ip, self.client_port = client
        self.host = host
        self.sessions = sessions
        self.relay: Relay | None = None

    def __call__(self, stats: RelayStats) -> None:
        if self.relay is not None:
            self.sessions.remove(self.host, self.relay)
        self.admission.release()
        closed_by = stats.closed_by or "proxy"
        self.finished.inc(dest_host=self.host, disconnect_side=closed_by)
        now = time.monotonic()
        session_log.info(
            "session=%s proto=%s user=%s client=%s:%d backend=%s in=%d out=%d duration=%.3f idle=%.3f "
            "closed_by=%s", self.session_id, self.protocol, safe(self.user), self.client_ip, self.client_port,
            self.host, stats.bytes_in, stats.bytes_out, now - stats.started, now - stats.last_activity, closed_by,
        )


async def serve(state: ProxyState, sock: socket.socket, *, service: str, adapter: Adapter, haproxy: bool,
                ssl: bool) -> None:
    conn = await accept(state, sock, service=service, haproxy=haproxy, ssl=ssl,
                        bye=lambda farewell: WORDING[adapter.protocol].bye(state.proxy_host, farewell))
    if conn is None:
        return
    tally = LoginTally()
    try:
        await _session(state, conn, adapter, tally)
    except ShuttingDown:
        conn.link.write(shutdown_line(adapter.protocol, state.proxy_host))
        conn.link.close()
    except (ConnectionError, OSError) as exc:
        log.debug("session=%s client connection error: %s", conn.session_id, exc)
        conn.link.abort()
    except Exception as exc:  # the session's boundary: answer, log once, close the transport
        log_failure(log, f"session={conn.session_id} proto={adapter.protocol}", exc)
        conn.link.write(WORDING[adapter.protocol].internal_bye(state.proxy_host))
        conn.link.close()
    finally:
        if not conn.relaying:
            conn.admission.release()
            state.metrics.login_aborted.inc(reason=tally.aborted_reason())


async def _session(state: ProxyState, conn: ClientConnection, adapter: Adapter, tally: LoginTally) -> None:
    """The login phase, until the session relays or ends. Everything the client sent before it
    half-closed is answered: the loop stops at the end of its input, not at its FIN."""
    link = conn.link
    core = adapter.make_core(state, conn)
    link.write(core.greeting())
    deadline = time.monotonic() + state.login_timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            link.write(WORDING[adapter.protocol].timeout_bye(state.proxy_host))
            link.close()
            return
        try:
            async with asyncio.timeout(remaining):
                data = await state.drain.read(link)
        except TimeoutError:
            continue
        if not data:
            link.close()
            return
        events = core.receive(data)
        link.write(core.data_to_send())
        while events:
            event = events.pop(0)
            if adapter.is_close(event):
                link.write(core.data_to_send())
                link.close()
                return
            if adapter.is_starttls(event):
                link.write(core.data_to_send())
                await link.start_tls(state.tls, server_side=True)
                conn.tls = True
                core.tls_started()
            elif adapter.is_login(event):
                more = await _login(state, conn, core, adapter, event, tally)
                if more is None:
                    return
                events.extend(more)
            else:
                note_client_info(state, conn, event)
            link.write(core.data_to_send())


async def _login(state: ProxyState, conn: ClientConnection, core: Any, adapter: Adapter, event: Any,
                 tally: LoginTally) -> list | None:
    """None when the session now relays or was closed; else the events of commands pipelined after the login."""
    refusal = adapter.refused_master(event)
    if refusal is not None:
        tally.record(AuthFailed())
        return core.login_failed(event.tag, refusal)
    attempt = LoginAttempt(
        session_id=conn.session_id, protocol=adapter.protocol, username=event.username, password=event.password,
        mechanism=event.mechanism, client=conn.client, local=conn.local, client_tls=conn.tls,
        client_id=conn.client_id,
    )
    outcome, user = await perform_login(state, attempt)
    tally.record(outcome)
    if isinstance(outcome, Established):
        core.login_succeeded()
        conn.link.write(adapter.success(event, core, outcome))
        backend_transport = outcome.link.transport
        client_transport = conn.link.transport
        assert backend_transport is not None and client_transport is not None
        conn.admission.logged_in()
        conn.relaying = True  # the relay's end releases the admission now
        done = SessionEnd(state.metrics.sessions_finished, conn.admission, adapter.protocol, conn.session_id, user,
                          conn.client, outcome.host, state.sessions)
        relay = done.relay = Relay(client_transport, backend_transport, done,
                                  shutdown_line(adapter.protocol, state.proxy_host))
        state.sessions.add(outcome.host, relay, remote=outcome.remote_site is not None)
        relay.start(client_pending=core.leftover() + conn.link.take_buffer(),
                    server_pending=outcome.leftover + outcome.link.take_buffer(),
                    client_eof=conn.link.eof, server_eof=outcome.link.eof)
        return None
    session_log.info("session=%s proto=%s user=%s client=%s:%d result=%s reason=%s", conn.session_id,
                     adapter.protocol, safe(user), conn.client[0], conn.client[1], type(outcome).__name__,
                     safe(failure_reason(outcome)))
    events = core.login_failed(event.tag, login_failure(adapter.protocol, outcome))
    if isinstance(outcome, AuthFailed):
        conn.auth_failures += 1
        if state.max_auth_failures and conn.auth_failures >= state.max_auth_failures:
            state.metrics.auth_failure_disconnects.inc()
            conn.link.write(core.data_to_send())
            conn.link.write(WORDING[adapter.protocol].bye(state.proxy_host, TOO_MANY_AUTH_FAILURES))
            conn.link.close()
            return None
    return events
