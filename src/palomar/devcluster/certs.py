"""A throwaway self-signed certificate for localhost / 127.0.0.1, made by the openssl CLI."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def self_signed(directory: Path, name: str = "localhost", days: int = 2) -> CertPair:
    """Write `name.crt`/`name.key` (EC P-256) into `directory`, valid for localhost and 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(pair.key), "-out", str(pair.cert), "-days", str(days), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"],
        stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=30)
    pair.key.chmod(0o600)
    return pair
