"""`palomar cluster ...`: the admin commands of `doveadm cluster`."""

from __future__ import annotations

import click


@click.group()
def cluster() -> None:
    """Administer the cluster state in the GeoDB."""
