"""TLS on the proxy -> backend hop (`cluster_hop_ssl`, docs/design/backend-hop.md).

The backend serves its `cluster_hop_ssl_cert_file`; the proxy (and the admin CLI) trust only
`cluster_hop_ssl_ca_file` and check that the certificate names the backend host they meant to
reach (its `host` in the GeoDB). Both contexts are built once at start-up, so a missing or
unreadable file stops the service with one clear line instead of failing every session.
"""

from __future__ import annotations

import ssl

from palomar.config import Config


class HopTlsError(RuntimeError):
    """A hop TLS setting that cannot be used; the text names the setting and the file."""


def _enabled(cfg: Config) -> bool:
    return cfg["cluster_hop_ssl"] == "yes"


def hop_server_context(cfg: Config) -> ssl.SSLContext | None:
    """The backend's TLS context for the hop, or None with `cluster_hop_ssl = no`."""
    if not _enabled(cfg):
        return None
    cert, key = cfg["cluster_hop_ssl_cert_file"], cfg["cluster_hop_ssl_key_file"]
    if not cert or not key:
        raise HopTlsError("cluster_hop_ssl = yes needs cluster_hop_ssl_cert_file and cluster_hop_ssl_key_file "
                          "(or cluster_hop_ssl = no for a plaintext hop)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise HopTlsError(f"cluster_hop_ssl_cert_file {cert} / cluster_hop_ssl_key_file {key}: "
                          f"cannot load the certificate and key: {_reason(exc)}") from None
    return context


def hop_client_context(cfg: Config) -> ssl.SSLContext | None:
    """The proxy's (or admin CLI's) TLS context for the hop, or None with `cluster_hop_ssl = no`.

    Certificates are verified against `cluster_hop_ssl_ca_file` only (not the system store:
    the hop's certificates come from the cluster's own CA), host names checked.
    """
    if not _enabled(cfg):
        return None
    ca_file = cfg["cluster_hop_ssl_ca_file"]
    if not ca_file:
        raise HopTlsError("cluster_hop_ssl = yes needs cluster_hop_ssl_ca_file (the CA that signed the backends' "
                          "hop certificates), or cluster_hop_ssl = no for a plaintext hop")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise HopTlsError(f"cluster_hop_ssl_ca_file {ca_file}: cannot load CA certificates: {_reason(exc)}") from None
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def describe_tls_failure(exc: BaseException) -> str:
    """What a failed hop TLS handshake means, for a log line (the usual misconfigurations named)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS: backend certificate not accepted ({exc.verify_message}; check cluster_hop_ssl_ca_file "
                "and that the certificate names the backend's host)")
    if isinstance(exc, ssl.SSLError) and exc.reason in ("WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING",
                                                         "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"):
        return f"TLS handshake failed ({exc.reason}; is cluster_hop_ssl = yes on the backend too?)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({_reason(exc)})"
    return f"TLS handshake failed ({type(exc).__name__}: {exc or 'connection closed'})"
