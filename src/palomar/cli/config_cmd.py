"""`palomar config check|show`."""

from __future__ import annotations

import click


@click.group()
def config() -> None:
    """Validate and show palomar configuration files."""
