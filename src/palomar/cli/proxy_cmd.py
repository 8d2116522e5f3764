"""`palomar proxy`: run the client-facing proxy role."""

from __future__ import annotations

import click

from palomar.cli.service_cmd import load_or_exit, run_service


@click.command()
@click.option("-c", "--config", "config_path", envvar="PALOMAR_CONFIG", default="/etc/palomar/palomar.conf",
              show_default=True, help="palomar proxy configuration file")
def proxy(config_path: str) -> None:
    """Run the proxy: authenticate clients, route them to their backend, relay."""
    from palomar.proxy.service import run_proxy

    cfg = load_or_exit(config_path)
    run_service(cfg, "proxy", lambda: run_proxy(cfg))
