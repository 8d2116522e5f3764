"""palomar: an open mail-cluster layer for Dovecot CE backends."""

__version__ = "0.1.0"
