"""Admin commands a backend accepts over the hop (docs/design/backend-hop.md, "Admin channel").

`palomar cluster kick`, `group access` and `user access` must act *on* a backend: close its
relayed sessions, kick its Dovecot, start a move it owns; proxies ask it for its Dovecot's
pre-login capabilities (`capabilities`). They reach it the way sessions do,
through an authenticated hop with protocol `doveadm` and a TLV 0xE9 carrying a small JSON
command, so no second listener or secret is needed. The reply is `OK <base64 JSON>` or
`FAIL <code> <text>`.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from palomar.backend.dovecot_caps import CapabilityReadError, read_capabilities
from palomar.logsafe import safe
from palomar.protocols import hop

if TYPE_CHECKING:
    from palomar.backend.service import BackendState

log = logging.getLogger("palomar.backend.admin")

COMMANDS = ("kick", "group-access", "user-access", "capabilities")
_NEEDED = {"kick": "user", "group-access": "group", "user-access": "user", "capabilities": None}
"""The argument each command needs (None: none)."""


class AdminError(Exception):
    """A malformed admin command; the text goes back to the caller."""


def encode_command(cmd: str, **args: str) -> bytes:
    """The TLV 0xE9 payload for one command (the CLI's side)."""
    return json.dumps({"cmd": cmd, **args}, separators=(",", ":")).encode()


def decode_command(payload: bytes) -> dict[str, str]:
    """Parse and check a command: a JSON object with a known `cmd` and string arguments."""
    try:
        data = json.loads(payload.decode())
    except (UnicodeDecodeError, ValueError):
        raise AdminError("admin command is not JSON") from None
    if not isinstance(data, dict) or data.get("cmd") not in COMMANDS:
        raise AdminError(f"unknown admin command (expected one of {', '.join(COMMANDS)})")
    if not all(isinstance(v, str) and v and "\x00" not in v for v in data.values()):
        raise AdminError("admin command arguments must be non-empty strings")
    needed = _NEEDED[data["cmd"]]
    if needed is not None and needed not in data:
        raise AdminError(f"admin command {data['cmd']} needs '{needed}'")
    return data


def decode_result(reply: hop.HopReply) -> dict[str, Any]:
    """The CLI's side: the JSON result of an `OK`, or AdminError with the backend's reason."""
    if isinstance(reply, hop.LoggedIn):
        try:
            result = json.loads(reply.text.decode())
        except (UnicodeDecodeError, ValueError):
            raise AdminError("backend sent an unreadable result") from None
        if not isinstance(result, dict):
            raise AdminError("backend sent an unreadable result")
        return result
    if isinstance(reply, hop.Failure):
        raise AdminError(f"backend refused: {reply.text or reply.code}")
    raise AdminError(f"backend referred the command to {reply.host}")


async def _run(state: BackendState, command: dict[str, str]) -> dict[str, Any]:
    if command["cmd"] == "capabilities":  # a proxy learning what to offer before login
        try:
            return {"backend": state.name, **await read_capabilities(state.dovecot)}
        except CapabilityReadError as exc:
            raise AdminError(str(exc)) from None
    moves = state.moves
    if moves is None:
        raise AdminError("this backend runs no move executor")
    if command["cmd"] == "kick":
        return await moves.kick(command["user"])
    if command["cmd"] == "user-access":
        outcome = await moves.user_access(command["user"])
        return {"user": command["user"], "backend": state.name, "result": outcome}
    name = command["group"]
    assert state.site_id is not None
    group = await state.geodb.group_get(state.site_id, name)
    if group is None:
        raise AdminError(f"group '{name}' does not exist in this backend's site")
    outcome = await moves.group_access(group)
    return {"group": name, "backend": state.name, "result": outcome}


async def execute_admin(state: BackendState, request: hop.HopRequest) -> hop.HopReply:
    """Run the command of a verified admin hop and build the reply line."""
    assert request.admin is not None
    try:
        command = decode_command(request.admin)
        log.info("admin session=%s cmd=%s args=%s", request.session_id, safe(command["cmd"]),
                 safe(",".join(f"{k}={v}" for k, v in command.items() if k != "cmd")))
        result = await _run(state, command)
    except AdminError as exc:
        return hop.Failure("protocol", str(exc))
    except Exception as exc:  # the GeoDB or Dovecot failed; the caller gets one line
        log.warning("admin session=%s failed: %s", request.session_id, exc)
        return hop.Failure("internal", f"{type(exc).__name__}: {exc}")
    return hop.LoggedIn(json.dumps(result, default=str).encode())
