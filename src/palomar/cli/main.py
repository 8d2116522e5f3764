"""The `palomar` command: one entry point, one sub-command group per role."""

from __future__ import annotations

import click

from palomar import __version__
from palomar.cli import backend_cmd, cluster_cmd, config_cmd, controller_cmd, demo_cmd, proxy_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="palomar")
def main() -> None:
    """palomar: an open mail-cluster layer for Dovecot CE."""


main.add_command(config_cmd.config)
main.add_command(cluster_cmd.cluster)
main.add_command(backend_cmd.backend)
main.add_command(proxy_cmd.proxy)
main.add_command(controller_cmd.controller)
main.add_command(demo_cmd.demo)
