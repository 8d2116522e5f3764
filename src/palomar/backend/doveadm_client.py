"""The backend's client of its local Dovecot's doveadm HTTP API: `who` and `kick` for one user.

http.client on a keep-alive connection, run in a worker thread: Dovecot 2.3 does not answer
a failed authentication on a request that says `Connection: close` (urllib would hang until
its timeout), and the event loop must never wait on a socket read.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import threading
from typing import Any


class DoveadmError(Exception):
    """doveadm could not be asked (unreachable, refused, or an error answer); safe to log."""


def _rows(body: Any) -> list[dict[str, Any]]:
    """Every row object in a doveadm response, however Dovecot nested it.

    Dovecot 2.3's `who` puts rows after the first outside the result list, so the rows
    are collected from the whole response entry rather than from its second element.
    """
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(body)
    return found


class DoveadmClient:
    """One keep-alive HTTP connection to `host:port` with a fixed Authorization header
    (Basic `doveadm:<password>` by default)."""

    def __init__(self, host: str, port: int, password: str = "", *, authorization: str = "",
                 timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self._auth = authorization or "Basic " + base64.b64encode(f"doveadm:{password}".encode()).decode()
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DoveadmClient({self.host}:{self.port})"

    def post(self, payload: Any, authorization: str | None = None) -> tuple[int, Any]:
        """POST `payload` to /doveadm/v1; (HTTP status, parsed body, or the text if it is not JSON)."""
        body = json.dumps(payload).encode()
        headers = {"Authorization": authorization or self._auth, "Content-Type": "application/json"}
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                try:
                    self._conn.request("POST", "/doveadm/v1", body=body, headers=headers)
                    response = self._conn.getresponse()
                    data = response.read()
                except (http.client.HTTPException, OSError) as exc:
                    self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise DoveadmError(f"doveadm: {exc}") from None
                    continue
                break
        text = data.decode(errors="replace")
        try:
            return response.status, json.loads(text) if text else []
        except ValueError:
            return response.status, text

    def call(self, command: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Run one command; its result rows (blocking: from a thread or outside an event loop)."""
        status, parsed = self.post([[command, params, "c1"]])
        if status != 200:
            raise DoveadmError(f"doveadm {command}: HTTP {status}")
        if not parsed or not isinstance(parsed, list) or not parsed[0] or parsed[0][0] != "doveadmResponse":
            kind = parsed[0][0] if parsed and isinstance(parsed, list) and parsed[0] else "nothing"
            raise DoveadmError(f"doveadm {command}: {kind}")
        return _rows(parsed[0][1:])

    async def sessions(self, user: str) -> int:
        """How many connections Dovecot has for `user` (0 when none)."""
        rows = await asyncio.to_thread(self.call, "who", {"mask": user})
        return sum(int(r.get("connections", 1)) for r in rows if r.get("username") == user)

    async def kick(self, user: str) -> None:
        """Disconnect every Dovecot session of `user`."""
        await asyncio.to_thread(self.call, "kick", {"mask": [user]})

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
