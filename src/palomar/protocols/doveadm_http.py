"""Dovecot's doveadm HTTP API (2.3's src/doveadm/client-connection-http.c), sans-IO: the request
a proxy reads, its authorization, the JSON commands in it, and the response it writes back.

* one request per connection (Dovecot answers every request with `Connection: close`);
* `OPTIONS *` needs no authorization; `GET /`, `GET /doveadm/v1` and `POST /doveadm/v1` do:
  `Authorization: Basic base64(doveadm:<doveadm_password>)` or
  `Authorization: X-Dovecot-API base64(<doveadm_api_key>)`, else 401 with a `WWW-Authenticate`
  header per enabled scheme;
* the POST body is `[[command, {params}, tag], ...]`; the answer is 200 with one item per
  command: `["doveadmResponse", <rows>, tag]` or `["error", {"type": ..., "exitCode": N}, tag]`;
  a body that is not that shape is 400 with a text/plain reason.
"""

from __future__ import annotations

import base64
import hmac
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from palomar.protocols import doveadm

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
"""Commands such as `save` carry a whole message in a parameter."""
PATH = "/doveadm/v1"
MOUNTS = b'[\n{"method":"OPTIONS","path":"*"},\n{"method":"GET","path":"/"},\n' \
         b'{"method":"GET","path":"/doveadm/v1"},\n{"method":"POST","path":"/doveadm/v1"}\n]'
"""`GET /`: Dovecot's list of mounts, as it prints it."""
OPTIONS_HEADERS = (("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                   ("Access-Control-Allow-Request-Headers", "Content-Type, X-API-Key, Authorization"),
                   ("Access-Control-Allow-Headers", "Content-Type, WWW-Authenticate"))
JSON_TYPE = "application/json; charset=utf-8"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
HOP_MARKER = b"HTTP\n"
"""First line of an HTTP API command's hop payload (a TCP command's is the client's VERSION line)."""
EX_USAGE, EX_TEMPFAIL = 64, 75


class HttpError(Exception):
    """A request-level failure: the status line and the text/plain body Dovecot sends for it."""

    def __init__(self, status: int, reason: str, text: str = "") -> None:
        super().__init__(f"{status} {reason}: {text}" if text else f"{status} {reason}")
        self.status, self.reason, self.text = status, reason, text


@dataclass(frozen=True)
class Head:
    method: str
    path: str
    headers: dict[str, str]
    """Lower-case names; a repeated header keeps its last value."""

    @property
    def body_length(self) -> int:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            raise HttpError(411, "Length Required", "chunked request bodies are not supported; send Content-Length")
        length = self.headers.get("content-length", "0").strip()
        if not length.isdigit():
            raise HttpError(400, "Bad Request", "invalid Content-Length")
        if int(length) > MAX_BODY:
            raise HttpError(413, "Payload Too Large")
        return int(length)


def parse_head(data: bytes) -> Head:
    """The request line and headers (`data` ends at the blank line)."""
    lines = data.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "Bad Request", "invalid request line")
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(400, "Bad Request", "invalid header line")
        headers[name.lower()] = value.strip()
    path = parts[1] if parts[1] == "*" else parts[1].split("?", 1)[0]
    return Head(parts[0], path, headers)


def authorized(authorization: str | None, password: str, api_key: str) -> bool:
    """Whether the Authorization header names an enabled scheme with the right secret (compared in
    constant time)."""
    if not authorization:
        return False
    scheme, _, data = authorization.strip().partition(" ")
    if scheme.lower() == "basic" and password:
        expected = "doveadm:" + password
    elif scheme.lower() == "x-dovecot-api" and api_key:
        expected = api_key
    else:
        return False
    return hmac.compare_digest(data.strip().encode(), base64.b64encode(expected.encode()))


def challenges(password: str, api_key: str) -> tuple[tuple[str, str], ...]:
    """The 401's WWW-Authenticate headers, one per enabled scheme, in Dovecot's order."""
    return ((("WWW-Authenticate", "X-Dovecot-API"),) if api_key else ()) + \
        ((("WWW-Authenticate", 'Basic Realm="doveadm"'),) if password else ())


def response(status: int, reason: str, body: bytes = b"", content_type: str = "",
             headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers)]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def error_response(error: HttpError) -> bytes:
    body = (error.text + "\n").encode() if error.text else b""
    return response(error.status, error.reason, body, "text/plain; charset=utf-8" if body else "")


@dataclass(frozen=True)
class ApiCommand:
    name: str
    params: dict[str, Any]
    tag: str

    def encode(self) -> bytes:
        """One JSON line (JSON escapes every control character, so it holds no LF)."""
        return json.dumps([self.name, self.params, self.tag], ensure_ascii=False, separators=(",", ":")).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise HttpError(400, "Bad Request", "duplicate parameter")
    return dict(pairs)


def parse_commands(body: bytes) -> list[ApiCommand]:
    """The commands of a POST body, or the 400 Dovecot answers for a body of another shape."""
    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HttpError(400, "Bad Request", f"JSON parse error: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, list):
        raise HttpError(400, "Bad Request", "Request must be a JSON array")
    commands = []
    for item in data:
        if not isinstance(item, list):
            raise HttpError(400, "Bad Request", "Command must be a JSON array")
        if len(item) != 3:
            raise HttpError(400, "Bad Request", "Unexpected JSON element at end of command" if len(item) > 3
                            else "Command must have a name, parameters and a command ID")
        name, params, tag = item
        if not isinstance(name, str):
            raise HttpError(400, "Bad Request", "Command name must be a string")
        if not isinstance(params, dict):
            raise HttpError(400, "Bad Request", "Parameters must be given in a JSON object")
        if not isinstance(tag, str):
            raise HttpError(400, "Bad Request", "Command ID must be a string")
        commands.append(ApiCommand(name, params, tag))
    return commands


def parse_hop_command(line: bytes) -> ApiCommand:
    """The one command a proxy sends over the hop; DoveadmProtocolError for anything else."""
    try:
        commands = parse_commands(b"[" + line.rstrip(b"\n") + b"]")
    except HttpError as exc:
        raise doveadm.DoveadmProtocolError(f"doveadm HTTP command: {exc.text}") from None
    if len(commands) != 1:
        raise doveadm.DoveadmProtocolError("doveadm HTTP hop payload must hold one command")
    return commands[0]


@cache
def catalogue() -> bytes:
    """`GET /doveadm/v1` on a proxy: the entries of Dovecot 2.3.19's catalogue for the commands a proxy
    forwards (every mail command, i.e. those with `user` and `allUsers`, except dsyncServer; and kick)."""
    return resources.files("palomar.protocols").joinpath("doveadm_catalogue.json").read_bytes()


@cache
def forwarded_commands() -> frozenset[str]:
    return frozenset(entry["command"] for entry in json.loads(catalogue()))


KICK = "kick"
_ALL_USERS = "allUsers"
_USER_FILE = "userFile"


def target_user(command: ApiCommand) -> str | doveadm.Refused:
    """The one user whose backend runs `command`, or why it cannot go through a proxy: the rules of
    the TCP protocol (`doveadm.target_user`) over the HTTP API's parameter names."""
    params = command.params
    if command.name not in forwarded_commands():
        return doveadm.Refused(f"{command.name}: not supported through a palomar proxy: only mail commands for "
                               "one user and kick are forwarded to the user's backend (GET /doveadm/v1 lists them)")
    if params.get(_ALL_USERS) in (True, "true") or _USER_FILE in params:
        return doveadm.Refused(f"{command.name}: allUsers and userFile are not supported through the doveadm "
                               "HTTP API of a palomar proxy (it has no list of users): send one request per user, "
                               "or use `doveadm -A -S proxy:port` (the doveadm client lists the users itself)")
    if command.name == KICK:
        masks = params.get("mask", [])
        masks = [masks] if isinstance(masks, str) else masks
        if set(params) - {"mask"} or not isinstance(masks, list) or not all(isinstance(m, str) for m in masks):
            return doveadm.Refused("kick through a palomar proxy takes exactly one user name in mask "
                                   "(no other parameters)")
        return doveadm.target_user(doveadm.Command("", "", doveadm.KICK, tuple(masks), b""))
    user = params.get("user")
    if user is None:
        return doveadm.target_user(doveadm.Command("", "", command.name, (), b""))
    if not isinstance(user, str) or not user:
        return doveadm.Refused(f"{command.name}: the user parameter must be a non-empty string")
    return doveadm.target_user(doveadm.Command("", user, command.name, (), b""))


def with_target(command: ApiCommand, user: str) -> ApiCommand:
    """`command` for `user` (the passdb's name for the user it names)."""
    key = "mask" if command.name == KICK else "user"
    return ApiCommand(command.name, command.params | {key: [user] if key == "mask" else user}, command.tag)


def error_item(tag: str, exit_code: int, reason: str, kind: str = "exitCode") -> bytes:
    """Dovecot's error item, plus `reason`: the HTTP API has no log channel for the text the TCP
    protocol sends as a remote error line."""
    return (b'["error",{"type":' + json.dumps(kind).encode() + b', "exitCode":' + str(exit_code).encode()
            + b', "reason":' + json.dumps(reason, ensure_ascii=False).encode() + b"}," + json.dumps(tag).encode()
            + b"]")


def response_body(items: list[bytes]) -> bytes:
    """Dovecot's POST answer: the items in order, comma-separated, in one array."""
    return b"[" + b",".join(items) + b"]"


def items_of(status: int, body: bytes) -> bytes | None:
    """The items of a Dovecot POST answer for one command (the array without its brackets), or None
    when it is not a 200 with a JSON array."""
    text = body.strip()
    if status != 200 or not (text.startswith(b"[") and text.endswith(b"]")):
        return None
    return text[1:-1]


def parse_response(data: bytes) -> tuple[int, bytes]:
    """Status and body of Dovecot's whole HTTP response (read until it closed the connection)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ")
    if not sep or len(status_line) < 2 or not status_line[1].isdigit():
        raise doveadm.DoveadmProtocolError("broken HTTP response from Dovecot")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    elif headers.get("content-length", "").isdigit():
        body = body[:int(headers["content-length"])]
    return int(status_line[1]), body


def _dechunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            raise doveadm.DoveadmProtocolError("broken chunked HTTP response from Dovecot")
        try:
            size = int(data[pos:end].split(b";")[0], 16)
        except ValueError:
            raise doveadm.DoveadmProtocolError("broken chunked HTTP response from Dovecot") from None
        if size == 0:
            return bytes(out)
        out += data[end + 2:end + 2 + size]
        pos = end + 2 + size + 2


def dovecot_request(command: ApiCommand, password: str) -> bytes:
    """The POST the backend sends its Dovecot for one forwarded command (Basic auth with doveadm_password)."""
    body = b"[" + command.encode() + b"]"
    credentials = base64.b64encode(f"doveadm:{password}".encode()).decode()
    return (f"POST {PATH} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {credentials}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

