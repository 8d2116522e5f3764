"""`service doveadm { inet_listener tcp }` on a proxy: doveadm clients (`doveadm -S proxy:port -u USER
...`) authenticate with doveadm_password, and each command for one user runs on the backend that
serves that user now, found as a login finds it (router, referrals, moves). The backend's answer is
relayed byte for byte (docs/design/backend-hop.md, "doveadm over the hop")."""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
from collections.abc import Callable

from palomar.auth.passdb import AuthRequest
from palomar.boundary import is_store_error, log_failure
from palomar.logsafe import safe
from palomar.net.link import Link
from palomar.net.relay import Relay, RelayStats
from palomar.protocols import doveadm
from palomar.proxy.frontend import ClientConnection, accept, trusted
from palomar.proxy.hop_client import Established, HopTarget
from palomar.proxy.login import route_and_connect
from palomar.proxy.state import ProxyState

log = logging.getLogger("palomar.proxy")

SERVICE = "doveadm"
REFUSED_COMMANDS = {
    "save": "reads the mail from the client's input stream, which palomar does not relay",
}
"""Commands with a second stream besides their output, refused with their reason."""


async def accept_doveadm(state: ProxyState, sock: socket.socket, *, haproxy: bool, ssl: bool
                         ) -> ClientConnection | None:
    """A doveadm client (either protocol): no per-address cap, and no refusal line (Dovecot's
    doveadm has none)."""
    return await accept(state, sock, service=SERVICE, haproxy=haproxy, ssl=ssl, per_address=False,
                        bye=lambda farewell: b"")


async def serve_doveadm(state: ProxyState, sock: socket.socket, *, haproxy: bool, ssl: bool) -> None:
    conn = await accept_doveadm(state, sock, haproxy=haproxy, ssl=ssl)
    if conn is None:
        return
    try:
        await _session(state, conn)
    except (ConnectionError, OSError) as exc:
        log.debug("session=%s proto=doveadm client connection error: %s", conn.session_id, exc)
        conn.link.abort()
    except doveadm.DoveadmProtocolError as exc:
        log.warning("session=%s proto=doveadm client=%s: %s", conn.session_id, conn.client[0], safe(exc))
        conn.link.close()
    except Exception as exc:  # the session's boundary: log once, close this client only
        log_failure(log, f"session={conn.session_id} proto=doveadm", exc)
        conn.link.close()
    finally:
        conn.admission.release()


async def _session(state: ProxyState, conn: ClientConnection) -> None:
    link, core = conn.link, doveadm.ServerConnection(tls=conn.tls)
    version_line = b""
    while True:
        data = await link.read()
        if not data:
            return
        events = core.receive(data)
        while events:  # a pipelining client: what follows an event waits in the core until it is handled
            for event in events:
                if isinstance(event, doveadm.Version):
                    version_line = doveadm.VERSION_PREFIX + str(event.minor).encode() + b"\n"
                elif isinstance(event, doveadm.StartTls):
                    link.write(core.data_to_send())
                    if not await _start_tls(state, conn):
                        return
                elif isinstance(event, doveadm.Credentials):
                    if not await _authenticate(state, conn, event.password):
                        core.reject()
                        link.write(core.data_to_send())
                        link.close()
                        return
                    core.accept()
                else:
                    link.write(core.data_to_send())
                    assert core.minor is not None
                    if await _command(state, conn, core, version_line, event):
                        return  # dsync ran to its end
            link.write(core.data_to_send())
            events = core.receive(b"")


async def _start_tls(state: ProxyState, conn: ClientConnection) -> bool:
    """STARTTLS: no reply, both sides start TLS (Dovecot's client-connection-tcp.c); without TLS
    configured (ssl = no) the connection closes, as Dovecot's does when its SSL init fails."""
    if state.tls is None:
        log.warning("session=%s proto=doveadm client=%s: STARTTLS refused: TLS is not configured (ssl = no)",
                    conn.session_id, conn.client[0])
        conn.link.close()
        return False
    try:
        async with asyncio.timeout(state.login_timeout):
            await conn.link.start_tls(state.tls, server_side=True)
    except (OSError, TimeoutError, ConnectionError) as exc:
        log.info("session=%s proto=doveadm client=%s: STARTTLS handshake failed: %s", conn.session_id,
                 conn.client[0], safe(exc or type(exc).__name__))
        conn.link.abort()
        return False
    conn.tls = True
    return True


async def _authenticate(state: ProxyState, conn: ClientConnection, password: str) -> bool:
    expected = state.doveadm_password.encode()
    return await authenticate(state, conn, password, lambda: bool(expected) and hmac.compare_digest(
        password.encode("utf-8", "surrogateescape"), expected), "doveadm client authenticated with wrong password")


async def authenticate(state: ProxyState, conn: ClientConnection, credential: str, check: Callable[[], bool],
                       refusal: str) -> bool:
    """`check()` with the auth penalty of logins (per source address) and auth_failure_delay around it;
    a failure is logged as `refusal` (never with `credential`, which only feeds the penalty's checksum)."""
    address = conn.client[0]
    penalised = state.penalty.enabled and not trusted(address, state.login_trusted)
    verdict = await state.penalty.before_check(address, doveadm.USERNAME.decode()) if penalised else None
    if verdict is not None and verdict.wait:
        state.metrics.auth_penalty_delayed.inc()
        state.metrics.auth_penalty_seconds.inc(verdict.wait)
        await asyncio.sleep(verdict.wait)  # deliberate: the escalating penalty of this source
    if check():
        if penalised:
            await state.penalty.succeeded(address, doveadm.USERNAME.decode())
        state.metrics.auth_successes.inc()
        return True
    if verdict is not None:
        await state.penalty.failed(verdict, address, doveadm.USERNAME.decode(), credential)
    state.metrics.auth_failures.inc()
    log.warning("session=%s proto=doveadm client=%s: %s", conn.session_id, address, refusal)
    await asyncio.sleep(state.auth_failure_delay)  # deliberate: slows password guessing
    return False


async def _command(state: ProxyState, conn: ClientConnection, core: doveadm.ServerConnection,
                   version_line: bytes, command: doveadm.Command) -> bool:
    """Run one command on its user's backend and relay the reply; refusals and failures are
    answered as Dovecot answers a failed command (a remote error line, then `-CODE`). True when
    the command was dsync-server and the connection has carried its dsync session to the end."""
    link, minor = conn.link, core.minor or 0
    command = doveadm.user_file_as_all_users(command)
    target = doveadm.target_user(command)
    if command.name in REFUSED_COMMANDS:
        target = doveadm.Refused(f"{command.name}: not supported through a palomar proxy: "
                                 f"{REFUSED_COMMANDS[command.name]}")
    if isinstance(target, doveadm.Refused):
        log.info("session=%s proto=doveadm client=%s command %s refused: %s", conn.session_id, conn.client[0],
                 safe(command.name), safe(target.text))
        link.write(doveadm.failure_reply(minor, target.code, target.text))
        return False
    try:
        outcome = await _open(state, conn, version_line, command, target)
    except Exception as exc:
        log_failure(log, f"session={conn.session_id} user={safe(target)} proto=doveadm", exc)
        reason = "cluster state temporarily unavailable" if is_store_error(exc) else "internal error"
        outcome = reason
    if isinstance(outcome, str):
        log.warning("session=%s user=%s proto=doveadm command %s failed: %s", conn.session_id, safe(target),
                    safe(command.name), safe(outcome))
        link.write(doveadm.failure_reply(minor, "TEMPFAIL", f"palomar proxy: {outcome}"))
        return False
    dsync = command.name == doveadm.DSYNC_SERVER
    status = await _relay_reply(link, outcome.link, outcome.leftover, minor, keep_open=dsync)
    log.info("session=%s user=%s proto=doveadm client=%s command %s on %s: %s", conn.session_id, safe(target),
             conn.client[0], safe(command.name), outcome.host, safe(status))
    if not dsync:
        return False
    if status != "+":
        outcome.link.close()
        return False
    stats = await _relay_stream(conn, core, outcome.link)
    log.info("session=%s user=%s proto=doveadm dsync on %s ended: in=%d out=%d closed_by=%s", conn.session_id,
             safe(target), outcome.host, stats.bytes_in, stats.bytes_out, stats.closed_by or "backend")
    return True


async def _relay_stream(conn: ClientConnection, core: doveadm.ServerConnection, hop: Link) -> RelayStats:
    """dsync after dsync-server's `+`: both directions relayed as bytes until the session ends."""
    finished: asyncio.Future[RelayStats] = asyncio.get_running_loop().create_future()
    client_transport, hop_transport = conn.link.transport, hop.transport
    assert client_transport is not None and hop_transport is not None
    relay = Relay(client_transport, hop_transport, lambda stats: finished.done() or finished.set_result(stats))
    relay.start(client_pending=core.take_buffer() + conn.link.take_buffer(), server_pending=hop.take_buffer(),
                client_eof=conn.link.eof, server_eof=hop.eof)
    return await finished


async def _open(state: ProxyState, conn: ClientConnection, version_line: bytes, command: doveadm.Command,
                name: str) -> Established | str:
    return await open_hop(state, conn, name, lambda user: version_line + doveadm.with_target(command, user).raw)


async def open_hop(state: ProxyState, conn: ClientConnection, name: str, payload: Callable[[str], bytes]
                   ) -> Established | str:
    """The hop to `name`'s backend with `payload(user)` sent after the header, `user` being the
    passdb's name for `name`; or why there is none."""
    found = await state.passdb.lookup(name, AuthRequest(name, service=SERVICE, remote_ip=conn.client[0],
                                                         local_ip=conn.local[0]))
    if found.status == "tempfail":
        return "passdb lookup failed temporarily"
    # Dovecot's doveadm proxying: a user the passdb does not know still runs (its backend's userdb decides)
    user = found.user if found.status in ("ok", "nologin") else name
    target = HopTarget(user=user, protocol=SERVICE, session_id=conn.session_id, client=conn.client,
                       local=conn.local, client_tls=conn.tls, payload=payload(user))
    outcome = await route_and_connect(state, target, found.fields.get("host") if found.status == "ok" else None)
    if isinstance(outcome, Established):
        return outcome
    return getattr(outcome, "text", None) or outcome.reason


async def _relay_reply(client: Link, hop: Link, pending: bytes, minor: int, *, keep_open: bool = False) -> str:
    """Copy the backend's reply to the client until its status line; the reply's status, for the log.
    With `keep_open` (dsync-server) what follows the status line goes to the client too, and the hop
    stays open for the stream."""
    tracker = doveadm.ReplyTracker(minor, stream_follows=keep_open)
    try:
        data = pending
        while True:
            if data:
                used = tracker.feed(data)
                client.write(data if used is None or keep_open else data[:used])
                await client.drain()
                if used is not None:
                    return (tracker.status or b"").decode("ascii", "replace")
            data = await hop.read()
            if not data:
                if tracker.started:  # part of the reply is out: the client sees the connection end
                    client.close()
                else:
                    client.write(doveadm.failure_reply(minor, "TEMPFAIL", "palomar proxy: the backend closed "
                                                                           "the connection without a reply"))
                keep_open = False
                return "backend closed the hop before the end of the reply"
    finally:
        if not keep_open:
            hop.close()
