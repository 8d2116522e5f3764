"""`palomar backend ...`: the backend role and its Dovecot configuration."""

from __future__ import annotations

import click


@click.group()
def backend() -> None:
    """The backend role: the service in front of a local Dovecot CE."""
