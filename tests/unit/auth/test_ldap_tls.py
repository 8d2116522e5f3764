"""The ldap passdb's TLS: the certificate's host name is checked by the SSL context during the
handshake (no call of the deprecated `ssl.match_hostname`), against the server's host name."""

from __future__ import annotations

import socket
import ssl
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from palomar.auth.ldap_driver import LdapArgsError, LdapConf, LdapDriver
from palomar.devcluster.certs import hop_certificates

HOST = "127.0.0.1"


def _tls_server(cert: Path, key: Path) -> tuple[socket.socket, threading.Thread]:
    """A loopback TLS server that completes one handshake (or sees it fail) and closes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server((HOST, 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def _handshake(driver: LdapDriver, port: int) -> None:
    """What ldap3 does to open ldaps://HOST:port: wrap the connected socket, handshake at once."""
    connection = SimpleNamespace(socket=socket.create_connection((HOST, port), 10), server=SimpleNamespace(host=HOST))
    driver._tls.wrap_socket(connection, do_handshake=True)
    connection.socket.close()


def _driver(ca: Path, require: str = "demand") -> LdapDriver:
    return LdapDriver(LdapConf.from_settings({"hosts": HOST, "base": "dc=x", "tls_ca_cert_file": str(ca),
                                              "tls_require_cert": require}, "ldap.conf"))


@pytest.mark.parametrize("cert_host", [HOST, "127.0.0.5"])
def test_the_host_name_is_checked_without_deprecated_calls(tmp_path: Path, cert_host: str) -> None:
    certs = hop_certificates(tmp_path, [cert_host])
    pair = certs.backends[cert_host]
    listener, thread = _tls_server(pair.cert, pair.key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cert_host == HOST:
            _handshake(_driver(certs.ca), listener.getsockname()[1])
        else:  # a certificate for another host, from the trusted CA
            with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
                _handshake(_driver(certs.ca), listener.getsockname()[1])
    thread.join(10)
    listener.close()
    assert not [w for w in caught if "match_hostname" in str(w.message)]


def test_a_certificate_for_another_host_is_accepted_when_not_required(tmp_path: Path) -> None:
    certs = hop_certificates(tmp_path, ["127.0.0.5"])
    pair = certs.backends["127.0.0.5"]
    listener, thread = _tls_server(pair.cert, pair.key)
    _handshake(_driver(certs.ca, require="allow"), listener.getsockname()[1])
    thread.join(10)
    listener.close()


def test_unusable_tls_args_are_refused_when_the_passdb_is_built(tmp_path: Path) -> None:
    with pytest.raises(LdapArgsError, match="tls_ca_cert_file"):
        _driver(tmp_path / "missing-ca.crt")
    certs = hop_certificates(tmp_path, [HOST])
    with pytest.raises(LdapArgsError, match="tls_cipher_suite"):
        LdapDriver(LdapConf.from_settings({"hosts": HOST, "base": "dc=x", "tls_ca_cert_file": str(certs.ca),
                                           "tls_cipher_suite": "NO-SUCH-CIPHER"}, "ldap.conf"))
