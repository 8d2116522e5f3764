"""Client-side helpers for the stdlib mail clients: IMAP ID, SASL PLAIN as a master user.

imaplib knows neither the ID command nor a source address; both are what the palomar
backend does in front of Dovecot, so tests need them.
"""

from __future__ import annotations

import base64
import imaplib
import json
import socket
import ssl
from typing import Any

imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED", "LOGOUT"))


def sasl_plain(authzid: str, authcid: str, password: str) -> bytes:
    """The SASL PLAIN message: authzid NUL authcid NUL password."""
    return f"{authzid}\0{authcid}\0{password}".encode()


def sasl_plain_b64(authzid: str, authcid: str, password: str) -> str:
    return base64.b64encode(sasl_plain(authzid, authcid, password)).decode()


class IMAP4From(imaplib.IMAP4):
    """imaplib.IMAP4 that can connect from a chosen local address (e.g. 127.0.0.99)."""

    def __init__(self, host: str, port: int, source: str | None = None, timeout: float = 10.0) -> None:
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        source = (self._source, 0) if self._source else None
        return socket.create_connection((self.host, self.port), timeout, source_address=source)


def imap_id(imap: imaplib.IMAP4, fields: dict[str, str]) -> tuple[str, list[bytes]]:
    """Send `ID (...)`; before LOGIN it is what carries the client's address to Dovecot."""
    body = " ".join(f'"{key}" "{value}"' for key, value in fields.items())
    typ, data = imap._simple_command("ID", f"({body})")
    return typ, data


def imap_master_login(imap: imaplib.IMAP4, user: str, master_user: str, master_password: str) -> None:
    """AUTHENTICATE PLAIN with authzid=user, authcid=master user (raises imaplib.IMAP4.error)."""
    imap.authenticate("PLAIN", lambda _challenge: sasl_plain(user, master_user, master_password))


def tls_context() -> ssl.SSLContext:
    """A client context for the test clusters' self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def append_through_proxy(cluster: Any, user: str, password: str, subject: str) -> None:
    """One message APPENDed to the user's INBOX through the first proxy (IMAP, plaintext login)."""
    proxy = cluster.proxies[0]
    imap = imaplib.IMAP4(proxy.host, proxy.imap)
    imap.login(user, password)
    message = f"From: a@example.test\r\nTo: {user}\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"
    imap.append("INBOX", None, None, message.encode())
    imap.logout()


def backend_of(cluster: Any, user: str) -> str:
    """The backend host the GeoDB assigns the user's group to (asked through `palomar cluster`)."""
    group = json.loads(cluster.cluster("--json", "user", "status", user).stdout)["group"]
    groups = json.loads(cluster.cluster("--json", "group", "list").stdout)
    return next(g["backend"] for g in groups if g["name"] == group)


def hop_socket(cluster: Any, host: str, timeout: float = 10.0) -> socket.socket:
    """A connection to the hop port of backend `host`, over TLS (verified with the cluster's hop
    CA) when the cluster runs hop TLS, as a proxy would open it."""
    sock = socket.create_connection((host, cluster.hop_port), timeout=timeout)
    if not cluster.hop_tls:
        return sock
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cluster.hop_tls_dir / "hop-ca.crt")
    return context.wrap_socket(sock, server_hostname=host)


def read_lines(sock: socket.socket, count: int) -> list[bytes]:
    """Up to `count` CRLF lines (fewer if the peer closes first)."""
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.splitlines(keepends=True)[:count]
