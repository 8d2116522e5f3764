"""The controller's web UI: server-rendered pages over the same functions as the REST API.

Every value is escaped where it enters the page (`e()`). Forms carry the session's CSRF token and
the session cookie is HttpOnly and SameSite=Strict. Backend changes take two steps: the form asks,
a confirmation page says what will change, and only its button carries `confirm=yes`.
No JavaScript is needed; the load chart is inline SVG.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

from palomar.cli.cluster_backend import backend_status_record, update_backend
from palomar.cli.cluster_feature import checked_feature_state, set_feature
from palomar.cli.cluster_site import site_records
from palomar.cli.output import cell
from palomar.cluster import validation as check
from palomar.cluster.model import BACKEND_STATUSES, FEATURE_STATES
from palomar.controller.history import History
from palomar.controller.http import CTX, SESSION, SESSION_COOKIE, Forbidden, require_admin
from palomar.controller.http_auth import Presented, Session, csrf_ok
from palomar.controller.views import site_overview, user_lookup

CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#23395d;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}
header a,header button{color:#fff;background:none;border:0;font:inherit;cursor:pointer;text-decoration:underline}
header form{margin:0}
main{padding:1em 1.2em;max-width:72em}
table{border-collapse:collapse;background:#fff;margin:.4em 0 1.2em}
th,td{border:1px solid #d5d9e0;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef1f5}
.status-online{color:#12722d;font-weight:600}.status-offline{color:#b3261e;font-weight:600}
.status-standby{color:#8a6100;font-weight:600}
.error{background:#fde7e7;border:1px solid #b3261e;padding:.6em}
.notice{background:#e7f3fd;border:1px solid #23395d;padding:.6em}
form.inline{display:inline}
.muted{color:#667}
"""


def e(value: Any) -> str:
    """Escaped text for HTML content and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def page(request: web.Request, title: str, body: str, status: int = 200) -> web.Response:
    session = request.get(SESSION)
    nav = ""
    if session is not None:
        nav = (f'<a href="/">Overview</a><a href="/user">User lookup</a>'
               f'<span class="muted">{e(session.principal.name)} ({e(session.principal.role)})</span>'
               f'<form method="post" action="/logout">{csrf_field(session)}'
               f'<button type="submit" id="logout">Log out</button></form>')
    text = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)} - palomar</title>'
            f'<link rel="stylesheet" href="/static/palomar.css"></head><body>'
            f'<header><strong>palomar controller</strong>{nav}</header><main><h1>{e(title)}</h1>{body}</main>'
            f'</body></html>')
    return web.Response(text=text, status=status, content_type="text/html")


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    return page(request, f"Error {status}", f'<p class="error" id="error">{e(message)}</p>'
                f'<p><a href="/">Back to the overview</a></p>', status=status)


def csrf_field(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'


async def form_of(request: web.Request) -> dict[str, str]:
    """The posted form after the CSRF check (403 on a missing or wrong token)."""
    data = await request.post()
    session = request[SESSION]
    if not csrf_ok(session, str(data.get("csrf", ""))):
        raise Forbidden("the form is out of date or did not come from this site (CSRF token); reload the page")
    return {k: str(v) for k, v in data.items()}


# -- login ------------------------------------------------------------------------------------------

def _login_form(message: str = "") -> str:
    note = f'<p class="error" id="error">{e(message)}</p>' if message else ""
    return (f'{note}<form method="post" action="/login" id="login">'
            f'<p><label>User <input name="user" id="user" autocomplete="username" required></label></p>'
            f'<p><label>Password <input name="password" id="password" type="password" '
            f'autocomplete="current-password" required></label></p>'
            f'<p><button type="submit" id="login-submit">Log in</button></p></form>')


async def login_get(request: web.Request) -> web.Response:
    return page(request, "Log in", _login_form())


async def login_post(request: web.Request) -> web.Response:
    # SameSite=Strict keeps the cookie off cross-site requests; refusing a foreign Origin stops a
    # login form elsewhere from logging the browser in as someone else (login CSRF).
    origin = request.headers.get("Origin")
    if origin and origin != "null" and origin.split("://", 1)[-1] != request.host:
        raise Forbidden("login from another site refused")
    data = await request.post()
    ctx = request.app[CTX]
    user, password = str(data.get("user", "")), str(data.get("password", ""))
    principal = await ctx.authenticate(request, Presented("form", user=user, secret=password))
    if principal is None:
        return page(request, "Log in", _login_form("Wrong user name or password."), status=401)
    sid, _ = ctx.sessions.create(principal)
    response = web.HTTPSeeOther("/")
    response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Strict", secure=ctx.secure_cookies,
                        path="/", max_age=int(ctx.sessions.lifetime))
    raise response


async def logout(request: web.Request) -> web.Response:
    await form_of(request)
    request.app[CTX].sessions.drop(request.cookies.get(SESSION_COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


# -- overview ---------------------------------------------------------------------------------------

def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%H:%M:%S")


def _backend_rows(site: dict[str, Any], session: Session) -> str:
    rows = []
    for b in site["backends"]:
        change = ""
        if session.principal.admin:
            options = "".join(f'<option value="{s}"{" selected" if s == b["status"] else ""}>{s}</option>'
                              for s in BACKEND_STATUSES)
            change = (f'<form method="post" action="/backend" class="inline">{csrf_field(session)}'
                      f'<input type="hidden" name="host" value="{e(b["host"])}">'
                      f'<select name="status" aria-label="status">{options}</select> '
                      f'<input name="load_factor" size="3" value="{e(b["load_factor"])}" aria-label="load factor"> '
                      f'<button type="submit">Change...</button></form>')
        rows.append(f'<tr data-host="{e(b["host"])}"><td>{e(b["host"])}</td>'
                    f'<td class="status status-{e(b["status"])}">{e(b["status"])}</td>'
                    f'<td>{e(b["status_reason"] or "")}</td><td>{e(b["load_factor"])}</td>'
                    f'<td>{e(b["groups"])}</td><td>{e(b["sessions"])}</td>'
                    f'<td>{e(b["user_count_approx"] if b["user_count_approx"] is not None else "")}</td>'
                    f'<td>{change}</td></tr>')
    return ('<table class="backends"><tr><th>backend</th><th>status</th><th>reason</th><th>load factor</th>'
            '<th>groups</th><th>sessions</th><th>users</th><th></th></tr>' + "".join(rows) + "</table>")


def _feature_rows(site: dict[str, Any], session: Session) -> str:
    rows = []
    for f in site["features"]:
        toggle = ""
        if session.principal.admin:
            buttons = "".join(
                f'<button type="submit" name="state" value="{s}" id="feature-{e(f["feature"])}-{s}"'
                f'{" disabled" if s == f["state"] else ""}>{s}</button> ' for s in FEATURE_STATES)
            toggle = (f'<form method="post" action="/feature" class="inline">{csrf_field(session)}'
                      f'<input type="hidden" name="site" value="{e(site["site"])}">'
                      f'<input type="hidden" name="feature" value="{e(f["feature"])}">{buttons}</form>')
        rows.append(f'<tr data-feature="{e(f["feature"])}"><td>{e(f["feature"])}</td>'
                    f'<td class="state">{e(f["state"])}</td><td>{e(f["source"])}</td><td>{toggle}</td></tr>')
    return ('<table class="features"><tr><th>feature</th><th>state</th><th>source</th><th></th></tr>'
            + "".join(rows) + "</table>")


def _moves(site: dict[str, Any]) -> str:
    if not site["moves"]:
        return '<p class="muted">No group moves in progress.</p>'
    rows = "".join(f'<tr><td>{e(g["name"])}</td><td>{e(g["backend"])}</td><td>{e(g["alt_backend"])}</td></tr>'
                   for g in site["moves"])
    return f'<table class="moves"><tr><th>group</th><th>from</th><th>to</th></tr>{rows}</table>'


def _decisions(history: History) -> str:
    items = list(reversed(history.decisions))[:20]
    if not items:
        return '<p class="muted">No decisions recorded yet.</p>'
    rows = "".join(f'<tr><td>{_when(d.at)}</td><td>{e(d.feature)}</td><td>{e(d.state)}</td>'
                   f'<td>{e(d.backend)}</td><td>{e(d.action)}</td><td>{"done" if d.executed else "logged only"}'
                   f'</td><td>{e(d.reason)}</td></tr>' for d in items)
    return ('<table class="decisions"><tr><th>time</th><th>feature</th><th>state</th><th>backend</th>'
            f'<th>action</th><th>result</th><th>reason</th></tr>{rows}</table>')


COLOURS = ("#23395d", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490", "#a16207", "#be185d")


def load_chart(series: dict[str, list[tuple[float, float]]], width: int = 640, height: int = 200) -> str:
    """An inline SVG line chart, one polyline per backend, with the axes' extremes labelled."""
    points = [p for line in series.values() for p in line]
    if not points:
        return '<p class="muted">No samples yet.</p>'
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    top = max(max(v for _, v in points), 1.0)
    pad = 30

    def xy(t: float, v: float) -> str:
        x = pad + (t - t0) / max(t1 - t0, 1e-9) * (width - 2 * pad)
        y = height - pad - v / top * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    lines, legend = [], []
    for i, (host, line) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{" ".join(xy(t, v) for t, v in line)}"><title>{e(host)}</title></polyline>')
        legend.append(f'<text x="{pad + i * 150}" y="14" fill="{colour}" font-size="12">{e(host)}</text>')
    axes = (f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>'
            f'<text x="2" y="{pad + 4}" font-size="11">{top:g}</text>'
            f'<text x="2" y="{height - pad}" font-size="11">0</text>'
            f'<text x="{pad}" y="{height - 8}" font-size="11">{_when(t0)}</text>'
            f'<text x="{width - pad - 50}" y="{height - 8}" font-size="11">{_when(t1)}</text>')
    return (f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'xmlns="http://www.w3.org/2000/svg">{axes}{"".join(legend)}{"".join(lines)}</svg>')


def _chart_section(history: History, metric: str) -> str:
    names = history.metrics()
    choices = " ".join(f'<a href="/?metric={quote(m)}">{e(m)}</a>' if m != metric else f"<strong>{e(m)}</strong>"
                       for m in names)
    return f'<p>Metric: {choices or e(metric)}</p>{load_chart(history.series(metric))}'


async def overview(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    session = request[SESSION]
    names = [s["name"] for s in await ctx.run(site_records)]
    names.sort(key=lambda n: n != ctx.site_name)
    parts = []
    if request.query.get("done"):
        parts.append(f'<p class="notice" id="notice">{e(request.query["done"])}</p>')
    for name in names:
        site = await ctx.run(lambda db, n=name: site_overview(db, n))
        parts.append(f'<section class="site" data-site="{e(site["site"])}"><h2>Site {e(site["site"])} '
                     f'<span class="muted">({e(site["status"])}, {e(site["groups"])} groups)</span></h2>'
                     f'<h3>Backends</h3>{_backend_rows(site, session)}'
                     f'<h3>Moves in progress</h3>{_moves(site)}'
                     f'<h3>Features</h3>{_feature_rows(site, session)}</section>')
    metric = request.query.get("metric", "sessions_active")
    parts.append(f'<section><h2>Recent feature decisions (site {e(ctx.site_name)})</h2>{_decisions(ctx.history)}'
                 f'</section><section><h2>Load over time (site {e(ctx.site_name)})</h2>'
                 f'{_chart_section(ctx.history, metric)}</section>')
    return page(request, "Cluster overview", "".join(parts))


# -- changes ----------------------------------------------------------------------------------------

def _done(message: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther("/?done=" + quote(message))


async def backend_post(request: web.Request) -> web.Response:
    """First post: a confirmation page. Second post (confirm=yes): `backend update`."""
    require_admin(request)
    form = await form_of(request)
    host = form.get("host", "")
    status = check.backend_status(form["status"]) if form.get("status") else None
    factor = check.load_factor(form["load_factor"]) if form.get("load_factor", "").strip() else None
    ctx = request.app[CTX]
    current = await ctx.run(lambda db: backend_status_record(db, host))
    changes = []
    if status is not None and status != current["status"]:
        changes.append(f"status {current['status']} → {status}")
    if factor is not None and factor != current["load_factor"]:
        changes.append(f"load factor {current['load_factor']} → {factor}")
    if not changes:
        raise _done(f"backend {host}: nothing to change")
    if form.get("confirm") != "yes":
        session = request[SESSION]
        fields = "".join(f'<input type="hidden" name="{k}" value="{e(v)}">'
                         for k, v in (("host", host), ("status", status or ""),
                                      ("load_factor", "" if factor is None else factor), ("confirm", "yes")))
        body = (f'<p id="confirm-text">Backend <strong>{e(host)}</strong>: {e("; ".join(changes))}.</p>'
                f'<form method="post" action="/backend">{csrf_field(session)}{fields}'
                f'<button type="submit" id="confirm">Confirm</button> <a href="/" id="cancel">Cancel</a></form>')
        return page(request, "Confirm the change", body)
    await ctx.run(lambda db: update_backend(db, host, status, factor))
    raise _done(f"backend {host}: {'; '.join(changes)}")


async def feature_post(request: web.Request) -> web.Response:
    require_admin(request)
    form = await form_of(request)
    site, name = form.get("site", ""), form.get("feature", "")
    value = checked_feature_state(name, form.get("state", ""))
    await request.app[CTX].run(lambda db: set_feature(db, site, name, value))
    raise _done(f"feature {name} of site {site}: {value}")


# -- user lookup ------------------------------------------------------------------------------------

def _fields(record: dict[str, Any], keys: Iterable[str]) -> str:
    return "".join(f"<tr><th>{e(k)}</th><td>{e(cell(record.get(k)))}</td></tr>" for k in keys)


async def user_page(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    name = request.query.get("name", "").strip()
    form = (f'<form method="get" action="/user"><label>User <input name="name" id="lookup-name" '
            f'value="{e(name)}"></label> <button type="submit" id="lookup">Look up</button></form>')
    if not name:
        return page(request, "User lookup", form)
    found = await ctx.run(lambda db: user_lookup(db, name, local_site=ctx.site_name, group_count=ctx.group_count))
    access = found["access"]
    where = (f"<p id=\"where\">Next login goes to <strong>{e(access['backend'])}</strong> in site "
             f"{e(access['site'])} via {e(access['via'])}.</p>" if access["backend"]
             else f'<p class="error" id="where">Cannot be routed now: {e(access["error"])}</p>')
    known = ("" if found["known"] else
             '<p class="muted">Not in the GeoDB yet: the first login places the user.</p>')
    body = (f"{form}<h2>{e(name)}</h2>{known}{where}<table>"
            f"{_fields(access, ('site', 'group', 'backend', 'via', 'pending', 'new_user'))}</table>")
    if found["status"]:
        body += ("<h3>Placement in the GeoDB</h3><table>"
                 + _fields(found["status"], [k for k in found["status"] if k != "last_backends"])
                 + "</table>")
    return page(request, "User lookup", body)


async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(text=CSS, content_type="text/css", headers={"Cache-Control": "max-age=300"})


async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", overview)
    r.add_get("/login", login_get)
    r.add_post("/login", login_post)
    r.add_post("/logout", logout)
    r.add_post("/backend", backend_post)
    r.add_post("/feature", feature_post)
    r.add_get("/user", user_page)
    r.add_get("/static/palomar.css", stylesheet)
    r.add_get("/static/favicon.ico", favicon)

