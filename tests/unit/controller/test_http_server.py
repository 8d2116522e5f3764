"""The controller's HTTP server in-process on a real loopback socket and a real SQLite GeoDB:
HTTPS, the decisions of a real controller tick in the API, and a failing GeoDB answered with 503."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from palomar.cluster.model import Backend, ProxyDestStat, Setting, Site
from palomar.controller.decide import ControllerRules
from palomar.controller.http import serve_http
from palomar.controller.metrics import ControllerMetrics
from palomar.controller.service import Controller
from palomar.devcluster.certs import hop_certificates, self_signed
from palomar.devcluster.net import free_port
from palomar.geodb import open_engine
from palomar.geodb.engine import GeoDBError
from palomar.geodb.repository import GeoDB
from palomar.metrics.registry import Registry

TOKEN = "t" * 24


async def _open(path: Path) -> GeoDB:
    engine = open_engine("sqlite", path=str(path))
    await engine.open()
    return GeoDB(engine)


def _cfg(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "controller_http_listen": f"127.0.0.1:{port}", "controller_http_ssl_cert_file": "",
        "controller_http_ssl_key_file": "", "controller_http_admin_user": "admin",
        "controller_http_admin_password": "pw", "controller_http_readonly_user": "viewer",
        "controller_http_readonly_password": "", "controller_http_admin_token": TOKEN,
        "controller_http_readonly_token": "", "controller_http_session_lifetime": 3600.0,
        "controller_http_auth_max_delay": 0.0, "controller_http_ssl_client_ca_file": "",
        "controller_http_ssl_client_admin_names": [], "controller_http_ssl_client_readonly_names": [], "cluster_local_site": "east", "cluster_default_group_count": 8,
        **extra,
    }


def _get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
async def east(tmp_path: Path):
    """Site east with b1 offline (marked by a proxy, probes good since) and the health feature dryrun."""
    path = tmp_path / "geodb.sqlite"
    db = await _open(path)
    site = Site(uuid4(), "east")
    await db.site_add(site)
    b1 = uuid4()
    await db.backend_add(Backend(b1, site.id, "b1.test"))
    await db.backend_set_status(site.id, b1, "offline", "proxy p1: connect failed")
    await db.proxy_dest_stats_put([
        ProxyDestStat(site.id, "b1.test", "p1", "probe_last_success", time.time() + 1, "gauge"),
        ProxyDestStat(site.id, "b1.test", "p1", "probe_consecutive_success", 4, "gauge"),
    ])
    await db.setting_put(Setting("controller", "health", "dryrun", site.id))
    yield path
    await db.close()


async def test_https_serves_the_dryrun_decision_of_a_real_tick(east: Path, tmp_path: Path) -> None:
    pair = self_signed(tmp_path / "tls")
    port = free_port("127.0.0.1")
    controller = Controller(lambda: _open(east), "east", ControllerRules(), ControllerMetrics(Registry()),
                            clock=lambda: time.time() + 60)
    started = await serve_http(_cfg(port, controller_http_ssl_cert_file=str(pair.cert),
                                    controller_http_ssl_key_file=str(pair.key)),
                               controller.history, lambda: _open(east))
    assert started is not None
    runner, ctx = started
    context = ssl.create_default_context(cafile=str(pair.cert))
    try:
        assert await controller.tick()
        status, decisions = await asyncio.to_thread(_get, f"https://127.0.0.1:{port}/api/v1/decisions", context)
        assert status == 200
        assert [(d["feature"], d["state"], d["backend"], d["action"], d["executed"]) for d in decisions] == [
            ("health", "dryrun", "b1.test", "set_online", False)]
        status, backends = await asyncio.to_thread(_get, f"https://127.0.0.1:{port}/api/v1/backends", context)
        assert status == 200 and backends[0]["status"] == "offline"
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP on the HTTPS port gets no answer
            await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/api/v1/backends")
    finally:
        await runner.cleanup()
        await ctx.close()
        await controller.close()


class _Failing:
    """A GeoDB whose every call raises, as an unreachable store would."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise GeoDBError("store unreachable")
        return fail


async def test_a_failing_geodb_is_503_and_the_next_request_reconnects(east: Path) -> None:
    port = free_port("127.0.0.1")
    opened: list[str] = []

    async def open_db() -> Any:
        opened.append("x")
        return _Failing() if len(opened) == 1 else await _open(east)

    started = await serve_http(_cfg(port), Controller(open_db, "east", ControllerRules(),
                                                      ControllerMetrics(Registry())).history, open_db)
    assert started is not None
    runner, ctx = started
    try:
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/api/v1/sites")
        assert status == 503 and "not available" in body["error"]
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/api/v1/sites")
        assert status == 200 and [s["name"] for s in body] == ["east"]
        assert len(opened) == 2
    finally:
        await runner.cleanup()
        await ctx.close()


async def test_basic_auth_and_the_login_page_share_the_credentials(east: Path) -> None:
    port = free_port("127.0.0.1")
    started = await serve_http(_cfg(port), Controller(lambda: _open(east), "east", ControllerRules(),
                                                      ControllerMetrics(Registry())).history, lambda: _open(east))
    assert started is not None
    runner, ctx = started

    def basic(password: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/tags", headers={
            "Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        assert await asyncio.to_thread(basic, "pw") == 200
        assert await asyncio.to_thread(basic, "PW") == 401
    finally:
        await runner.cleanup()
        await ctx.close()


async def test_a_client_certificate_from_the_client_ca_authenticates(east: Path, tmp_path: Path) -> None:
    server = self_signed(tmp_path / "tls")
    clients = hop_certificates(tmp_path / "clients", ["ops.test", "stranger.test"], usage="clientAuth")
    port = free_port("127.0.0.1")
    started = await serve_http(
        _cfg(port, controller_http_ssl_cert_file=str(server.cert), controller_http_ssl_key_file=str(server.key),
             controller_http_ssl_client_ca_file=str(clients.ca), controller_http_ssl_client_admin_names=["ops.test"]),
        Controller(lambda: _open(east), "east", ControllerRules(), ControllerMetrics(Registry())).history,
        lambda: _open(east))
    assert started is not None
    runner, ctx = started

    def get(client: str | None) -> int:
        context = ssl.create_default_context(cafile=str(server.cert))
        if client is not None:
            pair = clients.backends[client]
            context.load_cert_chain(str(pair.cert), str(pair.key))
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/api/v1/sites", timeout=10,
                                        context=context) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        assert await asyncio.to_thread(get, "ops.test") == 200
        assert await asyncio.to_thread(get, "stranger.test") == 401  # signed by the CA, but not listed
        assert await asyncio.to_thread(get, None) == 401
    finally:
        await runner.cleanup()
        await ctx.close()
