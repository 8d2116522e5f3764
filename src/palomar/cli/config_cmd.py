"""`palomar config check|show`: validate a configuration file, or print what it amounts to."""

from __future__ import annotations

import sys

import click

from palomar.config import Config, ConfigError, load
from palomar.config.show import render


def _load_or_exit(path: str) -> Config:
    """Load `path`, or print each problem as `file:line: message` and exit 1 (never a traceback)."""
    try:
        return load(path)
    except ConfigError as exc:
        for line in exc.lines:
            click.echo(line, err=True)
        sys.exit(1)


@click.group()
def config() -> None:
    """Validate and show palomar configuration files."""


@config.command()
@click.argument("file", type=click.Path(dir_okay=False))
def check(file: str) -> None:
    """Validate FILE and everything it includes."""
    cfg = _load_or_exit(file)
    count = len(cfg.set_names)
    click.echo(f"{file}: ok (role {cfg.role or 'none'}, {count} setting{'s' if count != 1 else ''})")


@config.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--all", "include_defaults", is_flag=True, help="Also show settings left at their defaults.")
def show(file: str, include_defaults: bool) -> None:
    """Print the effective configuration of FILE (secrets masked)."""
    cfg = _load_or_exit(file)
    click.echo(f"# palomar config show {file} (role {cfg.role or 'none'})")
    for line in render(cfg, include_defaults):
        click.echo(line)
