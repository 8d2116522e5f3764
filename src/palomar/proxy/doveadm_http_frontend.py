"""`service doveadm { inet_listener http }` on a proxy: Dovecot's doveadm HTTP API. Each command of a
POST for one user runs on the backend that serves that user now, found as the TCP protocol's
commands find it (`doveadm_frontend.open_hop`); there the backend posts it to its own Dovecot's HTTP
API and Dovecot's answer item comes back unchanged (docs/design/backend-hop.md, "doveadm over the
hop"). One request per connection, as Dovecot serves it."""

from __future__ import annotations

import asyncio
import logging
import socket

from palomar.boundary import is_store_error, log_failure
from palomar.logsafe import safe
from palomar.net.link import Link
from palomar.protocols import doveadm
from palomar.protocols import doveadm_http as api
from palomar.proxy.doveadm_frontend import accept_doveadm, authenticate, open_hop
from palomar.proxy.frontend import ClientConnection
from palomar.proxy.state import ProxyState

log = logging.getLogger("palomar.proxy")

MAX_REPLY = 256 * 1024 * 1024
"""A backend's answer to one command is read whole before it is passed on; bigger is a failure."""


async def serve_doveadm_http(state: ProxyState, sock: socket.socket, *, haproxy: bool, ssl: bool) -> None:
    conn = await accept_doveadm(state, sock, haproxy=haproxy, ssl=ssl)
    if conn is None:
        return
    try:
        conn.link.write(await _request(state, conn))
        await conn.link.drain()
        conn.link.close()
    except (ConnectionError, OSError) as exc:
        log.debug("session=%s proto=doveadm-http client connection error: %s", conn.session_id, exc)
        conn.link.abort()
    except api.HttpError as exc:
        log.info("session=%s proto=doveadm-http client=%s: %s", conn.session_id, conn.client[0], safe(exc))
        conn.link.write(api.error_response(exc))
        conn.link.close()
    except Exception as exc:  # the request's boundary: log once, answer 500, close this client only
        log_failure(log, f"session={conn.session_id} proto=doveadm-http", exc)
        conn.link.write(api.response(500, "Internal Server Error"))
        conn.link.close()
    finally:
        conn.admission.release()


async def _read_request(state: ProxyState, link: Link) -> tuple[api.Head, bytes]:
    buffer = bytearray()
    try:
        async with asyncio.timeout(state.login_timeout):
            while b"\r\n\r\n" not in buffer:
                if len(buffer) > api.MAX_HEAD:
                    raise api.HttpError(431, "Request Header Fields Too Large")
                data = await link.read()
                if not data:
                    raise ConnectionResetError("client closed before its request")
                buffer += data
            end = buffer.index(b"\r\n\r\n")
            head = api.parse_head(bytes(buffer[:end]))
            length = head.body_length if head.method == "POST" else 0
            body = bytearray(buffer[end + 4:])
            if len(body) < length and head.headers.get("expect", "").lower() == "100-continue":
                link.write(api.CONTINUE)  # curl waits for it (1 s) before sending a body over 1 KiB
            while len(body) < length:
                data = await link.read()
                if not data:
                    raise ConnectionResetError("client closed before the end of its request body")
                body += data
    except TimeoutError:
        raise api.HttpError(408, "Request Timeout") from None
    return head, bytes(body[:length])


async def _request(state: ProxyState, conn: ClientConnection) -> bytes:
    head, body = await _read_request(state, conn.link)
    if head.method == "OPTIONS":
        return api.response(200, "OK", headers=api.OPTIONS_HEADERS)
    if (head.method, head.path) not in (("GET", "/"), ("GET", api.PATH), ("POST", api.PATH)):
        raise api.HttpError(404, "Path Not Found")
    password, key = state.doveadm_password, state.doveadm_api_key
    authorization = head.headers.get("authorization")
    if not await authenticate(state, conn, authorization or "",
                              lambda: api.authorized(authorization, password, key),
                              "Invalid authentication attempt to the doveadm HTTP API"):
        return api.response(401, "Authentication required", headers=api.challenges(password, key))
    if head.method == "GET":
        return api.response(200, "OK", api.MOUNTS if head.path == "/" else api.catalogue(), api.JSON_TYPE)
    commands = api.parse_commands(body)
    items = [await _command(state, conn, command) for command in commands]
    return api.response(200, "OK", api.response_body(items), api.JSON_TYPE)


async def _command(state: ProxyState, conn: ClientConnection, command: api.ApiCommand) -> bytes:
    """One command's answer item: the backend Dovecot's, or an error item saying why there is none."""
    target = api.target_user(command)
    if isinstance(target, doveadm.Refused):
        log.info("session=%s proto=doveadm-http client=%s command %s refused: %s", conn.session_id,
                 conn.client[0], safe(command.name), safe(target.text))
        return api.error_item(command.tag, api.EX_USAGE, target.text)
    try:
        outcome = await open_hop(state, conn, target, lambda user: api.HOP_MARKER
                                 + api.with_target(command, user).encode() + b"\n")
        if isinstance(outcome, str):
            reason = outcome
        else:
            item, reason = await _backend_item(outcome.link, outcome.leftover)
            if item is not None:
                log.info("session=%s user=%s proto=doveadm-http client=%s command %s on %s", conn.session_id,
                         safe(target), conn.client[0], safe(command.name), outcome.host)
                return item
    except Exception as exc:
        log_failure(log, f"session={conn.session_id} user={safe(target)} proto=doveadm-http", exc)
        reason = "cluster state temporarily unavailable" if is_store_error(exc) else "internal error"
    log.warning("session=%s user=%s proto=doveadm-http command %s failed: %s", conn.session_id, safe(target),
                safe(command.name), safe(reason))
    return api.error_item(command.tag, api.EX_TEMPFAIL, f"palomar proxy: {reason}")


async def _backend_item(hop: Link, pending: bytes) -> tuple[bytes | None, str]:
    """The backend relays its Dovecot's whole HTTP answer and closes: the item in it, or why not."""
    data = bytearray(pending)
    try:
        while len(data) <= MAX_REPLY:
            chunk = await hop.read()
            if not chunk:
                break
            data += chunk
        else:
            return None, "the backend's answer is too large"
    finally:
        hop.close()
    try:
        status, body = api.parse_response(bytes(data))
    except doveadm.DoveadmProtocolError as exc:
        return None, str(exc)
    item = api.items_of(status, body)
    if item is None:
        return None, f"the backend's Dovecot answered HTTP {status}"
    return item, ""
