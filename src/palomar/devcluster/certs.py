"""Throwaway certificates made by the openssl CLI: a self-signed one for localhost / 127.0.0.1
(client-facing TLS), and a CA with per-backend certificates for the hop."""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def self_signed(directory: Path, name: str = "localhost", days: int = 2, hosts: tuple[str, ...] = ()) -> CertPair:
    """Write `name.crt`/`name.key` (EC P-256) into `directory`, valid for localhost, 127.0.0.1 and
    `hosts` (clients that verify the name, such as doveadm, reach proxies by their own addresses)."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    names = ",".join(["DNS:localhost", "IP:127.0.0.1", "IP:::1", *(_san(h) for h in hosts if h != "127.0.0.1")])
    _openssl("req", "-x509", *_EC_KEY, "-keyout", str(pair.key), "-out", str(pair.cert), "-days", str(days),
             "-subj", "/CN=localhost", "-addext", f"subjectAltName={names}")
    pair.key.chmod(0o600)
    return pair


@dataclass(frozen=True)
class HopCertificates:
    """A throwaway CA and, per backend host, a certificate it signed for the hop."""

    ca: Path
    backends: dict[str, CertPair]


def hop_certificates(directory: Path, hosts: list[str], days: int = 2, usage: str = "serverAuth"
                     ) -> HopCertificates:
    """Write `hop-ca.crt` and `<host>.crt`/`<host>.key` for each backend host (an IP address or a
    DNS name, put in the certificate's subjectAltName): what `cluster_hop_ssl` needs. `usage` is the
    extendedKeyUsage (`clientAuth` for client certificates)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "hop-ca.crt", directory / "hop-ca.key"
    _openssl("req", "-x509", *_EC_KEY, "-keyout", str(ca_key), "-out", str(ca), "-days", str(days),
             "-subj", "/CN=palomar devcluster hop CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    ca_key.chmod(0o600)
    pairs = {}
    for host in hosts:
        pair = CertPair(directory / f"hop-{host}.crt", directory / f"hop-{host}.key")
        csr = directory / f"hop-{host}.csr"
        _openssl("req", "-new", *_EC_KEY, "-keyout", str(pair.key), "-out", str(csr), "-subj", f"/CN={host}")
        pair.key.chmod(0o600)
        extensions = directory / f"hop-{host}.ext"
        extensions.write_text(f"subjectAltName={_san(host)}\nbasicConstraints=critical,CA:FALSE\n"
                              f"keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
                              "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-days", str(days), "-out", str(pair.cert), "-extfile", str(extensions))
        csr.unlink()
        extensions.unlink()
        pairs[host] = pair
    return HopCertificates(ca, pairs)


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _san(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"DNS:{host}"
    return f"IP:{host}"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=30)
