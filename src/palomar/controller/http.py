"""The controller's HTTP side: one aiohttp application serving the REST API and the web UI.

Every request is authenticated before a handler runs (`/login` and `/static/` excepted): the API
by an Authorization header, the UI by its session cookie. Handlers raise the verbs' own errors;
one middleware turns them into a clean 4xx/5xx (JSON for the API, a page for the UI), so bad
input never produces a traceback and the controller keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from palomar.auth.penalty import AuthPenalty, PenaltyPolicy, current_level, source_key
from palomar.cli.cluster_context import CommandError
from palomar.cluster.validation import ValidationError
from palomar.controller.events import event_line
from palomar.controller.history import History
from palomar.controller.http_auth import (
    Credentials,
    Presented,
    Principal,
    Session,
    Sessions,
    parse_authorization,
)
from palomar.geodb.engine import GeoDBError
from palomar.geodb.repository import GeoDB
from palomar.logsafe import safe

log = logging.getLogger("palomar.controller.http")

MAX_BODY = 64 * 1024
SESSION_COOKIE = "palomar_session"
PENALTY_SOURCES = 10000
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BadRequest(Exception):
    """The request itself is malformed (bad JSON, a missing field): 400."""


class Forbidden(Exception):
    """Authenticated, but the role does not allow this: 403."""


@dataclass
class HttpContext:
    """What the handlers share: GeoDB access, credentials, sessions, the controller's memory."""

    open_db: Callable[[], Awaitable[GeoDB]]
    credentials: Credentials
    sessions: Sessions
    penalty: AuthPenalty
    history: History
    site_name: str
    group_count: int
    secure_cookies: bool
    db: GeoDB | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def run(self, action: Callable[[GeoDB], Awaitable[Any]]) -> Any:
        """One verb against the GeoDB; after a store failure the connection is reopened next time."""
        async with self._lock:
            if self.db is None:
                self.db = await self.open_db()
        try:
            return await action(self.db)
        except (GeoDBError, sqlite3.Error, OSError):
            db, self.db = self.db, None
            with contextlib.suppress(Exception):
                await db.close()
            raise

    async def close(self) -> None:
        db, self.db = self.db, None
        if db is not None:
            with contextlib.suppress(Exception):
                await db.close()

    async def authenticate(self, request: web.Request, presented: Presented) -> Principal | None:
        """Check credentials after the source's penalty wait; failures are logged without secrets."""
        address = request.remote or "unknown"
        now = time.time()
        verdict = self.penalty.before_check(address, presented.user, now)
        if verdict.wait > 0:
            await asyncio.sleep(verdict.wait)
        # password hashes such as SHA512-CRYPT cost milliseconds: kept off the event loop
        principal = (self.credentials.check(presented) if presented.kind == "bearer"
                     else await asyncio.to_thread(self.credentials.check, presented))
        if principal is None:
            now = time.time()
            self.penalty.failed(verdict, address, presented.user, presented.secret, now)
            level = current_level(self.penalty.sources.get(source_key(address), now), now, self.penalty.policy)
            log.warning("%s", event_line("controller_http_auth_failed", remote=address, method=presented.kind,
                                         user=safe(presented.user) if presented.user else None,
                                         path=safe(request.path), penalty_level=level))
            return None
        self.penalty.succeeded(address, presented.user)
        return principal


CTX: web.AppKey[HttpContext] = web.AppKey("palomar_http", HttpContext)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("palomar_principal", Principal)
SESSION: web.RequestKey[Session] = web.RequestKey("palomar_session", Session)


def is_api(request: web.Request) -> bool:
    return request.path == "/api/v1" or request.path.startswith("/api/v1/")


def json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status, headers=headers)


def _status_of(exc: Exception) -> int:
    if isinstance(exc, BadRequest | ValidationError):
        return 400
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, CommandError):
        text = str(exc)
        if "does not exist" in text:
            return 404
        return 409 if "already" in text else 400
    return 503


@web.middleware
async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    """The verbs' errors as clean responses; anything unexpected is a logged 500, never a traceback."""
    from palomar.controller import web_ui

    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if is_api(request) and exc.status >= 400:
            return json_error(exc.status, exc.reason)
        raise
    except (BadRequest, Forbidden, CommandError, ValidationError, GeoDBError, sqlite3.Error, OSError) as exc:
        status = _status_of(exc)
        message = str(exc) if status < 500 else "the GeoDB is not available now; try again"
        if status >= 500:
            log.warning("%s", event_line("controller_http_geodb_error", path=safe(request.path),
                                         error=f"{type(exc).__name__}: {safe(str(exc))}"))
        if is_api(request):
            return json_error(status, message)
        return web_ui.error_page(request, status, message)
    except Exception as exc:  # a bug: log it, answer 500, keep serving
        log.exception("%s", event_line("controller_http_error", path=safe(request.path),
                                       error=type(exc).__name__))
        if is_api(request):
            return json_error(500, "internal error")
        return web.Response(status=500, text="internal error\n")
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


PUBLIC_PREFIXES = ("/login", "/static/")


@web.middleware
async def authenticate(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """API: an Authorization header on every request (401 otherwise). UI: the session cookie."""
    ctx = request.app[CTX]
    if is_api(request):
        transport = request.transport
        principal = ctx.credentials.by_certificate(transport.get_extra_info("peercert") if transport else None)
        presented = parse_authorization(request.headers.get("Authorization"))
        if principal is None and presented is not None:
            principal = await ctx.authenticate(request, presented)
        if principal is None:
            return json_error(401, "authentication required (Bearer token or Basic)",
                              **{"WWW-Authenticate": 'Bearer realm="palomar", Basic realm="palomar"'})
        request[PRINCIPAL] = principal
        return await handler(request)
    if request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    session = ctx.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise web.HTTPSeeOther("/login")
    request[PRINCIPAL] = session.principal
    request[SESSION] = session
    return await handler(request)


def require_admin(request: web.Request) -> Principal:
    principal = request[PRINCIPAL]
    if not principal.admin:
        raise Forbidden("this needs the admin role")
    return principal


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or BadRequest."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def build_app(ctx: HttpContext) -> web.Application:
    from palomar.controller import api, web_ui

    app = web.Application(middlewares=[errors, authenticate], client_max_size=MAX_BODY)
    app[CTX] = ctx
    api.add_routes(app)
    web_ui.add_routes(app)
    return app


def parse_listen(text: str) -> list[tuple[str, int]]:
    """`controller_http_listen`: `host:port` or `[v6]:port`, space-separated; ValueError naming the bad one."""
    out = []
    for item in text.split():
        host, sep, port = item.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"controller_http_listen: {item!r} is not address:port")
        out.append((host, int(port)))
    return out


def tls_context(cfg: Any) -> ssl.SSLContext | None:
    cert, key = cfg["controller_http_ssl_cert_file"], cfg["controller_http_ssl_key_file"]
    if not cert and not key:
        if cfg["controller_http_ssl_client_ca_file"]:
            raise RuntimeError("controller_http_ssl_client_ca_file needs controller_http_ssl_cert_file (HTTPS)")
        return None
    if not cert or not key:
        raise RuntimeError("controller_http_ssl_cert_file and controller_http_ssl_key_file go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise RuntimeError(f"controller_http_ssl_cert_file {cert}: {exc}") from None
    client_ca = cfg["controller_http_ssl_client_ca_file"]
    if client_ca:
        # optional: browsers and token clients connect without a certificate
        context.verify_mode = ssl.CERT_OPTIONAL
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise RuntimeError(f"controller_http_ssl_client_ca_file {client_ca}: {exc}") from None
    return context


async def serve_http(cfg: Any, history: History, open_db: Callable[[], Awaitable[GeoDB]]
                     ) -> tuple[web.AppRunner, HttpContext] | None:
    """Start the API and UI on `controller_http_listen`; None when it is empty."""
    from palomar.controller.http_auth import CredentialsError

    listen = parse_listen(str(cfg["controller_http_listen"] or ""))
    if not listen:
        return None
    try:
        credentials = Credentials.from_config(cfg)
    except CredentialsError as exc:
        raise RuntimeError(str(exc)) from None
    tls = tls_context(cfg)
    ctx = HttpContext(
        open_db=open_db, credentials=credentials,
        sessions=Sessions(float(cfg["controller_http_session_lifetime"])),
        penalty=AuthPenalty(PenaltyPolicy(float(cfg["controller_http_auth_max_delay"])),
                            max_entries=PENALTY_SOURCES, per_user=False),
        history=history, site_name=str(cfg["cluster_local_site"]),
        group_count=int(cfg["cluster_default_group_count"]), secure_cookies=tls is not None,
    )
    runner = web.AppRunner(build_app(ctx), access_log=None, handle_signals=False)
    await runner.setup()
    for host, port in listen:
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
        shown = f"[{host}]" if ":" in host else host
        log.info("%s", event_line("controller_http_listening",
                                  url=f"{'https' if tls else 'http'}://{shown}:{port}/"))
    return runner, ctx
