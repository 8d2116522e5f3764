"""palomar configuration: Dovecot-syntax files, the settings registry, validation.

    cfg = load("/etc/palomar/palomar.conf")
    cfg["cluster_local_site"], cfg.role, cfg.passdbs, cfg.services["imap-login"].listeners
"""

from palomar.config.errors import ConfigError, Issue, Location
from palomar.config.loader import Config, load
from palomar.config.model import (
    ListenerSettings,
    PassdbSettings,
    ServiceSettings,
)

__all__ = [
    "Config",
    "ConfigError",
    "Issue",
    "ListenerSettings",
    "Location",
    "PassdbSettings",
    "ServiceSettings",
    "load",
]
