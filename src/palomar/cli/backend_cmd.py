"""`palomar backend ...`: the backend role and its Dovecot configuration."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import click

from palomar.backend.dovecot_config import (
    DovecotConfigError,
    DovecotParams,
    direct_listeners_note,
    write_instance,
)

DEFAULT_RELAY = "127.0.0.1:25"
DEFAULT_METRICS_PORT = 19900


@click.group(invoke_without_command=True)
@click.option("-c", "--config", "config_path", envvar="PALOMAR_CONFIG", default="/etc/palomar/palomar.conf",
              show_default=True, help="palomar backend configuration file (for running the service)")
@click.pass_context
def backend(ctx: click.Context, config_path: str) -> None:
    """The backend role: the service in front of a local Dovecot CE.

    Without a sub-command, runs the service: accepts hops from proxies, checks that this
    backend owns each user, logs the user in to the local Dovecot and relays.
    """
    if ctx.invoked_subcommand is not None:
        return
    from palomar.backend.service import run_backend
    from palomar.cli.service_cmd import load_or_exit, run_service

    cfg = load_or_exit(config_path)
    run_service(cfg, "backend", lambda: run_backend(cfg))


def parse_host_port(text: str) -> tuple[str, int]:
    """`host:port` or `[v6addr]:port` -> (host, port); ValueError with a readable reason."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address as [ADDR]:PORT")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port out of range")
    return host, port


def params_from_config(cfg: Any, mail_root: Path, out_dir: Path, relay: tuple[str, int],
                       metrics_port: int) -> DovecotParams:
    """The Dovecot instance a palomar backend configuration implies.

    Dovecot's own runtime files live beside palomar's under `base_dir`; only the local
    palomar backend (connecting from 127.0.0.1 or the listen address) may forward client
    addresses.
    """
    name = cfg["cluster_backend_name"]
    if not name:
        raise DovecotConfigError("cluster_backend_name is not set")
    for setting in ("cluster_backend_dovecot_master_password", "doveadm_password"):
        if not cfg[setting]:
            raise DovecotConfigError(f"{setting} is not set")
    listen = cfg["cluster_backend_dovecot_host"]
    base_dir = Path(cfg["base_dir"])
    trusted = ["127.0.0.1/32", "::1/128"] if ":" in listen else ["127.0.0.1/32"]
    try:
        own = str(ipaddress.ip_network(listen))
    except ValueError:
        raise DovecotConfigError(f"cluster_backend_dovecot_host {listen!r} is not an IP address") from None
    if own not in trusted:
        trusted.append(own)
    return DovecotParams(
        instance_name=f"palomar-{name}",
        hostname=cfg["hostname"] or name,
        conf_dir=out_dir,
        base_dir=base_dir / "dovecot",
        state_dir=base_dir / "dovecot-state",
        log_path=base_dir / "dovecot.log",
        listen=listen,
        imap_port=cfg["cluster_backend_dovecot_imap_port"],
        pop3_port=cfg["cluster_backend_dovecot_pop3_port"],
        lmtp_port=cfg["cluster_backend_dovecot_lmtp_port"],
        submission_port=cfg["cluster_backend_dovecot_submission_port"],
        sieve_port=cfg["cluster_backend_dovecot_sieve_port"],
        doveadm_http_port=cfg["cluster_backend_dovecot_doveadm_http_port"],
        doveadm_tcp_port=cfg.doveadm_tcp_port,
        metrics_port=metrics_port,
        mail_root=mail_root,
        master_user=cfg["cluster_backend_dovecot_master_user"],
        master_password=cfg["cluster_backend_dovecot_master_password"],
        doveadm_password=cfg["doveadm_password"],
        trusted_networks=tuple(trusted),
        relay_host=relay[0],
        relay_port=relay[1],
        recipient_delimiter=cfg["recipient_delimiter"],
        **_direct_path(cfg),
    )


def _direct_path(cfg: Any) -> dict[str, Any]:
    """`cluster_backend_path = direct`: the login check passdb and the listeners proxies reach with a PROXY
    header, with TLS from the hop's certificate when cluster_hop_ssl = yes (the proxies check it as on the hop)."""
    if cfg["cluster_backend_path"] != "direct":
        return {}
    for setting in ("cluster_backend_direct_imap_port", "cluster_backend_direct_pop3_port",
                    "haproxy_trusted_networks"):
        if not cfg[setting]:
            raise DovecotConfigError(f"cluster_backend_path = direct: {setting} is not set (the Dovecot listeners "
                                     "proxies reach with a PROXY header need it)")
    tls = None
    if cfg["cluster_hop_ssl"] == "yes":
        tls = (Path(cfg["cluster_hop_ssl_cert_file"]), Path(cfg["cluster_hop_ssl_key_file"]))
    return {
        "login_check_socket": Path(cfg["cluster_backend_login_check_socket"]),
        "haproxy_imap_port": cfg["cluster_backend_direct_imap_port"],
        "haproxy_pop3_port": cfg["cluster_backend_direct_pop3_port"],
        "haproxy_submission_port": cfg["cluster_backend_direct_submission_port"],
        "haproxy_sieve_port": cfg["cluster_backend_direct_sieve_port"],
        "haproxy_trusted_networks": tuple(str(net) for net in cfg["haproxy_trusted_networks"]),
        "haproxy_listen": cfg["cluster_backend_direct_listen"],
        "haproxy_tls": tls,
    }


@backend.command("dovecot-config")
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="the palomar backend configuration")
@click.option("--mail-root", required=True, type=click.Path(file_okay=False),
              help="mail directory shared by all backends (writable by vmail)")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False),
              help="where to write dovecot.conf and the master passdb")
@click.option("--relay", default=DEFAULT_RELAY, show_default=True, metavar="HOST:PORT",
              help="SMTP relay of the submission service")
@click.option("--metrics-port", default=DEFAULT_METRICS_PORT, show_default=True, type=int,
              help="OpenMetrics HTTP port of the local Dovecot (0: off)")
def dovecot_config(config_path: str, mail_root: str, out_dir: str, relay: str, metrics_port: int) -> None:
    """Write the standalone dovecot.conf of the Dovecot CE behind this backend."""
    from palomar.config import ConfigError, load

    try:
        relay_addr = parse_host_port(relay)
    except ValueError as exc:
        raise click.UsageError(f"--relay: {exc}") from None
    try:
        cfg = load(config_path)
    except ConfigError as exc:
        raise click.ClickException("; ".join(exc.lines)) from None  # each line names file:line
    except OSError as exc:
        raise click.ClickException(f"{config_path}: {exc.strerror or exc}") from None
    try:
        params = params_from_config(cfg, Path(mail_root).resolve(), Path(out_dir).resolve(), relay_addr,
                                    metrics_port)
        files = write_instance(params)
    except DovecotConfigError as exc:
        raise click.ClickException(f"{config_path}: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    click.echo(f"wrote {files.config}")
    click.echo(f"wrote {files.master_passdb}")
    note = direct_listeners_note(params)
    if note is not None:
        click.echo(note)
    click.echo(f"mail root {params.mail_root} must exist and be writable by {params.mail_uid}")
    click.echo(f"start it with: dovecot -c {files.config}")
