"""Verbs that act on running backends or on this host: `kick`, `group access`, `backend evacuate`,
`geodb refresh` (and `user access`, in cluster_user_access.py, uses the same channel).

`kick`, `group access` and `user access` send an admin command to a backend over the hop
(`cluster_hop_secret`, `cluster_hop_port` and `cluster_hop_ssl*` of the config;
docs/design/backend-hop.md), because
only the backend can close its sessions or run a move it owns. `backend evacuate` only
writes the GeoDB: the moves run on their next access (or at once, the source being standby).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import uuid
from typing import Any

import click

from palomar.backend.admin import AdminError, decode_result, encode_command
from palomar.cli.cluster_backend import _self_or_host
from palomar.cli.cluster_context import ClusterContext, CommandError, backend_by_host, pass_ctx, site_by_name
from palomar.cli.cluster_localdb import _with_localdb
from palomar.cluster.force_move import apply_force_move
from palomar.cluster.model import Backend, SiteView
from palomar.cluster.moves import evacuation_plan
from palomar.geodb import open_engine
from palomar.geodb.engine import GeoDBError
from palomar.geodb.repository import GeoDB
from palomar.net.hop_tls import HopTlsError, describe_tls_failure, hop_client_context
from palomar.protocols import hop
from palomar.protocols.proxyproto import build_v2
from palomar.service_runtime import geodb_engine_options

ADMIN_TIMEOUT = 90.0
"""Seconds to wait for a backend's answer: a kick may wait `cluster_user_move_timeout` per user."""


# -- the admin channel ----------------------------------------------------------------------------


def send_admin(ctx: ClusterContext, host: str, cmd: str, **args: str) -> dict[str, Any]:
    """Send one admin command to the backend `host` and return its JSON result."""
    secret = ctx.setting("cluster_hop_secret")
    if not secret:
        raise CommandError("cluster_hop_secret is not set in the config (needed to reach backends)")
    port = int(ctx.setting("cluster_hop_port") or 7425)
    try:
        tls = hop_client_context(ctx.config())
    except HopTlsError as err:
        raise CommandError(str(err)) from None
    try:
        raw = socket.create_connection((host, port), timeout=10)
    except OSError as err:
        raise CommandError(f"cannot reach backend {host}:{port}: {err}") from None
    try:
        sock = tls.wrap_socket(raw, server_hostname=host) if tls is not None else raw
    except ssl.SSLError as err:
        raw.close()
        raise CommandError(f"backend {host}:{port}: {describe_tls_failure(err)}") from None
    except OSError as err:
        raw.close()
        raise CommandError(f"backend {host}:{port}: TLS handshake failed: {err}") from None
    try:
        client, local = sock.getsockname()[:2], sock.getpeername()[:2]
        request = hop.HopRequest(user=args.get("user", "-"), protocol="doveadm",
                                 session_id=f"admin-{uuid.uuid4().hex[:12]}", backend_host=host,
                                 client=client, local=local, admin=encode_command(cmd, **args))
        challenge = _read_line(sock, hop.ChallengeReader(), host)
        sock.sendall(build_v2(client, local, hop.seal(request, secret.encode(), challenge)))
        sock.settimeout(ADMIN_TIMEOUT)
        return decode_result(_read_line(sock, hop.ReplyReader(), host))
    except (hop.HopError, AdminError) as err:
        raise CommandError(f"backend {host}: {err}") from None
    except TimeoutError:
        raise CommandError(f"backend {host} did not answer in time") from None
    except OSError as err:
        raise CommandError(f"backend {host}: {err}") from None
    finally:
        sock.close()


def _read_line(sock: socket.socket, reader: hop.LineReader[hop.T], host: str) -> hop.T:
    """One hop line from the backend (its challenge, or its answer)."""
    while True:
        data = sock.recv(65536)
        if not data:
            raise CommandError(f"backend {host} closed the connection without an answer")
        decoded = reader.feed(data)
        if decoded is not None:
            return decoded


async def _local_view(ctx: ClusterContext, db: GeoDB) -> SiteView:
    site = await site_by_name(db, ctx.local_site_name())
    return SiteView(site, tuple(await db.backend_list(site.id)))


async def user_backends(ctx: ClusterContext, db: GeoDB, username: str) -> list[Backend]:
    """Every backend that may hold the user's sessions: its group's backend, the destination of
    the group's running move, and its force-move destination."""
    user = await db.user_get(username)
    if user is None or not user.group_name:
        raise CommandError(f"user '{username}' does not exist or has no group")
    view = await _local_view(ctx, db)
    group = await db.group_get(view.site.id, user.group_name)
    if group is None or group.backend_id is None:
        raise CommandError(f"group '{user.group_name}' of user '{username}' has no backend")
    found: list[Backend] = []
    owner = view.backend(group.backend_id)
    for candidate in (owner, view.backend(group.alt_backend_id) if group.moving else None,
                      apply_force_move(owner, username, view) if owner is not None else None):
        if candidate is not None and candidate not in found:
            found.append(candidate)
    if not found:
        raise CommandError(f"the backend of user '{username}' is not in site '{view.site.name}'")
    return found


# -- kick -------------------------------------------------------------------------------------------


@click.command("kick")
@click.argument("username", metavar="USER")
@pass_ctx
def kick(ctx: ClusterContext, username: str) -> None:
    """Close all of USER's sessions in the cluster (at the backends that may hold them)."""

    async def action(db: GeoDB) -> list[Backend]:
        return await user_backends(ctx, db, username)

    results = [send_admin(ctx, b.host, "kick", user=username) for b in ctx.run(action)]
    if ctx.json_output:
        ctx.emit_list(results, ("backend", "closed_sessions", "error"))
    errors = [f"{r['backend']}: {r['error']}" for r in results if r.get("error")]
    if errors:
        raise CommandError("kick incomplete: " + "; ".join(errors))


# -- group access ----------------------------------------------------------------------------------


@click.command("access")
@click.argument("name", metavar="GROUP")
@pass_ctx
def group_access(ctx: ClusterContext, name: str) -> None:
    """Run an access of GROUP at its source backend: starts (or finishes) a pending move."""

    async def action(db: GeoDB) -> Backend:
        view = await _local_view(ctx, db)
        group = await db.group_get(view.site.id, name)
        if group is None:
            raise CommandError(f"group '{name}' does not exist in site '{view.site.name}'")
        owner = view.backend(group.backend_id)
        if owner is None:
            raise CommandError(f"group '{name}' has no backend in site '{view.site.name}'")
        return owner

    result = send_admin(ctx, ctx.run(action).host, "group-access", group=name)
    ctx.emit_result(result, f"{name}: {result['result']}")


# -- backend evacuate -------------------------------------------------------------------------------


@click.command("evacuate")
@click.option("--self", "self_flag", is_flag=True, help="This host (cluster_backend_name).")
@click.argument("host", required=False)
@pass_ctx
def backend_evacuate(ctx: ClusterContext, self_flag: bool, host: str | None) -> None:
    """Move every group of HOST to other online backends; sets standby and load factor 0.

    Returns at once; `backend status` shows how many groups are still on HOST.
    """
    target = _self_or_host(self_flag, host, ctx)

    async def action(db: GeoDB) -> dict[str, Any]:
        found = await backend_by_host(db, target)
        site = await db.site_get(found.site_id)
        assert site is not None
        view = SiteView(site, tuple(await db.backend_list(site.id)))
        groups = await db.group_list(site.id)
        plan = evacuation_plan(found.id, groups, view)
        current = {g.name: g for g in groups}
        for name, dest in plan.moves:
            group = current[name]
            if group.moving and group.alt_backend_id == dest.id:
                continue
            await db.group_update(site.id, name, alt_backend_id=dest.id, moving=str(uuid.uuid4()))
        await db.backend_update(site.id, found.id, load_factor=0)
        if found.status != "standby":
            await db.backend_set_status(site.id, found.id, "standby", reason="evacuate")
        return {"host": found.host, "groups_moving": len(plan.moves), "stuck": list(plan.stuck),
                "destinations": {n: d.host for n, d in plan.moves}}

    result = ctx.run(action)
    if result["stuck"]:
        ctx.warn(f"no online backend to take group(s) {', '.join(result['stuck'])}")
    if ctx.json_output:
        ctx.emit_record(result)


# -- geodb refresh ----------------------------------------------------------------------------------


@click.group("geodb")
def geodb() -> None:
    """This host's view of the GeoDB."""


@geodb.command("refresh")
@pass_ctx
def geodb_refresh(ctx: ClusterContext) -> None:
    """Drop this host's cached GeoDB rows (LocalDB at cluster_localdb_path); testing only."""
    dropped = _with_localdb(ctx, lambda db: db.cache_clear())
    if ctx.json_output:
        ctx.emit_record({"dropped": dropped})


@geodb.command("status")
@pass_ctx
def geodb_status(ctx: ClusterContext) -> None:
    """Whether the GeoDB answers from here, how fast, and how long cached state may stand in for it.

    Exits 1 when the GeoDB does not answer within cluster_geodb_timeout (for monitoring)."""
    record = asyncio.run(_probe_geodb(ctx))
    record["stale_max_secs"] = int(ctx.config()["cluster_geodb_stale_max"])
    ctx.emit_record(record)
    if record["state"] != "available":
        raise SystemExit(1)


async def _probe_geodb(ctx: ClusterContext) -> dict[str, Any]:
    """Open the GeoDB and read the sites table, all within `cluster_geodb_timeout`."""
    cfg = ctx.config()
    driver, options = geodb_engine_options(cfg)
    target = options.get("path") or ",".join(str(h) for h in options.get("hosts") or [])
    record: dict[str, Any] = {"engine": driver, "target": target}
    timeout = float(cfg["cluster_geodb_timeout"])
    started = time.monotonic()
    db: GeoDB | None = None
    if driver == "sqlite":  # a locked file must not hold the worker thread (and our exit) past the bound
        options["busy_timeout_ms"] = int(timeout * 1000)
    try:
        async with asyncio.timeout(timeout):
            engine = open_engine(driver, **options)
            db = GeoDB(engine)
            await engine.open()
            await db.site_list()
        record.update(state="available", latency_ms=round((time.monotonic() - started) * 1000, 1), error="")
    except TimeoutError:
        record.update(state="unavailable", latency_ms=None, error=f"no answer within {timeout:g}s")
    except (GeoDBError, OSError) as err:
        record.update(state="unavailable", latency_ms=None, error=" ".join(str(err).split()))
    finally:
        if db is not None:
            with contextlib.suppress(Exception):
                await db.close()
    return record


def register(cluster: click.Group, backend: click.Group, group: click.Group) -> None:
    """Attach the verbs to the `cluster` group and its entity groups."""
    cluster.add_command(kick)
    cluster.add_command(geodb)
    backend.add_command(backend_evacuate)
    group.add_command(group_access)
