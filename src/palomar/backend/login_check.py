"""The login check of a direct-path backend (`cluster_backend_path = direct`): Dovecot asks, palomar decides.

Proxies log in to this backend's Dovecot themselves, as the master user. Dovecot's passdb for the
target user is a dict lookup over a UNIX socket to this service (dovecot_config.py), which runs the
same ownership check as a hop (`service.admit`: fresh GeoDB data, pending moves, the move fence)
and answers with passdb fields:

| decision | answer | what the proxy sees |
|---|---|---|
| served here | `{"nopassword": "y"}` | Dovecot's own login reply |
| referral | `nologin` + reason `palomar-referral <host> <why>` | IMAP `NO [CONTACTADMIN] palomar-referral ...`, POP3 `-ERR [AUTH] palomar-referral ...`: the proxy follows it |
| not served / GeoDB down | `F` (dict failure) | IMAP `NO [UNAVAILABLE]`, POP3 `-ERR [SYS/TEMP]`: the proxy's temporary failure |

Dovecot's `nologin` + `host` would make IMAP's `[REFERRAL imap://...]` code but POP3 loses the host
and is answered only after the auth failure delay; the reason text reaches both at once.

A served login holds its user against moves for `LOGIN_SETTLE` seconds: Dovecot starts the
session within milliseconds of the answer, so a move that starts meanwhile waits and then kicks
it (its `doveadm kick` sees the session) instead of missing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from palomar.boundary import is_store_error, log_failure
from palomar.dovecot_login import REFERRAL_MARK
from palomar.logsafe import safe
from palomar.protocols import dict_server, hop

if TYPE_CHECKING:
    from palomar.backend.service import BackendState

log = logging.getLogger("palomar.backend")

LOGIN_SETTLE = 2.0
"""Seconds a served login holds its user against moves (Dovecot starts the session meanwhile)."""
PASSDB_KEY = "shared/passdb/"
"""The dict passdb's key (`password_key = passdb/%{session}`, Dovecot adds `shared/`); the user
comes in the lookup's own user field, so the key only carries Dovecot's session id for the log."""
SERVED = json.dumps({"nopassword": "y"}).encode()


def referral_fields(host: str, reason: str) -> bytes:
    """The passdb answer that makes Dovecot refuse the login with a referral the proxy understands."""
    return json.dumps({"nopassword": "y", "nologin": "y",
                       "reason": " ".join([REFERRAL_MARK, host, *reason.split()])}).encode()


async def answer(state: BackendState, lookup: dict_server.Lookup) -> bytes:
    """One dict reply line for one passdb lookup (its user is the login's target user)."""
    from palomar.backend.service import Admitted, admit

    user, session = lookup.user, lookup.key.removeprefix(PASSDB_KEY)
    if not lookup.key.startswith(PASSDB_KEY) or not user:
        return dict_server.failed("not a palomar login check key")
    try:
        decision = await admit(state, user, session)
    except Exception as exc:
        log_failure(log, f"session={safe(session)} user={safe(user)} login check", exc)
        return dict_server.failed("cluster state temporarily unavailable" if is_store_error(exc)
                                  else "internal error")
    if isinstance(decision, hop.Referral):
        return dict_server.found(referral_fields(decision.host, decision.reason))
    if not isinstance(decision, Admitted):
        return dict_server.failed(decision.text)
    state.logins += 1
    moves = state.moves
    if moves is not None:
        asyncio.get_running_loop().call_later(LOGIN_SETTLE, moves.end_delivery, decision.hold)
    log.info("session=%s user=%s login check: served here", safe(session), safe(user))
    return dict_server.found(SERVED)


async def serve_connection(state: BackendState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection of Dovecot's dict client. It pipelines lookups: they run concurrently and
    are answered in the order they came, as the client expects."""
    conn = dict_server.DictServerConnection()
    replies: asyncio.Queue[asyncio.Task[bytes] | None] = asyncio.Queue()

    async def write_in_order() -> None:
        while (task := await replies.get()) is not None:
            writer.write(await task)

    async def unsupported(command: str) -> bytes:
        return dict_server.failed(f"palomar's login check dict is read-only ({command!r})")

    writing = asyncio.create_task(write_in_order())
    try:
        while conn.error is None and (data := await reader.read(65536)):
            for command in conn.receive(data):
                replies.put_nowait(asyncio.create_task(
                    answer(state, command) if isinstance(command, dict_server.Lookup)
                    else unsupported(command.command)))
        if conn.error is not None:
            log.warning("login check socket: %s; closing the connection", conn.error)
    except ConnectionError:
        pass
    finally:
        replies.put_nowait(None)
        with contextlib.suppress(ConnectionError):
            await writing
        writer.close()


async def start_login_check(state: BackendState, path: Path) -> asyncio.AbstractServer:
    """Listen on `path` (replacing a stale socket), readable by Dovecot's auth process only."""
    path.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(lambda r, w: serve_connection(state, r, w), path=str(path))
    _restrict(path)
    log.info("backend %s answering Dovecot's login checks on %s", state.name, path)
    return server


def _restrict(path: Path, internal_group: str = "dovecot") -> None:
    """0660 root:dovecot when running as root (Dovecot's auth process runs as its internal user),
    else 0600: Dovecot then runs as this same user."""
    if os.geteuid() == 0:
        try:
            os.chown(path, 0, grp.getgrnam(internal_group).gr_gid)
            os.chmod(path, 0o660)
            return
        except KeyError:
            pass
    os.chmod(path, 0o600)
