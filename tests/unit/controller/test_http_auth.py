"""Credentials, sessions and the listen setting of the controller's HTTP side (pure parts)."""

from __future__ import annotations

import base64

import pytest

from palomar.auth.schemes import hash_password
from palomar.controller.http import parse_listen
from palomar.controller.http_auth import (
    ADMIN,
    READONLY,
    Credentials,
    CredentialsError,
    Presented,
    Principal,
    Sessions,
    csrf_ok,
    parse_authorization,
)

TOKEN = "a" * 16
DEFAULTS = {
    "controller_http_admin_user": "admin", "controller_http_admin_password": "",
    "controller_http_readonly_user": "viewer", "controller_http_readonly_password": "",
    "controller_http_admin_token": "", "controller_http_readonly_token": "",
    "controller_http_ssl_client_ca_file": "", "controller_http_ssl_client_admin_names": [],
    "controller_http_ssl_client_readonly_names": [],
}


def creds(**settings: object) -> Credentials:
    return Credentials.from_config({**DEFAULTS, **{f"controller_http_{k}": v for k, v in settings.items()}})


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(("header", "expected"), [
    (None, None),
    ("", None),
    ("Bearer abc", Presented("bearer", secret="abc")),
    ("bearer   abc  ", Presented("bearer", secret="abc")),
    ("Bearer", None),
    (basic("admin:pw:with:colons"), Presented("basic", user="admin", secret="pw:with:colons")),
    (basic("no-colon"), None),
    ("Basic !!!not-base64", None),
    ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), None),
    ("Digest x", None),
])
def test_parse_authorization(header: str | None, expected: Presented | None) -> None:
    assert parse_authorization(header) == expected


def test_roles_by_password_and_token() -> None:
    c = creds(admin_password="secret", readonly_password=hash_password("SHA512-CRYPT", "view"),
              admin_token=TOKEN, readonly_token="b" * 20)
    assert c.check(Presented("basic", "admin", "secret")) == Principal("admin", ADMIN)
    assert c.check(Presented("form", "viewer", "view")) == Principal("viewer", READONLY)
    assert c.check(Presented("basic", "viewer", "secret")) is None
    assert c.check(Presented("basic", "nobody", "secret")) is None
    assert c.check(Presented("bearer", secret=TOKEN)) == Principal("token", ADMIN)
    assert c.check(Presented("bearer", secret="b" * 20)).role == READONLY  # type: ignore[union-attr]
    assert c.check(Presented("bearer", secret="a" * 15)) is None
    assert c.check(Presented("bearer", secret="")) is None


@pytest.mark.parametrize(("settings", "message"), [
    ({}, "nobody could use"),
    ({"admin_token": "short"}, "shorter than 16"),
    ({"admin_token": TOKEN, "readonly_token": TOKEN}, "are the same"),
    ({"admin_password": "x", "readonly_password": "y", "readonly_user": "admin"}, "also the other role"),
    ({"admin_password": "x", "admin_user": ""}, "admin_user is empty"),
    ({"admin_password": "{NOSUCH}abc"}, "unknown password scheme"),
    ({"ssl_client_admin_names": ["ops"]}, "need controller_http_ssl_client_ca_file"),
    ({"ssl_client_ca_file": "/ca.pem"}, "no certificate would be accepted"),
    ({"ssl_client_ca_file": "/ca.pem", "ssl_client_admin_names": ["ops"], "ssl_client_readonly_names": ["ops"]},
     "both roles"),
])
def test_unusable_credentials_are_refused(settings: dict[str, str], message: str) -> None:
    with pytest.raises(CredentialsError, match=message):
        creds(**settings)


def test_client_certificate_names_give_roles() -> None:
    c = creds(ssl_client_ca_file="/ca.pem", ssl_client_admin_names=["ops"], ssl_client_readonly_names=["mon"])
    def cert(cn: str) -> dict:
        return {"subject": ((("organizationName", "x"),), (("commonName", cn),))}
    assert c.by_certificate(cert("ops")) == Principal("cert:ops", ADMIN)
    assert c.by_certificate(cert("mon")) == Principal("cert:mon", READONLY)
    assert c.by_certificate(cert("other")) is None
    assert c.by_certificate({}) is None and c.by_certificate(None) is None
    assert c.by_certificate({"subject": ((("organizationName", "ops"),),)}) is None


def test_sessions_expire_and_are_bounded() -> None:
    now = [1000.0]
    sessions = Sessions(60, clock=lambda: now[0])
    sid, session = sessions.create(Principal("admin", ADMIN))
    assert sessions.get(sid) == session and sessions.get("other") is None and sessions.get(None) is None
    assert csrf_ok(session, session.csrf) and not csrf_ok(session, "x") and not csrf_ok(session, None)
    now[0] += 60
    assert sessions.get(sid) is None
    first, _ = sessions.create(Principal("a", ADMIN))
    for _ in range(1000):
        sessions.create(Principal("b", ADMIN))
    assert sessions.get(first) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("", []),
    ("127.0.0.1:8100", [("127.0.0.1", 8100)]),
    ("127.0.0.1:8100 [::1]:8100", [("127.0.0.1", 8100), ("::1", 8100)]),
])
def test_parse_listen(text: str, expected: list[tuple[str, int]]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8100", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":80", "host:http"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="controller_http_listen"):
        parse_listen(text)
