"""`palomar controller`: run the per-site automation role."""

from __future__ import annotations

import click

from palomar.cli.service_cmd import load_or_exit, run_service


@click.command()
@click.option("-c", "--config", "config_path", envvar="PALOMAR_CONFIG", default="/etc/palomar/palomar.conf",
              show_default=True, help="palomar controller configuration file")
def controller(config_path: str) -> None:
    """Run the site's controller: backend health and the other automation features."""
    from palomar.controller.service import run_controller

    cfg = load_or_exit(config_path)
    run_service(cfg, "controller", lambda: run_controller(cfg))
