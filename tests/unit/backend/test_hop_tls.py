"""TLS on the hop (`cluster_hop_ssl`): the backend's accept path and the proxy's HopClient over
real loopback sockets, with every misconfiguration an operator can make ending in a clear
refusal on both sides, never a hang."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from palomar.backend import service
from palomar.backend.service import BackendState, handle_hop
from palomar.config import load
from palomar.devcluster.certs import HopCertificates, hop_certificates
from palomar.net.hop_tls import HopTlsError, hop_client_context, hop_server_context
from palomar.net.link import open_link
from palomar.net.server import AcceptLoop, listen_socket
from palomar.proxy import hop_client
from palomar.proxy.hop_client import HopClient, HopFailed, HopTarget

HOST = "127.0.0.1"
TARGET = HopTarget(user="u@example.test", protocol="imap", session_id="s-1", client=("192.0.2.1", 1000),
                   local=("127.0.0.1", 143), client_tls=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> HopCertificates:
    return hop_certificates(tmp_path_factory.mktemp("hop-tls"), [HOST])


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> HopCertificates:
    return hop_certificates(tmp_path_factory.mktemp("other-ca"), [HOST])


def backend_config(tmp_path: Path, certs: HopCertificates, *, tls: bool = True):
    pair = certs.backends[HOST]
    lines = ["@cluster_defaults = backend", f"cluster_backend_name = {HOST}", "cluster_local_site = DC1",
             "cluster_hop_secret = s", "cluster_backend_dovecot_master_password = m"]
    lines += [f"cluster_hop_ssl_cert_file = {pair.cert}", f"cluster_hop_ssl_key_file = {pair.key}"] if tls else [
        "cluster_hop_ssl = no"]
    path = tmp_path / "backend.conf"
    path.write_text("\n".join(lines) + "\n")
    return load(path)


def proxy_config(tmp_path: Path, ca: Path | None):
    lines = ["@cluster_defaults = proxy", "cluster_local_site = DC1", "cluster_hop_secret = s", "ssl = no",
             "cluster_proxy_check_backends = no"]
    lines.append(f"cluster_hop_ssl_ca_file = {ca}" if ca else "cluster_hop_ssl = no")
    path = tmp_path / "proxy.conf"
    path.write_text("\n".join(lines) + "\n")
    return load(path)


class Backend:
    """The backend's hop listener, in process; its refusals are what the tests look at."""

    def __init__(self, state: BackendState) -> None:
        self.state = state
        self.sock = listen_socket(HOST, 0)
        self.port = self.sock.getsockname()[1]
        self.loop = AcceptLoop(self.sock, lambda s: handle_hop(state, s))


@pytest.fixture
async def backend_factory() -> AsyncIterator:
    started: list[Backend] = []

    def start(cfg) -> Backend:
        # Only the refusal path runs here: no GeoDB, LocalDB or Dovecot is reached.
        state = BackendState(geodb=None, localdb=None, name=HOST, site_name="DC1",  # type: ignore[arg-type]
                             secret=b"not-the-proxies-secret", dovecot=None,  # type: ignore[arg-type]
                             tls=hop_server_context(cfg))
        backend = Backend(state)
        backend.loop.start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.loop.close()


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the backend logged about hops it did not serve."""
    return [r.getMessage() for r in caplog.records if r.name == "palomar.backend" and r.getMessage().startswith("hop from")]


async def test_tls_hop_carries_challenge_and_header(tmp_path, certs, backend_factory, caplog) -> None:
    """Both sides TLS: the handshake, the challenge and the header go through; the (wrong) secret
    is then refused by the MAC, which shows the header reached the backend intact."""
    backend = backend_factory(backend_config(tmp_path, certs))
    hops = HopClient(b"proxies-secret", backend.port, tls=hop_client_context(proxy_config(tmp_path, certs.ca)),
                     connect_timeout=10, answer_timeout=10)
    caplog.set_level(logging.INFO)
    outcome = await hops.connect(HOST, TARGET)
    assert isinstance(outcome, HopFailed) and outcome.text == "hop refused"
    assert any("hop MAC mismatch" in m for m in refusals(caplog))


async def test_next_hop_to_a_backend_resumes_the_tls_session(tmp_path, certs, backend_factory,
                                                             monkeypatch) -> None:
    """The first hop to a backend makes a full handshake, the next ones resume its session (no
    certificate signature and verification per login); another backend gets a session of its own."""
    backend = backend_factory(backend_config(tmp_path, certs))
    hops = HopClient(b"proxies-secret", backend.port, tls=hop_client_context(proxy_config(tmp_path, certs.ca)),
                     connect_timeout=10, answer_timeout=10)
    resumed: list[bool] = []

    async def recording_open_link(*args, **kwargs):
        link = await open_link(*args, **kwargs)
        resumed.append(link.transport.get_extra_info("ssl_object").session_reused)
        return link

    monkeypatch.setattr(hop_client, "open_link", recording_open_link)
    for _ in range(3):
        outcome = await hops.connect(HOST, TARGET)
        assert isinstance(outcome, HopFailed) and outcome.text == "hop refused"  # the TLS part went through
    assert resumed == [False, True, True]
    assert set(hops.sessions) == {HOST}


async def test_proxy_with_another_ca_refuses_the_backend(tmp_path, certs, other_ca, backend_factory,
                                                         caplog) -> None:
    backend = backend_factory(backend_config(tmp_path, certs))
    hops = HopClient(b"s", backend.port, tls=hop_client_context(proxy_config(tmp_path, other_ca.ca)), connect_timeout=10, answer_timeout=10)
    caplog.set_level(logging.INFO)
    outcome = await hops.connect(HOST, TARGET)
    assert isinstance(outcome, HopFailed)
    assert "backend certificate not accepted" in outcome.text and "cluster_hop_ssl_ca_file" in outcome.text
    assert outcome.error_code == "proxy_dest_connect_failed"
    # the proxy's TLS alert reaches the backend (its socket BIO sends it before the close)
    await _logged(caplog, "refused: TLS handshake failed (TLSV1_ALERT_UNKNOWN_CA")


async def test_proxy_checks_the_name_of_the_backend(tmp_path, certs, backend_factory) -> None:
    """The certificate is for 127.0.0.1; reached as `localhost` it does not name the host."""
    backend = backend_factory(backend_config(tmp_path, certs))
    hops = HopClient(b"s", backend.port, tls=hop_client_context(proxy_config(tmp_path, certs.ca)), connect_timeout=10, answer_timeout=10)
    outcome = await hops.connect("localhost", TARGET)
    assert isinstance(outcome, HopFailed) and "certificate not accepted" in outcome.text
    assert "Hostname mismatch" in outcome.text


async def test_tls_proxy_and_plaintext_backend(tmp_path, certs, backend_factory, caplog) -> None:
    backend = backend_factory(backend_config(tmp_path, certs, tls=False))
    hops = HopClient(b"s", backend.port, tls=hop_client_context(proxy_config(tmp_path, certs.ca)), connect_timeout=10, answer_timeout=10)
    caplog.set_level(logging.INFO)
    outcome = await hops.connect(HOST, TARGET)
    assert isinstance(outcome, HopFailed) and "is cluster_hop_ssl = yes on the backend too?" in outcome.text
    await _logged(caplog, "a TLS handshake arrived but this backend has cluster_hop_ssl = no")


async def test_plaintext_proxy_and_tls_backend(tmp_path, certs, backend_factory, caplog, monkeypatch) -> None:
    monkeypatch.setattr(service, "HOP_HEADER_TIMEOUT", 0.3)  # the backend's bound on a silent client
    backend = backend_factory(backend_config(tmp_path, certs))
    hops = HopClient(b"s", backend.port, tls=hop_client_context(proxy_config(tmp_path, None)), connect_timeout=30, answer_timeout=30)
    caplog.set_level(logging.INFO)
    outcome = await hops.connect(HOST, TARGET)
    assert isinstance(outcome, HopFailed)
    assert outcome.text == "backend closed the hop before its challenge (is cluster_hop_ssl = no there too?)"
    await _logged(caplog, "no TLS handshake in time")


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """The backend logs its side of a failed handshake; the proxy may learn of it first."""
    import asyncio

    async with asyncio.timeout(10):
        while not any(text in m for m in refusals(caplog)):
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("role,lines,message", [
    ("backend", ["cluster_hop_ssl_cert_file = /nonexistent/hop.crt", "cluster_hop_ssl_key_file = /nonexistent/hop.key"],
     "cluster_hop_ssl_cert_file /nonexistent/hop.crt / cluster_hop_ssl_key_file /nonexistent/hop.key: cannot load "
     "the certificate and key: No such file or directory"),
    ("proxy", ["cluster_hop_ssl_ca_file = /nonexistent/ca.crt"],
     "cluster_hop_ssl_ca_file /nonexistent/ca.crt: cannot load CA certificates: No such file or directory"),
])
def test_missing_files_stop_the_start_with_one_clear_line(tmp_path, role, lines, message) -> None:
    base = {"backend": ["cluster_backend_name = b", "cluster_backend_dovecot_master_password = m"],
            "proxy": ["cluster_proxy_check_backends = no", "ssl = no"]}[role]
    path = tmp_path / "x.conf"
    path.write_text("\n".join([f"@cluster_defaults = {role}", "cluster_local_site = DC1", "cluster_hop_secret = s",
                               *base, *lines]) + "\n")
    build = hop_server_context if role == "backend" else hop_client_context
    with pytest.raises(HopTlsError) as info:
        build(load(path))
    assert str(info.value) == message


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path, certs, other_ca) -> None:
    path = tmp_path / "b.conf"
    path.write_text("\n".join(["@cluster_defaults = backend", "cluster_backend_name = b", "cluster_local_site = DC1",
                               "cluster_hop_secret = s", "cluster_backend_dovecot_master_password = m",
                               f"cluster_hop_ssl_cert_file = {certs.backends[HOST].cert}",
                               f"cluster_hop_ssl_key_file = {other_ca.backends[HOST].key}"]) + "\n")
    with pytest.raises(HopTlsError, match="cannot load the certificate and key: KEY_VALUES_MISMATCH"):
        hop_server_context(load(path))


async def _until(condition, bound: float = 10.0) -> None:
    async with asyncio.timeout(bound):
        while not condition():
            await asyncio.sleep(0.01)


def _counting_open_link(monkeypatch) -> list[bool]:
    """Records each hop opened: True when a login opened it, False for a spare made in the background."""
    opened: list[bool] = []

    async def counting(*args, **kwargs):
        task = asyncio.current_task()
        opened.append(task is None or task.get_coro().__name__ != "_make_spare")
        return await open_link(*args, **kwargs)

    monkeypatch.setattr(hop_client, "open_link", counting)
    return opened


async def test_the_next_login_uses_the_spare_hop_opened_after_the_last_one(tmp_path, certs, backend_factory,
                                                                          monkeypatch, caplog) -> None:
    """After a hop, the client opens the next one (connect, TLS, challenge) in the background; the
    next login to that backend only writes its header on it: no connection is made during it."""
    backend = backend_factory(backend_config(tmp_path, certs))
    hops = HopClient(b"proxies-secret", backend.port, tls=hop_client_context(proxy_config(tmp_path, certs.ca)),
                     connect_timeout=10, answer_timeout=10, spares=True)
    opened = _counting_open_link(monkeypatch)
    caplog.set_level(logging.INFO)
    try:
        assert isinstance(await hops.connect(HOST, TARGET), HopFailed)
        await _until(lambda: hops.has_spare(HOST))
        assert opened == [True, False]
        before = len(opened)
        outcome = await hops.connect(HOST, TARGET)
        assert not any(opened[before:]), "the login opened a hop of its own"
        assert isinstance(outcome, HopFailed) and outcome.text == "hop refused"  # its header reached the backend
        assert sum("hop MAC mismatch" in m for m in refusals(caplog)) == 2
    finally:
        hops.close_spares()


async def test_a_spare_the_backend_gave_up_on_is_replaced_by_a_fresh_hop(tmp_path, certs, backend_factory,
                                                                       monkeypatch, caplog) -> None:
    """A spare that waited past the backend's header timeout (closed with a refusal) is not used:
    the login opens a fresh hop and reaches the backend."""
    backend = backend_factory(backend_config(tmp_path, certs))
    hops = HopClient(b"proxies-secret", backend.port, tls=hop_client_context(proxy_config(tmp_path, certs.ca)),
                     connect_timeout=10, answer_timeout=10, spares=True)
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(service, "HOP_HEADER_TIMEOUT", 1.0)  # the spare waits longer than this
    try:
        assert isinstance(await hops.connect(HOST, TARGET), HopFailed)
        await _until(lambda: hops.has_spare(HOST))
        await _until(lambda: any("no hop header in time" in m for m in refusals(caplog)) and not hops.has_spare(HOST))
        opened = _counting_open_link(monkeypatch)
        outcome = await hops.connect(HOST, TARGET)
        assert opened[:1] == [True], "the login did not open a fresh hop"
        assert isinstance(outcome, HopFailed) and outcome.text == "hop refused"
        assert sum("hop MAC mismatch" in m for m in refusals(caplog)) == 2
    finally:
        hops.close_spares()


async def test_a_spare_nobody_used_is_closed_in_time(tmp_path, certs, backend_factory, monkeypatch) -> None:
    backend = backend_factory(backend_config(tmp_path, certs))
    monkeypatch.setattr(hop_client, "SPARE_MAX_AGE", 0.05)
    hops = HopClient(b"proxies-secret", backend.port, tls=hop_client_context(proxy_config(tmp_path, certs.ca)),
                     connect_timeout=10, answer_timeout=10, spares=True)
    assert isinstance(await hops.connect(HOST, TARGET), HopFailed)
    await _until(lambda: hops.has_spare(HOST))
    await _until(lambda: not hops.has_spare(HOST))


async def test_probe_clients_keep_no_spares(tmp_path, certs, backend_factory, monkeypatch) -> None:
    """A probe must test a fresh connection to the backend, so `with_timeout` clients keep no spares."""
    backend = backend_factory(backend_config(tmp_path, certs))
    hops = HopClient(b"proxies-secret", backend.port, tls=hop_client_context(proxy_config(tmp_path, certs.ca)),
                     connect_timeout=10, answer_timeout=10, spares=True)
    probe = hops.with_timeout(5)
    opened = _counting_open_link(monkeypatch)
    for _ in range(2):
        assert isinstance(await probe.connect(HOST, TARGET), HopFailed)
    assert opened == [True, True] and not probe.has_spare(HOST)


async def test_a_stopping_backend_closes_hops_still_waiting_for_their_header(tmp_path, certs, backend_factory,
                                                                            monkeypatch) -> None:
    """A spare hop (challenge read, no header yet) must not hold a backend's stop for the header
    timeout: the stop closes it at once, and the proxy then sees it closed."""
    monkeypatch.setattr(service, "HOP_HEADER_TIMEOUT", 60.0)
    monkeypatch.setattr(hop_client, "SPARE_MAX_AGE", 60.0)  # only the backend closes it here
    backend = backend_factory(backend_config(tmp_path, certs))
    hops = HopClient(b"proxies-secret", backend.port, tls=hop_client_context(proxy_config(tmp_path, certs.ca)),
                     connect_timeout=10, answer_timeout=10, spares=True)
    try:
        assert isinstance(await hops.connect(HOST, TARGET), HopFailed)
        await _until(lambda: hops.has_spare(HOST))
        backend.state.drain.stop_readers()
        await _until(lambda: not hops.has_spare(HOST), bound=10.0)
    finally:
        hops.close_spares()
