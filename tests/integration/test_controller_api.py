"""The controller's REST API against a real `palomar controller` on a real cluster, with an HTTP client.

Every answer is checked against what `palomar cluster` itself says, so the API cannot drift from
the verbs. Authentication failures, roles and hostile input are covered here; the web UI in a
real Chromium is in test_controller_ui.py.
"""

from __future__ import annotations

import base64
import http.cookiejar
import imaplib
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.clients import tls_context

from palomar.devcluster.cluster import SITE, LocalCluster


@pytest.fixture(scope="module")
def cluster(harness_root: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(harness_root / "controller-api", controller=True, controller_http_port=0,
                     controller_settings=("controller_http_auth_max_delay = 1 secs",))
    c.start()
    yield c
    c.stop()


def call(cluster: LocalCluster, method: str, path: str, *, token: str | None = None,
         basic: tuple[str, str] | None = None, body: Any = None, raw: bytes | None = None
         ) -> tuple[int, dict[str, str], Any]:
    """One request; (status, headers, decoded JSON) whatever the status."""
    url = f"http://{cluster.lb_host}:{cluster.controller_http_port}{path}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if basic is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(basic).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def admin(cluster: LocalCluster) -> dict[str, Any]:
    return {"token": cluster.controller_admin_token}


def viewer(cluster: LocalCluster) -> dict[str, Any]:
    return {"token": cluster.controller_readonly_token}


def cli_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.cluster("--json", *args).stdout)


def controller_log(cluster: LocalCluster) -> str:
    return (cluster.root / "controller" / "palomar.log").read_text()


def test_get_backends_returns_the_backend_list_json_objects(cluster: LocalCluster) -> None:
    status, _, body = call(cluster, "GET", "/api/v1/backends", **viewer(cluster))
    assert status == 200
    assert body == cli_json(cluster, "backend", "list")
    assert sorted(b["host"] for b in body) == sorted(b.host for b in cluster.backends)


def test_read_endpoints_match_the_verbs(cluster: LocalCluster) -> None:
    for path, verb in (("/api/v1/sites", ("site", "list")), ("/api/v1/groups", ("group", "list")),
                       ("/api/v1/tags", ("tag", "list")), ("/api/v1/features", ("feature", "list")),
                       (f"/api/v1/backends/{cluster.backends[0].host}",
                        ("backend", "status", cluster.backends[0].host))):
        status, _, body = call(cluster, "GET", path, basic=("viewer", cluster.controller_readonly_password))
        assert status == 200, path
        expected = cli_json(cluster, *verb)
        if "stats" in expected:  # counters the backend rewrites every few seconds: same names, any value
            assert set(body.pop("stats")) == set(expected.pop("stats"))
        assert body == expected, path
    status, _, site = call(cluster, "GET", f"/api/v1/sites/{SITE}", **viewer(cluster))
    assert status == 200
    assert {b["host"] for b in site["backends"]} == {b.host for b in cluster.backends}
    assert sum(b["groups"] for b in site["backends"]) <= site["groups"]
    assert [f["feature"] for f in site["features"]] == [f["feature"] for f in cli_json(cluster, "feature", "list")]


def test_user_lookup_says_where_and_why(cluster: LocalCluster) -> None:
    user = cluster.users[0].name
    status, _, body = call(cluster, "GET", f"/api/v1/users/{user}", **viewer(cluster))
    assert status == 200
    access = cli_json(cluster, "user", "access", "-u", user)[0]
    assert body["access"]["backend"] == access["backend"]
    assert body["access"]["group"] == access["group"] and body["access"]["via"] == access["via"]


def test_openapi_description_lists_every_route(cluster: LocalCluster) -> None:
    status, _, spec = call(cluster, "GET", "/api/v1/openapi.json", **viewer(cluster))
    assert status == 200 and spec["openapi"].startswith("3.")
    for path in ("/api/v1/backends", "/api/v1/backends/{host}", "/api/v1/features/{site}/{feature}",
                 "/api/v1/groups/{site}/{group}/move", "/api/v1/users/{user}", "/api/v1/moves", "/api/v1/stats"):
        assert path in spec["paths"]
    assert "patch" in spec["paths"]["/api/v1/backends/{host}"]


@pytest.mark.parametrize("credentials", [
    {},
    {"token": "not-the-token-at-all-0123456789"},
    {"basic": ("admin", "wrong password")},
    {"basic": ("nobody", "x")},
])
def test_bad_credentials_get_401_and_are_logged_without_secrets(cluster: LocalCluster, credentials: dict) -> None:
    status, headers, body = call(cluster, "GET", "/api/v1/backends", **credentials)
    assert status == 401
    assert "Bearer" in headers["WWW-Authenticate"] and "error" in body
    log = controller_log(cluster)
    assert "wrong password" not in log and "not-the-token-at-all" not in log
    assert cluster.controller_admin_password not in log and cluster.controller_admin_token not in log


def test_repeated_failures_escalate_the_penalty(cluster: LocalCluster) -> None:
    # a success resets the address's level (as in Dovecot); then each new wrong password raises it
    assert call(cluster, "GET", "/api/v1/sites", basic=("admin", cluster.controller_admin_password))[0] == 200
    for guess in ("guess1", "guess2"):  # Dovecot's rule: the same wrong password again does not escalate
        assert call(cluster, "GET", "/api/v1/sites", basic=("admin", guess))[0] == 401
    levels = [int(line.rsplit("penalty_level=", 1)[1].split()[0]) for line in controller_log(cluster).splitlines()
              if "event=controller_http_auth_failed" in line and "user=admin" in line]
    assert levels[-2:] == [1, 2]
    assert call(cluster, "GET", "/api/v1/sites", basic=("admin", cluster.controller_admin_password))[0] == 200


def test_readonly_role_cannot_change_anything(cluster: LocalCluster) -> None:
    host = cluster.backends[1].host
    for method, path, body in (("PATCH", f"/api/v1/backends/{host}", {"load_factor": 5}),
                               ("PUT", f"/api/v1/features/{SITE}/health", {"state": "off"}),
                               ("POST", f"/api/v1/groups/{SITE}/default-1/move", {"backend": host})):
        status, _, answer = call(cluster, method, path, body=body, **viewer(cluster))
        assert status == 403, path
        assert "admin" in answer["error"]
    assert cli_json(cluster, "backend", "status", host)["load_factor"] == 100
    assert [f["state"] for f in cli_json(cluster, "feature", "list") if f["feature"] == "health"] == ["on"]


def test_admin_changes_backend_load_factor_and_status_like_backend_update(cluster: LocalCluster) -> None:
    host = cluster.backends[1].host
    status, _, body = call(cluster, "PATCH", f"/api/v1/backends/{host}", body={"load_factor": 40}, **admin(cluster))
    assert status == 200 and body["load_factor"] == 40
    assert cli_json(cluster, "backend", "status", host)["load_factor"] == 40
    status, _, body = call(cluster, "PATCH", f"/api/v1/backends/{host}", body={"status": "standby"},
                           basic=("admin", cluster.controller_admin_password))
    assert status == 200 and body["status"] == "standby" and body["status_reason"] == "admin"
    cluster.cluster("backend", "update", "--status", "online", "--load-factor", "100", host)


def test_admin_sets_a_feature_state(cluster: LocalCluster) -> None:
    status, _, body = call(cluster, "PUT", f"/api/v1/features/{SITE}/health", body={"state": "dryrun"},
                           **admin(cluster))
    assert status == 200 and body["state"] == "dryrun" and body["source"] == "site"
    assert [f["state"] for f in cli_json(cluster, "feature", "list", SITE) if f["feature"] == "health"] == ["dryrun"]
    cluster.cluster("feature", "set", SITE, "health", "on")


def test_group_move_goes_through_the_verb(cluster: LocalCluster) -> None:
    groups = cli_json(cluster, "group", "list", "--site", SITE)
    group = next((g for g in groups if g["backend"]), None)
    if group is None:  # nobody logged in yet: one real login places the user and gives its group a backend
        with imaplib.IMAP4(cluster.lb_host, cluster.lb_imap, timeout=30) as imap:
            imap.starttls(tls_context())
            imap.login(cluster.users[0].name, cluster.users[0].password)
            imap.logout()
        group = next(g for g in cli_json(cluster, "group", "list", "--site", SITE) if g["backend"])
    other = next(b.host for b in cluster.backends if b.host != group["backend"])
    status, _, body = call(cluster, "POST", f"/api/v1/groups/{SITE}/{group['name']}/move", body={"backend": other},
                           **admin(cluster))
    assert status == 202 and body["alt_backend"] == other and body["moving"]
    _, _, moving = call(cluster, "GET", "/api/v1/moves", **viewer(cluster))
    assert group["name"] in [g["name"] for g in moving]
    status, _, body = call(cluster, "POST", f"/api/v1/groups/{SITE}/{group['name']}/move",
                           body={"backend": group["backend"]}, **admin(cluster))
    assert status == 409 and f"already on backend '{group['backend']}'" in body["error"]


@pytest.mark.parametrize(("method", "path", "raw", "expected"), [
    ("PATCH", "/api/v1/backends/{b}", b"{not json", 400),
    ("PATCH", "/api/v1/backends/{b}", b"[1, 2]", 400),
    ("PATCH", "/api/v1/backends/{b}", b'{"status": "<script>alert(1)</script>"}', 400),
    ("PATCH", "/api/v1/backends/{b}", b'{"load_factor": 101}', 400),
    ("PATCH", "/api/v1/backends/{b}", b'{"load_factor": true}', 400),
    ("PATCH", "/api/v1/backends/{b}", b'{"colour": "red"}', 400),
    ("PATCH", "/api/v1/backends/%3Cscript%3Ealert(1)%3C%2Fscript%3E", b'{"status": "online"}', 404),
    ("PUT", "/api/v1/features/" + SITE + "/%3Cimg%20src%3Dx%3E", b'{"state": "on"}', 400),
    ("PUT", "/api/v1/features/" + SITE + "/health", b'{"state": "maybe"}', 400),
    ("PUT", "/api/v1/features/nosuchsite/health", b'{"state": "on"}', 404),
    ("POST", "/api/v1/groups/" + SITE + "/default-1/move", b'{"backend": "<b>x</b>"}', 404),
    ("POST", "/api/v1/groups/" + SITE + "/default-1/move", b"\xff\xfe", 400),
    ("GET", "/api/v1/no-such-thing", None, 404),
    ("PATCH", "/api/v1/backends/{b}", b'{"status": "' + b"x" * 70000 + b'"}', 413),
    ("DELETE", "/api/v1/backends", None, 405),
])
def test_hostile_input_gets_a_clean_4xx(cluster: LocalCluster, method: str, path: str, raw: bytes | None,
                                       expected: int) -> None:
    status, headers, body = call(cluster, method, path.replace("{b}", cluster.backends[0].host), raw=raw,
                                 **admin(cluster))
    assert status == expected
    assert headers["Content-Type"].startswith("application/json") and body["status"] == expected
    assert "Traceback" not in controller_log(cluster)
    assert call(cluster, "GET", "/api/v1/sites", **viewer(cluster))[0] == 200


def test_stats_and_decisions_are_served(cluster: LocalCluster) -> None:
    status, _, body = call(cluster, "GET", "/api/v1/stats", **viewer(cluster))
    assert status == 200 and set(body["backends"]) == {b.host for b in cluster.backends}
    status, _, decisions = call(cluster, "GET", "/api/v1/decisions", **viewer(cluster))
    assert status == 200 and isinstance(decisions, list)


class UiClient:
    """A cookie-keeping HTTP client of the web UI's forms (what a browser posts, without the browser)."""

    def __init__(self, cluster: LocalCluster, user: str, password: str) -> None:
        self.base = f"http://{cluster.lb_host}:{cluster.controller_http_port}"
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        status, page = self.post("/login", {"user": user, "password": password})
        assert status == 200 and "Cluster overview" in page
        self.csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]

    def post(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode()
        try:
            with self.opener.open(self.base + path, data=data, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


def test_ui_forms_refuse_hostile_input_missing_csrf_and_the_readonly_role(cluster: LocalCluster) -> None:
    host = cluster.backends[0].host
    ui = UiClient(cluster, "admin", cluster.controller_admin_password)
    status, page = ui.post("/backend", {"csrf": ui.csrf, "host": host, "status": "<script>x</script>"})
    assert status == 400 and "&lt;script&gt;" in page and "<script>" not in page
    status, page = ui.post("/backend", {"csrf": ui.csrf, "host": "<img src=x>", "status": "standby"})
    assert status == 404 and "&lt;img src=x&gt;" in page
    status, page = ui.post("/backend", {"host": host, "status": "standby", "confirm": "yes"})
    assert status == 403 and "CSRF" in page
    status, page = ui.post("/feature", {"csrf": ui.csrf, "site": SITE, "feature": "<b>", "state": "on"})
    assert status == 400 and "&lt;b&gt;" in page
    viewer_ui = UiClient(cluster, "viewer", cluster.controller_readonly_password)
    status, page = viewer_ui.post("/backend", {"csrf": viewer_ui.csrf, "host": host, "status": "standby",
                                               "confirm": "yes"})
    assert status == 403 and "admin role" in page
    assert cli_json(cluster, "backend", "status", host)["status"] == "online"
