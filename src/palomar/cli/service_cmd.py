"""Shared start-up for the service commands: load the config, set up logging, run, exit cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import click

from palomar.config import Config, ConfigError, load


def load_or_exit(path: str) -> Config:
    try:
        return load(path)
    except ConfigError as exc:
        click.echo(f"palomar: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"palomar: cannot read {path}: {exc.strerror}", err=True)
        sys.exit(1)


def run_service(cfg: Config, role: str, main: Callable[[], Awaitable[int | None]]) -> None:
    """Run a role's main coroutine; a start-up failure is one clear line, not a traceback. A status the
    coroutine returns (a proxy parent: 1 when a worker failed) is the exit status."""
    from palomar.service_runtime import pid_file, raise_fd_limit, setup_logging

    setup_logging(cfg, role)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the role's loop handles it: HUP must never kill
    limit = raise_fd_limit()
    logging.getLogger("palomar").info("open-files limit %d", limit)
    status = None
    try:
        with pid_file(cfg, role):
            status = asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except (RuntimeError, OSError) as exc:
        click.echo(f"palomar {role}: {exc}", err=True)
        sys.exit(1)
    if status:
        sys.exit(status)
