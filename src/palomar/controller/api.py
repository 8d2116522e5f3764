"""The REST API under /api/v1/: JSON records of the `palomar cluster` verbs, changes through their code.

GETs need the readonly or admin role; changes (backend status and load factor, feature states,
group moves) need admin. Each handler is a thin call of a verb's function, so `GET /api/v1/backends`
is exactly `palomar cluster backend list --json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from aiohttp import web

from palomar.cli.cluster_backend import backend_records, backend_status_record, update_backend
from palomar.cli.cluster_feature import checked_feature_state, feature_records, set_feature
from palomar.cli.cluster_group_user import group_records, move_group
from palomar.cli.cluster_site import site_records
from palomar.cli.cluster_tag import tag_records
from palomar.cli.output import to_json
from palomar.cluster import validation as check
from palomar.cluster.features import FEATURES
from palomar.controller.http import CTX, BadRequest, json_body, require_admin
from palomar.controller.views import moving_groups, site_overview, user_lookup

PREFIX = "/api/v1"


def reply(data: Any, status: int = 200) -> web.Response:
    """JSON encoded the way `--json` encodes it (UUIDs as strings)."""
    return web.Response(text=to_json(data), status=status, content_type="application/json")


def _query(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    return value if value else None


async def index(request: web.Request) -> web.Response:
    return reply({"paths": sorted(p for p in OPENAPI["paths"])})


async def sites(request: web.Request) -> web.Response:
    return reply(await request.app[CTX].run(site_records))


async def site(request: web.Request) -> web.Response:
    name = request.match_info["site"]
    return reply(await request.app[CTX].run(lambda db: site_overview(db, name)))


async def backends(request: web.Request) -> web.Response:
    site_name = _query(request, "site")
    return reply(await request.app[CTX].run(lambda db: backend_records(db, site_name)))


async def backend(request: web.Request) -> web.Response:
    host = request.match_info["host"]
    return reply(await request.app[CTX].run(lambda db: backend_status_record(db, host)))


def _text_field(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"'{name}' must be a string or a number")
    return str(value)


async def backend_change(request: web.Request) -> web.Response:
    """PATCH {"status": ..., "load_factor": ...}: `backend update --status --load-factor`."""
    require_admin(request)
    body = await json_body(request)
    unknown = set(body) - {"status", "load_factor"}
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))} (status, load_factor)")
    status_text, factor_text = _text_field(body, "status"), _text_field(body, "load_factor")
    status = check.backend_status(status_text) if status_text is not None else None
    factor = check.load_factor(factor_text) if factor_text is not None else None
    if status is None and factor is None:
        raise BadRequest("nothing to update: give status or load_factor")
    host = request.match_info["host"]
    ctx = request.app[CTX]
    await ctx.run(lambda db: update_backend(db, host, status, factor))
    return reply(await ctx.run(lambda db: backend_status_record(db, host)))


async def groups(request: web.Request) -> web.Response:
    site_name, mask = _query(request, "site"), _query(request, "mask")
    return reply(await request.app[CTX].run(lambda db: group_records(db, site_name, mask)))


async def group_move(request: web.Request) -> web.Response:
    """POST {"backend": HOST}: `group move SITE GROUP HOST` (the move runs on the group's next access)."""
    require_admin(request)
    body = await json_body(request)
    host = _text_field(body, "backend")
    if not host:
        raise BadRequest("give the destination as {\"backend\": HOST}")
    site_name, name = request.match_info["site"], request.match_info["group"]
    ctx = request.app[CTX]
    await ctx.run(lambda db: move_group(db, site_name, name, host))
    found = await ctx.run(lambda db: group_records(db, site_name))
    return reply(next(g for g in found if g["name"] == name), status=202)


async def user(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    name = request.match_info["user"]
    return reply(await ctx.run(lambda db: user_lookup(db, name, local_site=ctx.site_name,
                                                      group_count=ctx.group_count)))


async def tags(request: web.Request) -> web.Response:
    return reply(await request.app[CTX].run(tag_records))


async def features(request: web.Request) -> web.Response:
    site_name = _query(request, "site")
    return reply(await request.app[CTX].run(lambda db: feature_records(db, site_name)))


async def feature_put(request: web.Request) -> web.Response:
    """PUT {"state": "on"|"dryrun"|"off"}: `feature set SITE FEATURE STATE`."""
    require_admin(request)
    body = await json_body(request)
    state = _text_field(body, "state")
    if state is None:
        raise BadRequest("give {\"state\": \"on\" | \"dryrun\" | \"off\"}")
    site_name, name = request.match_info["site"], request.match_info["feature"]
    value = checked_feature_state(name, state)
    ctx = request.app[CTX]
    first = await ctx.run(lambda db: set_feature(db, site_name, name, value))
    record = next(r for r in await ctx.run(lambda db: feature_records(db, site_name)) if r["feature"] == name)
    return reply({**record, "first_setting": first})


async def moves(request: web.Request) -> web.Response:
    site_name = _query(request, "site")
    return reply(await request.app[CTX].run(lambda db: moving_groups(db, site_name)))


async def stats(request: web.Request) -> web.Response:
    """Latest `backend_stats` of the controller's site plus the controller's sample window."""
    ctx = request.app[CTX]
    overview = await ctx.run(lambda db: site_overview(db, ctx.site_name))
    metric = _query(request, "metric")
    history = {m: ctx.history.series(m) for m in ([metric] if metric else ctx.history.metrics())}
    return reply({
        "site": ctx.site_name,
        "backends": {b["host"]: b["stats"] for b in overview["backends"]},
        "history": {m: {h: [[t, v] for t, v in points] for h, points in series.items()}
                    for m, series in history.items()},
    })


async def decisions(request: web.Request) -> web.Response:
    return reply([asdict(d) for d in reversed(request.app[CTX].history.decisions)])


async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(OPENAPI, indent=2), content_type="application/json")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(PREFIX, index)
    r.add_get(PREFIX + "/", index)
    r.add_get(PREFIX + "/openapi.json", openapi)
    r.add_get(PREFIX + "/sites", sites)
    r.add_get(PREFIX + "/sites/{site}", site)
    r.add_get(PREFIX + "/backends", backends)
    r.add_get(PREFIX + "/backends/{host}", backend)
    r.add_patch(PREFIX + "/backends/{host}", backend_change)
    r.add_get(PREFIX + "/groups", groups)
    r.add_post(PREFIX + "/groups/{site}/{group}/move", group_move)
    r.add_get(PREFIX + "/users/{user}", user)
    r.add_get(PREFIX + "/tags", tags)
    r.add_get(PREFIX + "/features", features)
    r.add_put(PREFIX + "/features/{site}/{feature}", feature_put)
    r.add_get(PREFIX + "/moves", moves)
    r.add_get(PREFIX + "/stats", stats)
    r.add_get(PREFIX + "/decisions", decisions)


# -- OpenAPI ----------------------------------------------------------------------------------------

def _op(summary: str, *, admin: bool = False, params: tuple[tuple[str, str, str], ...] = (),
        body: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary + (" (admin role)" if admin else ""),
        "parameters": [{"name": n, "in": where, "required": where == "path", "schema": {"type": "string"},
                        "description": d} for n, where, d in params],
        "responses": {"200": {"description": "JSON"}, "401": {"description": "no or wrong credentials"},
                      **({"403": {"description": "readonly role"}} if admin else {}),
                      "400": {"description": "bad input"}, "404": {"description": "no such entity"},
                      "503": {"description": "GeoDB unavailable"}},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_SITE = ("site", "query", "only this site")
_OBJ = "object"
OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "palomar controller", "version": "1",
             "description": "Cluster state and changes, through the code of `palomar cluster`."},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                       "basic": {"type": "http", "scheme": "basic"}}},
    "security": [{"bearer": []}, {"basic": []}],
    "paths": {
        PREFIX + "/sites": {"get": _op("`site list --json`")},
        PREFIX + "/sites/{site}": {"get": _op("one site: backends with groups, sessions and gauges; "
                                              "moves; feature states", params=(("site", "path", "name"),))},
        PREFIX + "/backends": {"get": _op("`backend list --json`", params=(_SITE,))},
        PREFIX + "/backends/{host}": {
            "get": _op("`backend status HOST --json`", params=(("host", "path", "backend host"),)),
            "patch": _op("`backend update --status --load-factor`", admin=True,
                         params=(("host", "path", "backend host"),),
                         body={"type": _OBJ, "properties": {
                             "status": {"type": "string", "enum": ["online", "offline", "standby"]},
                             "load_factor": {"type": "integer", "minimum": 0, "maximum": 100}}}),
        },
        PREFIX + "/groups": {"get": _op("`group list --json`", params=(_SITE, ("mask", "query", "* and ?")))},
        PREFIX + "/groups/{site}/{group}/move": {
            "post": _op("`group move SITE GROUP HOST`; 202, the move runs on the group's next access",
                        admin=True, params=(("site", "path", "site"), ("group", "path", "group")),
                        body={"type": _OBJ, "required": ["backend"],
                              "properties": {"backend": {"type": "string"}}})},
        PREFIX + "/users/{user}": {"get": _op("where the user is (`user status`) and where the next login "
                                              "goes and why (`user access`, read-only)",
                                              params=(("user", "path", "user name"),))},
        PREFIX + "/tags": {"get": _op("`tag list --json`")},
        PREFIX + "/features": {"get": _op("`feature list --json`: " + ", ".join(FEATURES), params=(_SITE,))},
        PREFIX + "/features/{site}/{feature}": {
            "put": _op("`feature set SITE FEATURE STATE`", admin=True,
                       params=(("site", "path", "site"), ("feature", "path", "feature")),
                       body={"type": _OBJ, "required": ["state"], "properties": {
                           "state": {"type": "string", "enum": ["on", "dryrun", "off"]}}})},
        PREFIX + "/moves": {"get": _op("groups whose move is requested or running", params=(_SITE,))},
        PREFIX + "/stats": {"get": _op("latest backend_stats of the controller's site and its sample window",
                                       params=(("metric", "query", "one sampled metric"),))},
        PREFIX + "/decisions": {"get": _op("the controller's recent feature decisions, newest first")},
        PREFIX + "/openapi.json": {"get": _op("this description")},
    },
}
