"""The integration harness itself: HAProxy really sends PROXY v2, certificates verify, stop leaves nothing."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
import threading
from pathlib import Path

import pytest

from palomar.devcluster.certs import self_signed
from palomar.devcluster.dovecot import DovecotInstance, backend_params
from palomar.devcluster.haproxy import HAProxyInstance, Listen, render_haproxy_cfg
from palomar.devcluster.net import free_port, port_accepts
from palomar.devcluster.procs import is_running, snapshot_tree

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class _HeaderRecorder:
    """A loopback TCP server that records the PROXY v2 header of every connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.headers: list[tuple[int, str, int]] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    head = _recv_exact(conn, 16)
                    body = _recv_exact(conn, struct.unpack("!H", head[14:16])[0])
                except OSError:
                    continue
                if head[:12] != PROXY_V2_SIGNATURE:
                    continue
                command, family = head[12], head[13]
                src, port = "", 0
                if family == 0x11:  # TCP over IPv4
                    src = str(ipaddress.IPv4Address(body[0:4]))
                    port = struct.unpack("!H", body[8:10])[0]
                with self.cond:
                    self.headers.append((command, src, port))
                    self.cond.notify_all()

    def wait_for(self, source: str, timeout: float = 10.0) -> tuple[int, str, int]:
        def match() -> list[tuple[int, str, int]]:
            return [h for h in self.headers if h[1] == source]

        with self.cond:
            assert self.cond.wait_for(match, timeout), f"no PROXY header from {source}: {self.headers}"
            return match()[0]

    def close(self) -> None:
        self.sock.close()


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def test_haproxy_config_follows_the_seed_sample() -> None:
    text = render_haproxy_cfg([Listen("imap4", [("127.0.0.1", 10143), ("::1", 10143)],
                                      [("127.0.0.2", 20143), ("127.0.0.3", 20143)])])
    assert "  bind 127.0.0.1:10143\n  bind [::1]:10143\n" in text
    assert "  mode tcp" in text and "  balance roundrobin" in text
    assert "  server imap4-1 127.0.0.2:20143 check inter 2s send-proxy-v2" in text
    assert "  server imap4-2 127.0.0.3:20143 check inter 2s send-proxy-v2" in text


def test_haproxy_sends_proxy_v2_with_the_client_address(harness_root: Path) -> None:
    recorder = _HeaderRecorder()
    bind = ("127.0.0.1", free_port("127.0.0.1"))
    haproxy = HAProxyInstance([Listen("imap4", [bind], [("127.0.0.1", recorder.port)])], harness_root / "haproxy1")
    try:
        haproxy.start()
        with socket.create_connection(bind, timeout=10, source_address=("127.0.0.55", 0)) as client:
            client_port = client.getsockname()[1]
            command, src, port = recorder.wait_for("127.0.0.55")
        assert command == 0x21  # version 2, PROXY
        assert port == client_port
    finally:
        haproxy.stop()
        recorder.close()
    assert not port_accepts(*bind)


def test_self_signed_certificate_verifies_for_localhost(harness_root: Path) -> None:
    pair = self_signed(harness_root / "certs")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pair.cert, pair.key)
    client_ctx = ssl.create_default_context(cafile=str(pair.cert))
    listener = socket.create_server(("127.0.0.1", 0))
    result: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            result.append(tls.version() or "")

    thread = threading.Thread(target=serve)
    thread.start()
    with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.getpeercert()["subject"] == ((("commonName", "localhost"),),)
    thread.join(10)
    listener.close()
    assert result and result[0].startswith("TLS")


def test_stopping_a_dovecot_instance_leaves_no_process(harness_root: Path, mail_root: Path) -> None:
    instance = DovecotInstance(backend_params("stopcheck", "127.0.0.4", harness_root, mail_root))
    instance.start()
    try:
        assert instance.pid is not None
        # A keep-alive doveadm HTTP connection stays open while stopping (it once kept children alive).
        assert instance.doveadm_http("who") == []
        tree = snapshot_tree(instance.pid)
        assert len(tree) >= 5  # master, log, config, anvil, stats, login processes ...
    finally:
        instance.stop()
    assert [p for p in tree if is_running(p)] == []
    assert not port_accepts("127.0.0.4", instance.params.imap_port)


def test_a_dovecot_that_cannot_start_is_reported(harness_root: Path, mail_root: Path) -> None:
    params = backend_params("portclash", "127.0.0.5", harness_root, mail_root)
    squatter = socket.create_server(("127.0.0.5", params.pop3_port))
    instance = DovecotInstance(params)
    try:
        with pytest.raises(RuntimeError, match="portclash did not start") as info:
            instance.start(timeout=15)
        assert "Address already in use" in str(info.value)
        assert not instance.running()
    finally:
        instance.stop()
        squatter.close()
