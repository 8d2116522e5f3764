"""`palomar proxy`: run the client-facing proxy role (one process, or a parent and its workers)."""

from __future__ import annotations

import os

import click

from palomar.cli.service_cmd import load_or_exit, run_service


@click.command()
@click.option("-c", "--config", "config_path", envvar="PALOMAR_CONFIG", default="/etc/palomar/palomar.conf",
              show_default=True, help="palomar proxy configuration file")
def proxy(config_path: str) -> None:
    """Run the proxy: authenticate clients, route them to their backend, relay."""
    from palomar.proxy.service import run_proxy
    from palomar.proxy.supervisor import ROLE_ENV, run_parent
    from palomar.proxy.workers import worker_count

    cfg = load_or_exit(config_path)
    if os.environ.get(ROLE_ENV):
        _run_worker(cfg, os.environ[ROLE_ENV])
        return
    count = worker_count(cfg.services)
    if count == 1:
        run_service(cfg, "proxy", lambda: run_proxy(cfg))
    else:
        run_service(cfg, "proxy", lambda: run_parent(cfg, config_path, count))


def _run_worker(cfg, role_text: str) -> None:
    """A worker started by the proxy's parent: the parent's sockets, no pid file (the parent holds it)."""
    import asyncio
    import signal
    import socket
    import sys

    from palomar.proxy.penalty_link import PENALTY_ENV
    from palomar.proxy.service import run_proxy
    from palomar.proxy.supervisor import SOCKETS_ENV, STARTUP_FAILED, decode_sockets, die_with_parent
    from palomar.proxy.workers import WorkerRole
    from palomar.service_runtime import raise_fd_limit, setup_logging

    die_with_parent()
    setup_logging(cfg, "proxy")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise_fd_limit()
    role = WorkerRole.decode(role_text)
    sockets = decode_sockets(os.environ.get(SOCKETS_ENV, ""))
    link = os.environ.get(PENALTY_ENV)
    penalty_link = socket.socket(fileno=int(link)) if link else None
    ready = asyncio.Event()
    try:
        asyncio.run(run_proxy(cfg, ready=ready, sockets=sockets, role=role, penalty_link=penalty_link))
    except KeyboardInterrupt:
        pass
    except (RuntimeError, OSError) as exc:
        click.echo(f"palomar proxy worker {role.index}: {exc}", err=True)
        sys.exit(1 if ready.is_set() else STARTUP_FAILED)
