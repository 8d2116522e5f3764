"""The POP3 and ManageSieve login cores against real peers nobody here wrote.

Client side: the cores log in to a real Dovecot backend as the master user, forwarding
the client's address with XCLIENT. Server side: Python's poplib and sieve-connect talk
to the server cores over loopback sockets, with STLS/STARTTLS and real TLS.
"""

from __future__ import annotations

import itertools
import os
import poplib
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from palomar.devcluster.certs import CertPair, self_signed
from palomar.devcluster.dovecot import DovecotInstance
from palomar.protocols import managesieve, pop3

_forwarded = itertools.count(1)


def _user() -> str:
    return f"u{uuid.uuid4().hex[:10]}@example.test"


def _xclient() -> dict[str, str]:
    """A fresh forwarded address per login: Dovecot's auth penalty is per client address."""
    return {"ADDR": f"198.51.100.{next(_forwarded)}", "PORT": "40001", "SESSION": uuid.uuid4().hex[:16],
            "TTL": "4"}


def _read_line(sock: socket.socket, buffered: bytes = b"") -> bytes:
    data = buffered
    while b"\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


Core = pop3.Pop3LoginClient | managesieve.SieveLoginClient


def _login(core: Core, host: str, port: int, source: str | None = None) -> tuple[object, socket.socket]:
    """Drive a client core on a real socket until it has a result; the socket stays open."""
    sock = socket.create_connection((host, port), timeout=15, source_address=(source, 0) if source else None)
    while True:
        data = sock.recv(4096)
        result = core.receive(data) if data else core.connection_lost()
        out = core.data_to_send()
        if out:
            sock.sendall(out)
        if result is not None:
            return result, sock


@pytest.fixture
def b1(dovecot_backends: dict[str, DovecotInstance]) -> DovecotInstance:
    return dovecot_backends["backend1"]


def _pop3_client(b1: DovecotInstance, user: str, xclient: dict[str, str], password: str | None = None
                 ) -> pop3.Pop3LoginClient:
    return pop3.Pop3LoginClient(user, master_user=b1.params.master_user,
                                master_password=password or b1.params.master_password, xclient=xclient)


def _sieve_client(b1: DovecotInstance, user: str, xclient: dict[str, str], password: str | None = None
                  ) -> managesieve.SieveLoginClient:
    return managesieve.SieveLoginClient(user, master_user=b1.params.master_user,
                                        master_password=password or b1.params.master_password,
                                        xclient=xclient)


# --------------------------------------------------------------------------- client cores -> Dovecot


def test_pop3_client_master_login_forwards_client_address(b1: DovecotInstance) -> None:
    user, xclient = _user(), _xclient()
    core = _pop3_client(b1, user, xclient)
    result, sock = _login(core, b1.host, b1.params.pop3_port)
    with sock:
        assert isinstance(result, pop3.LoggedIn), result
        assert result.ok_line == b"+OK Logged in.\r\n"
        assert core.xclient_sent
        sock.sendall(b"STAT\r\n")
        assert _read_line(sock, core.leftover()) == b"+OK 0 0\r\n"
        sock.sendall(b"QUIT\r\n")
    line = b1.wait_for_log(
        rf"pop3-login: Info: Login: user=<{user}>.*session=<{xclient['SESSION']}>").group(0)
    assert f"rip={xclient['ADDR']}," in line
    b1.wait_for_log(rf"Master user logging in as {user}")


def test_pop3_client_wrong_master_password_is_an_auth_failure(b1: DovecotInstance) -> None:
    core = _pop3_client(b1, _user(), _xclient(), password=b1.params.master_password + "x")
    result, sock = _login(core, b1.host, b1.params.pop3_port)
    sock.close()
    assert isinstance(result, pop3.LoginFailed), result
    assert (result.kind, result.response_code) == ("auth", "AUTH")
    assert result.line == b"-ERR [AUTH] Authentication failed.\r\n"


def test_pop3_client_from_untrusted_source_sends_no_xclient(b1: DovecotInstance) -> None:
    user = _user()
    core = _pop3_client(b1, user, _xclient())
    result, sock = _login(core, b1.host, b1.params.pop3_port, source="127.0.0.98")
    sock.close()
    assert isinstance(result, pop3.LoggedIn), result
    assert not core.xclient_sent
    assert "rip=127.0.0.98," in b1.wait_for_log(rf"pop3-login: Info: Login: user=<{user}>.*").group(0)


def test_sieve_client_master_login_forwards_client_address(b1: DovecotInstance) -> None:
    user, xclient = _user(), _xclient()
    core = _sieve_client(b1, user, xclient)
    result, sock = _login(core, b1.host, b1.params.sieve_port)
    with sock:
        assert isinstance(result, managesieve.LoggedIn), result
        assert result.ok_line.startswith(b"OK")
        assert "fileinto" in (result.capabilities["SIEVE"] or "").split()
        assert core.xclient_sent
        sock.sendall(b"LISTSCRIPTS\r\n")
        assert _read_line(sock, core.leftover()).startswith(b"OK")
        sock.sendall(b"LOGOUT\r\n")
    line = b1.wait_for_log(
        rf"managesieve-login: Info: Login: user=<{user}>.*session=<{xclient['SESSION']}>").group(0)
    assert f"rip={xclient['ADDR']}," in line


def test_sieve_client_wrong_master_password_is_an_auth_failure(b1: DovecotInstance) -> None:
    core = _sieve_client(b1, _user(), _xclient(), password="not-the-master-password")
    result, sock = _login(core, b1.host, b1.params.sieve_port)
    sock.close()
    assert isinstance(result, managesieve.LoginFailed), result
    assert result.kind == "auth"
    assert result.line == b'NO "Authentication failed."\r\n'


def test_sieve_client_from_untrusted_source_sends_no_xclient(b1: DovecotInstance) -> None:
    user = _user()
    core = _sieve_client(b1, user, _xclient())
    result, sock = _login(core, b1.host, b1.params.sieve_port, source="127.0.0.98")
    sock.close()
    assert isinstance(result, managesieve.LoggedIn), result
    assert not core.xclient_sent and "XCLIENT" not in result.capabilities
    assert "rip=127.0.0.98," in b1.wait_for_log(rf"managesieve-login: Info: Login: user=<{user}>.*").group(0)


# --------------------------------------------------------------------------- real clients -> server cores

USERS = {"alice": "al1ce pw"}


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    return self_signed(tmp_path_factory.mktemp("tls"))


def _server_context(pair: CertPair) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    return context


Backend = Callable[[bytes], tuple[bytes, bool]]


def _pop3_backend(line: bytes) -> tuple[bytes, bool]:
    """What a logged-in POP3 session answers (stands in for the relayed backend)."""
    command = line.strip().upper()
    if command == b"STAT":
        return b"+OK 2 320\r\n", False
    if command == b"QUIT":
        return b"+OK Logging out.\r\n", True
    return b"-ERR Unknown command.\r\n", False


def _sieve_backend(line: bytes) -> tuple[bytes, bool]:
    command = line.strip().upper()
    if command == b"LISTSCRIPTS":
        return b'"vacation" ACTIVE\r\n"spam"\r\nOK "Listscripts completed."\r\n', False
    if command == b"CAPABILITY":
        return (b'"IMPLEMENTATION" "palomar"\r\n"SIEVE" "fileinto vacation"\r\n"VERSION" "1.0"\r\n'
                b'OK ""\r\n'), False
    if command == b"LOGOUT":
        return b'OK "Logout completed."\r\n', True
    return b'NO "Unknown command."\r\n', False


def _serve_one(listener: socket.socket, core, context: ssl.SSLContext, ok_line: bytes, failed: str,
               backend: Backend, seen: list) -> None:
    """A minimal blocking driver: what the proxy service does, with a fake backend after login.

    Every event is recorded in `seen` before the replies the core produced with it are sent: a
    client that has its reply may look at `seen` at once (e.g. the Close of a QUIT)."""
    conn, _ = listener.accept()
    conn.settimeout(10)
    conn.sendall(core.greeting())
    try:
        while True:
            data = conn.recv(4096)
            if not data:
                return
            events = core.receive(data)
            seen.extend(events)
            conn.sendall(core.data_to_send())
            while events:
                event = events.pop(0)
                if isinstance(event, (pop3.Close, managesieve.Close)):
                    return
                if isinstance(event, (pop3.StartTlsRequest, managesieve.StartTlsRequest)):
                    conn = context.wrap_socket(conn, server_side=True)
                    core.tls_started()
                elif USERS.get(event.username) == event.password:
                    conn.sendall(ok_line)
                    core.login_succeeded()
                    _relay_to_fake_backend(conn, core.leftover(), backend, seen)
                    return
                else:
                    more = core.login_failed(event.tag, failed)
                    seen.extend(more)
                    events.extend(more)
                conn.sendall(core.data_to_send())
    finally:
        conn.close()


def _relay_to_fake_backend(conn: socket.socket, pending: bytes, backend: Backend, seen: list) -> None:
    buffer = pending
    while True:
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            seen.append(line + b"\n")
            reply, done = backend(line)
            conn.sendall(reply)
            if done:
                return
        data = conn.recv(4096)
        if not data:
            return
        buffer += data


@pytest.fixture
def serve(tls_pair: CertPair) -> Iterator[Callable[..., tuple[int, list]]]:
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def start(core, ok_line: bytes, failed: str, backend: Backend) -> tuple[int, list]:
        listener = socket.create_server(("127.0.0.1", 0))
        seen: list = []
        args = (listener, core, _server_context(tls_pair), ok_line, failed, backend, seen)
        thread = threading.Thread(target=_serve_one, args=args, daemon=True)
        thread.start()
        threads.append(thread)
        listeners.append(listener)
        return listener.getsockname()[1], seen

    yield start
    for thread in threads:
        thread.join(timeout=15)
    for listener in listeners:
        listener.close()
    assert not any(thread.is_alive() for thread in threads)


def _pop3_server_core() -> pop3.Pop3LoginServer:
    return pop3.Pop3LoginServer(starttls=True, secured=False, allow_cleartext=False,
                                greeting="Palomar ready.")


def test_poplib_stls_failed_then_successful_login(serve, tls_pair: CertPair) -> None:
    port, seen = serve(_pop3_server_core(), b"+OK Logged in.\r\n", pop3.AUTH_FAILED, _pop3_backend)
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    assert client.getwelcome() == b"+OK Palomar ready."
    capa = client.capa()
    assert "STLS" in capa and "USER" not in capa and capa["SASL"] == []
    with pytest.raises(poplib.error_proto, match="Plaintext authentication disallowed"):
        client.user("alice")
    client.stls(ssl.create_default_context(cafile=str(tls_pair.cert)))
    assert client.capa()["SASL"] == ["PLAIN", "LOGIN"]
    client.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Authentication failed"):
        client.pass_("wrong")
    client.user("alice")
    assert client.pass_(USERS["alice"]) == b"+OK Logged in."
    assert client.stat() == (2, 320)
    assert client.quit() == b"+OK Logging out."
    logins = [e for e in seen if isinstance(e, pop3.LoginRequest)]
    assert [(e.username, e.command) for e in logins] == [("alice", "PASS"), ("alice", "PASS")]
    assert any(isinstance(e, pop3.StartTlsRequest) for e in seen)
    assert seen[-2:] == [b"STAT\r\n", b"QUIT\r\n"]


def test_poplib_quit_before_login(serve) -> None:
    port, seen = serve(_pop3_server_core(), b"+OK Logged in.\r\n", pop3.AUTH_FAILED, _pop3_backend)
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    assert client.quit() == b"+OK Logging out"
    assert seen == [pop3.Close("Aborted login (logged out)")]


def _sieve_connect(port: int, password: str, cafile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, password.encode() + b"\n")
    os.close(write_fd)
    try:
        return subprocess.run(
            ["sieve-connect", "--server", "127.0.0.1", "--port", str(port), "--user", "alice",
             "--passwordfd", str(read_fd), "--authmech", "PLAIN", "--tlscafile", str(cafile),
             "--tlshostname", "localhost", *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, pass_fds=(read_fd,))
    finally:
        os.close(read_fd)


def _sieve_server_core() -> managesieve.SieveLoginServer:
    return managesieve.SieveLoginServer(starttls=True, secured=False, allow_cleartext=False,
                                        sieve_extensions="fileinto vacation")


def test_sieve_connect_starttls_and_list(serve, tls_pair: CertPair) -> None:
    port, seen = serve(_sieve_server_core(), b'OK "Logged in."\r\n', managesieve.AUTH_FAILED, _sieve_backend)
    done = _sieve_connect(port, USERS["alice"], tls_pair.cert, "--list")
    assert done.returncode == 0, done.stderr
    assert "vacation" in done.stdout and "spam" in done.stdout
    assert any(isinstance(e, managesieve.StartTlsRequest) for e in seen)
    logins = [e for e in seen if isinstance(e, managesieve.LoginRequest)]
    assert [(e.username, e.mechanism) for e in logins] == [("alice", "PLAIN")]
    assert b"LISTSCRIPTS\r\n" in seen


def test_sieve_connect_wrong_password(serve, tls_pair: CertPair) -> None:
    port, seen = serve(_sieve_server_core(), b'OK "Logged in."\r\n', managesieve.AUTH_FAILED, _sieve_backend)
    done = _sieve_connect(port, "wrong", tls_pair.cert, "--list")
    assert done.returncode != 0
    assert "Authentication failed" in done.stdout + done.stderr
    assert [e.password for e in seen if isinstance(e, managesieve.LoginRequest)] == ["wrong"]
