"""The doveadm HTTP API core: authorization, request shapes, targets, Dovecot's answers."""

from __future__ import annotations

import json

import pytest

from palomar.protocols import doveadm
from palomar.protocols import doveadm_http as api


@pytest.mark.parametrize(("header", "ok"), [
    ("Basic ZG92ZWFkbTpzZWNyZXQ=", True),  # doveadm:secret, the spec's vector
    ("basic ZG92ZWFkbTpzZWNyZXQ=", True),
    ("X-Dovecot-API bXlrZXk=", True),  # mykey
    ("Basic ZG92ZWFkbTp3cm9uZw==", False),
    ("X-Dovecot-API d3Jvbmc=", False),
    ("Bearer bXlrZXk=", False),
    ("", False),
    (None, False),
])
def test_authorized(header: str | None, ok: bool) -> None:
    assert api.authorized(header, "secret", "mykey") is ok


def test_a_scheme_without_its_secret_is_off() -> None:
    assert not api.authorized("X-Dovecot-API ", "secret", "")
    assert not api.authorized("Basic ZG92ZWFkbTo=", "", "mykey")  # "doveadm:" with an empty password
    assert api.challenges("secret", "") == (("WWW-Authenticate", 'Basic Realm="doveadm"'),)
    assert api.challenges("", "k") == (("WWW-Authenticate", "X-Dovecot-API"),)


@pytest.mark.parametrize(("body", "text"), [
    (b"{", "JSON parse error"),
    (b'{"a":1}', "Request must be a JSON array"),
    (b'["x"]', "Command must be a JSON array"),
    (b'[["x",{}]]', "Command must have a name, parameters and a command ID"),
    (b'[["x",{},"t",1]]', "Unexpected JSON element at end of command"),
    (b'[[1,{},"t"]]', "Command name must be a string"),
    (b'[["x",[],"t"]]', "Parameters must be given in a JSON object"),
    (b'[["x",{},2]]', "Command ID must be a string"),
    (b'[["x",{"user":"a","user":"b"},"t"]]', "duplicate parameter"),
])
def test_bad_bodies_are_400(body: bytes, text: str) -> None:
    with pytest.raises(api.HttpError, match=text) as info:
        api.parse_commands(body)
    assert info.value.status == 400


def test_commands_round_trip_through_the_hop_line() -> None:
    [command] = api.parse_commands(b'[["fetch",{"user":"u@x","field":["text"],"query":["a\\nb"]},"t"]]')
    line = command.encode()
    assert b"\n" not in line
    assert api.parse_hop_command(line + b"\n") == command
    with pytest.raises(doveadm.DoveadmProtocolError, match="one command"):
        api.parse_hop_command(b'["a",{},"t"],["b",{},"t"]\n')


@pytest.mark.parametrize(("command", "target"), [
    (["mailboxStatus", {"user": "u@x"}, "t"], "u@x"),
    (["kick", {"mask": ["u@x"]}, "t"], "u@x"),
    (["kick", {"mask": "u@x"}, "t"], "u@x"),
    (["kick", {"mask": ["u*"]}, "t"], "exactly one user name"),
    (["kick", {"mask": ["u@x", "v@x"]}, "t"], "exactly one user name"),
    (["kick", {"mask": ["10.0.0.1"]}, "t"], "exactly one user name"),
    (["kick", {"mask": ["u@x"], "destHost": "h"}, "t"], "no other parameters"),
    (["mailboxStatus", {"user": "u*"}, "t"], "user masks are not supported"),
    (["mailboxStatus", {"allUsers": "true"}, "t"], "allUsers and userFile are not supported"),
    (["mailboxStatus", {"userFile": "/f"}, "t"], "allUsers and userFile are not supported"),
    (["mailboxStatus", {"user": ""}, "t"], "must be a non-empty string"),
    (["mailboxStatus", {}, "t"], "only commands for one user"),
    (["who", {}, "t"], "who: not supported through a palomar proxy"),
    (["dsyncServer", {"user": "u@x"}, "t"], "dsyncServer: not supported"),
])
def test_target_user(command: list, target: str) -> None:
    result = api.target_user(api.ApiCommand(*command))
    if isinstance(result, doveadm.Refused):
        assert target in result.text
    else:
        assert result == target


def test_with_target_renames_the_user() -> None:
    assert api.with_target(api.ApiCommand("fetch", {"user": "a"}, "t"), "b").params == {"user": "b"}
    assert api.with_target(api.ApiCommand("kick", {"mask": "a"}, "t"), "b").params == {"mask": ["b"]}


def test_items_and_error_items() -> None:
    ok = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 37\r\n\r\n' \
         b'[["doveadmResponse",[{"a":"1"}],"t"]]'
    status, body = api.parse_response(ok)
    assert api.items_of(status, body) == b'["doveadmResponse",[{"a":"1"}],"t"]'
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[[]\r\n1\r\n]\r\n0\r\n\r\n"
    assert api.parse_response(chunked) == (200, b"[[]]")
    assert api.items_of(401, b"") is None
    with pytest.raises(doveadm.DoveadmProtocolError):
        api.parse_response(b"garbage")
    error = api.error_item("t1", 75, "palomar proxy: backend down")
    assert json.loads(error) == ["error", {"type": "exitCode", "exitCode": 75, "reason": "palomar proxy: backend down"},
                                 "t1"]
    assert api.response_body([b"1", b"2"]) == b"[1,2]"


def test_heads() -> None:
    head = api.parse_head(b"POST /doveadm/v1?x=1 HTTP/1.1\r\nContent-Length: 12\r\nAuthorization: Basic x")
    assert (head.method, head.path, head.body_length, head.headers["authorization"]) == \
        ("POST", "/doveadm/v1", 12, "Basic x")
    for data, status in ((b"GARBAGE", 400), (b"GET / HTTP/1.1\r\nno colon", 400)):
        with pytest.raises(api.HttpError) as info:
            api.parse_head(data)
        assert info.value.status == status
    with pytest.raises(api.HttpError) as info:
        _ = api.parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked").body_length
    assert info.value.status == 411
