"""The login check of a direct-path backend (`cluster_backend_path = direct`): Dovecot asks, palomar decides.

Proxies log in to this backend's Dovecot themselves, as the master user. Dovecot's passdb for the
target user is a dict lookup over a UNIX socket to this service (dovecot_config.py), which runs the
same ownership check as a hop (`service.admit`: fresh GeoDB data, pending moves, the move fence)
and answers with passdb fields:

| decision | answer | what the proxy sees |
|---|---|---|
| served here | `{"nopassword": "y"}` | Dovecot's own login reply |
| referral | `nologin` + reason `palomar-referral <host> <why>` | IMAP `NO [CONTACTADMIN] palomar-referral ...`, POP3 `-ERR [AUTH] palomar-referral ...`: the proxy follows it |
| not served / GeoDB down | `F` (dict failure) | IMAP `NO [UNAVAILABLE] Temporary authentication failure`: the proxy's temporary failure |

Dovecot's `nologin` + `host` would make IMAP's `[REFERRAL imap://...]` code but POP3 loses the host
and is answered only after the auth failure delay; the reason text reaches both at once.

A served login holds its user against moves (the move fence, as an LMTP recipient does) until its
session starts: the session's process makes a dict *userdb* lookup with the same Dovecot session id
right before it exists (verified with Dovecot 2.3.19). There the check runs `moved_during_login`:
a move that reached the user meanwhile fails the session (`N`: Dovecot's "Internal login
failure", the client retries and is referred); otherwise `{}` lets the static userdb answer and
the hold ends `SETTLE_AFTER_START` later, once Dovecot has registered the session, so a waiting
move's `doveadm kick` sees it. A userdb lookup without a held login (LMTP, doveadm, a hop login
already settled) is answered `{}`. A login whose session never starts (the client left) releases
its hold after `UNSTARTED_HOLD`.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from palomar.boundary import is_store_error, log_failure
from palomar.dovecot_login import REFERRAL_MARK
from palomar.logsafe import safe
from palomar.protocols import dict_server, hop

if TYPE_CHECKING:
    from palomar.backend.service import BackendState

log = logging.getLogger("palomar.backend")

PASSDB_KEY = "shared/passdb/"
"""The dict passdb's key (`password_key = passdb/%{session}`, Dovecot adds `shared/`); the user
comes in the lookup's own user field, so the key only carries Dovecot's session id."""
USERDB_KEY = "shared/userdb/"
"""The dict userdb's key (`user_key = userdb/%{session}`): the same session id as the login's passdb
lookup; empty for LMTP deliveries and doveadm commands."""
SERVED = dict_server.found(json.dumps({"nopassword": "y"}).encode())
STARTING = dict_server.found(b"{}")
"""The userdb reply that lets the session start (the static userdb after it gives uid, gid, home)."""
SETTLE_AFTER_START = 1.0
"""Seconds a login's hold outlives its userdb lookup: Dovecot registers the session (what
`doveadm who` and `doveadm kick` see) right after it."""
UNSTARTED_HOLD = 30.0
"""Seconds a served login holds its user when no session follows (the client left after the passdb)."""


@dataclass
class _Held:
    user: str
    group: object
    hold: object
    expiry: asyncio.TimerHandle


def referral_fields(host: str, reason: str) -> bytes:
    """The passdb answer that makes Dovecot refuse the login with a referral the proxy understands."""
    return json.dumps({"nopassword": "y", "nologin": "y",
                       "reason": " ".join([REFERRAL_MARK, host, *reason.split()])}).encode()


class LoginCheck:
    """Answers the dict lookups of one backend's Dovecot; keeps the served logins whose session has
    not started yet, by Dovecot session id."""

    def __init__(self, state: BackendState) -> None:
        self.state = state
        self.held: dict[str, _Held] = {}

    async def answer(self, lookup: dict_server.Lookup) -> bytes:
        """One dict reply line for one lookup (its user is the login's target user)."""
        reply = self.answer_now(lookup)
        if reply is not None:
            return reply
        return await self._passdb(lookup.user, lookup.key.removeprefix(PASSDB_KEY))

    def answer_now(self, lookup: dict_server.Lookup) -> bytes | None:
        """The reply when it needs no GeoDB read (the userdb's, a refusal), else None: `answer` it."""
        if not lookup.user:
            return dict_server.failed("a palomar login check lookup without a user")
        if lookup.key.startswith(PASSDB_KEY):
            return None
        if lookup.key.startswith(USERDB_KEY):
            return self._userdb(lookup.user, lookup.key.removeprefix(USERDB_KEY))
        return dict_server.failed("not a palomar login check key")

    async def _passdb(self, user: str, session: str) -> bytes:
        from palomar.backend.service import Admitted, admit

        state = self.state
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
        if state.moves is not None:
            self._release(session)  # a session id is never reused; a repeat must not leak the first hold
            expiry = asyncio.get_running_loop().call_later(UNSTARTED_HOLD, self._release, session)
            self.held[session] = _Held(user, decision.group, decision.hold, expiry)
        log.info("session=%s user=%s login check: served here", safe(session), safe(user))
        return SERVED

    def _userdb(self, user: str, session: str) -> bytes:
        """The session is about to start: the last moment a move can still stop it."""
        held = self.held.get(session) if session else None
        moves = self.state.moves
        if held is None or held.user != user or moves is None:
            return STARTING
        del self.held[session]
        held.expiry.cancel()
        moved_to = moves.moved_during_login(user, held.group)
        if moved_to is not None:
            moves.end_delivery(held.hold)
            log.info("session=%s user=%s login check: moved to %s during the login, session refused",
                     safe(session), safe(user), moved_to)
            return dict_server.NOT_FOUND
        asyncio.get_running_loop().call_later(SETTLE_AFTER_START, moves.end_delivery, held.hold)
        return STARTING

    def _release(self, session: str) -> None:
        held = self.held.pop(session, None)
        if held is not None and self.state.moves is not None:
            held.expiry.cancel()
            self.state.moves.end_delivery(held.hold)


WRITE_AT_ONCE_LIMIT = 64 * 1024
"""Bytes Dovecot may leave unread before an immediate reply goes through the draining writer."""


async def serve_connection(check: LoginCheck, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection of Dovecot's dict client. It pipelines lookups: they run concurrently and
    are answered in the order they came, as the client expects. A reply that needs no GeoDB read
    (the userdb's) is written at once when no earlier reply is pending: no task, no queue."""
    conn = dict_server.DictServerConnection()
    replies: asyncio.Queue[asyncio.Task[bytes] | bytes | None] = asyncio.Queue()
    pending = 0
    """Replies queued and not yet written."""

    async def write_in_order() -> None:
        nonlocal pending
        while (reply := await replies.get()) is not None:
            writer.write(reply if isinstance(reply, bytes) else await reply)
            pending -= 1
            await writer.drain()

    writing = asyncio.create_task(write_in_order())
    try:
        while conn.error is None and (data := await reader.read(65536)):
            for lookup in conn.receive(data):
                reply = None if pending else check.answer_now(lookup)
                if reply is not None and writer.transport.get_write_buffer_size() < WRITE_AT_ONCE_LIMIT:
                    writer.write(reply)
                    continue
                pending += 1
                replies.put_nowait(reply if reply is not None else asyncio.create_task(check.answer(lookup)))
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
    check = LoginCheck(state)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)  # no moment in which another local user could connect
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(previous)
    _restrict(path)
    server = await asyncio.start_unix_server(lambda r, w: serve_connection(check, r, w), sock=sock)
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
