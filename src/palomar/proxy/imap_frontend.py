"""IMAP towards clients: drive the sans-IO login core, log in through the cluster, relay."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from palomar.net.relay import Relay, RelayStats
from palomar.protocols import imap
from palomar.proxy.frontend import ClientConnection, accept
from palomar.proxy.hop_client import Established
from palomar.proxy.login import AuthFailed, LoginAttempt, NoLogin, TempFailed, perform_login
from palomar.proxy.state import ProxyState

log = logging.getLogger("palomar.proxy")
session_log = logging.getLogger("palomar.session")




def log_session(protocol: str, conn: ClientConnection, user: str, host: str, stats: RelayStats) -> None:
    """The one structured line per proxied session."""
    session_log.info(
        "session=%s proto=%s user=%s client=%s:%d backend=%s in=%d out=%d duration=%.3f idle=%.3f closed_by=%s",
        conn.session_id, protocol, user, conn.client[0], conn.client[1], host, stats.bytes_in, stats.bytes_out,
        time.monotonic() - stats.started, time.monotonic() - stats.last_activity, stats.closed_by or "proxy",
    )


async def serve_imap(state: ProxyState, sock: socket.socket, *, haproxy: bool, ssl: bool) -> None:
    conn = await accept(state, sock, haproxy=haproxy, ssl=ssl)
    if conn is None:
        return
    link = conn.link
    core = imap.ImapLoginServer(
        imap.DEFAULT_CAPABILITIES,
        starttls=state.tls is not None and not conn.tls,
        secured=conn.tls,
        allow_cleartext=state.allow_cleartext,
        greeting=state.greeting,
    )
    link.write(core.greeting())
    deadline = time.monotonic() + state.login_timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                link.write(b"* BYE Disconnected for inactivity.\r\n")
                link.close()
                return
            try:
                async with asyncio.timeout(remaining):
                    data = await link.read()
            except TimeoutError:
                continue
            if not data:
                link.close()
                return
            events = core.receive(data)
            link.write(core.data_to_send())
            while events:
                event = events.pop(0)
                if isinstance(event, imap.Close):
                    link.write(core.data_to_send())
                    link.close()
                    return
                if isinstance(event, imap.StartTlsRequest):
                    link.write(core.data_to_send())
                    await link.start_tls(state.tls, server_side=True)
                    conn.tls = True
                    core.tls_started()
                elif isinstance(event, imap.LoginRequest):
                    more = await _login(state, conn, core, event)
                    if more is None:
                        return
                    events.extend(more)
                link.write(core.data_to_send())
    except (ConnectionError, OSError) as exc:
        log.debug("session=%s client connection error: %s", conn.session_id, exc)
        link.abort()


async def _login(state: ProxyState, conn: ClientConnection, core: imap.ImapLoginServer,
                 event: imap.LoginRequest) -> list | None:
    """None when the session now relays; else the events of commands pipelined after the login."""
    if event.is_master_login:
        return core.login_failed(event.tag, "NO [AUTHORIZATIONFAILED] Authorization failed")
    attempt = LoginAttempt(
        session_id=conn.session_id, protocol="imap", username=event.username, password=event.password,
        mechanism=event.mechanism, client=conn.client, local=conn.local, client_tls=conn.tls,
    )
    outcome, user = await perform_login(state, attempt)
    if isinstance(outcome, Established):
        core.login_succeeded()
        conn.link.write(imap.rewrite_tag(outcome.text, event.tag))
        backend_transport = outcome.link.transport
        client_transport = conn.link.transport
        assert backend_transport is not None and client_transport is not None

        def done(stats: RelayStats) -> None:
            state.metrics.sessions_finished.inc(dest_host=outcome.host,
                                                disconnect_side=stats.closed_by or "proxy")
            log_session("imap", conn, user, outcome.host, stats)

        relay = Relay(client_transport, backend_transport, done)
        relay.start(client_pending=core.leftover() + conn.link.take_buffer(),
                    server_pending=outcome.leftover + outcome.link.take_buffer())
        return None
    if isinstance(outcome, AuthFailed):
        reply = imap.AUTH_FAILED
    elif isinstance(outcome, NoLogin):
        reply = f"NO [CONTACTADMIN] {' '.join(outcome.reason.split())}"
    else:
        assert isinstance(outcome, TempFailed)
        reply = "NO [UNAVAILABLE] Account is temporarily unavailable."
    session_log.info("session=%s proto=imap user=%s client=%s:%d result=%s", conn.session_id, user,
                     conn.client[0], conn.client[1], type(outcome).__name__)
    return core.login_failed(event.tag, reply)
