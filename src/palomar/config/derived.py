"""Settings whose default follows from other settings, so that the seed's examples load as written.

The seed selects Cassandra by naming `cassandra_hosts`, and gives proxies and backends one
shared secret, `doveadm_password`. palomar's own secrets (the proxy-to-backend hop, the local
Dovecot's master login) default to keys derived from it, one per purpose, so the password
itself never travels as those and a leaked hop key does not reveal it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from palomar.config.loader import Config


def derive_secret(shared: str, purpose: str) -> str:
    """A key for `purpose` from the shared secret (HMAC-SHA256, hex); empty if `shared` is empty."""
    if not shared:
        return ""
    return hmac.new(shared.encode(), f"palomar {purpose}".encode(), hashlib.sha256).hexdigest()


def _geodb_driver(cfg: Config) -> str:
    return "cassandra" if cfg["cassandra_hosts"] else "sqlite"


def _from_doveadm_password(purpose: str) -> Callable[[Config], str]:
    return lambda cfg: derive_secret(cfg["doveadm_password"], purpose)


DERIVED: dict[str, Callable[[Config], Any]] = {
    "cluster_geodb_driver": _geodb_driver,
    "cluster_hop_secret": _from_doveadm_password("cluster_hop_secret"),
    "cluster_backend_dovecot_master_password": _from_doveadm_password("cluster_backend_dovecot_master_password"),
}
"""Setting -> its value when the configuration does not set it (instead of the registry default)."""
