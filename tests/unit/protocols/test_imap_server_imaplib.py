"""ImapLoginServer driven over a loopback socket by Python's own imaplib, a client we did not write."""

from __future__ import annotations

import imaplib
import socket
import threading

import pytest

from palomar.protocols.imap import AUTH_FAILED, Close, ImapLoginServer, LoginRequest, tagged

USERS = {"alice": 'p"w\\ d'}


def serve_one(listener: socket.socket, seen: list) -> None:
    """A minimal blocking driver: what the proxy service does, without the backend."""
    conn, _ = listener.accept()
    conn.settimeout(10)
    core = ImapLoginServer(starttls=False, secured=True, allow_cleartext=False)
    with conn:
        conn.sendall(core.greeting())
        while True:
            data = conn.recv(4096)
            if not data:
                return
            events = core.receive(data)
            while events:
                event = events.pop(0)
                seen.append(event)
                if isinstance(event, Close):
                    conn.sendall(core.data_to_send())
                    return
                if isinstance(event, LoginRequest):
                    if USERS.get(event.username) == event.password:
                        conn.sendall(tagged(event.tag, "OK", "[CAPABILITY IMAP4rev1 IDLE] Logged in"))
                        core.login_succeeded()
                        seen.append(core.leftover())
                        return
                    events.extend(core.login_failed(event.tag, AUTH_FAILED))
            conn.sendall(core.data_to_send())


@pytest.fixture
def imap_server():
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list = []
    thread = threading.Thread(target=serve_one, args=(listener, seen), daemon=True)
    thread.start()
    yield listener.getsockname()[1], seen
    thread.join(timeout=10)
    listener.close()
    assert not thread.is_alive()


def test_imaplib_login_failure_then_success(imap_server):
    port, seen = imap_server
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        assert "AUTH=PLAIN" in client.capabilities
        assert client.xatom("ID", '("name" "imaplib")')[0] == "OK"
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login("alice", "wrong")
        typ, data = client.login("alice", USERS["alice"])
        assert typ == "OK"
        assert data == [b"[CAPABILITY IMAP4rev1 IDLE] Logged in"]
    finally:
        client.shutdown()
    logins = [e for e in seen if isinstance(e, LoginRequest)]
    assert [(e.username, e.password) for e in logins] == [("alice", "wrong"), ("alice", USERS["alice"])]


def test_imaplib_authenticate_plain_via_continuation(imap_server):
    port, seen = imap_server
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        typ, _ = client.authenticate("PLAIN", lambda _challenge: b"\0alice\0" + USERS["alice"].encode())
        assert typ == "OK"
    finally:
        client.shutdown()
    login = next(e for e in seen if isinstance(e, LoginRequest))
    assert (login.command, login.mechanism, login.username) == ("AUTHENTICATE", "PLAIN", "alice")
