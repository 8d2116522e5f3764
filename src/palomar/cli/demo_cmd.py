"""`palomar demo`: a whole cluster on this machine, until Ctrl-C."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click


@click.command()
@click.option("--dir", "root", default="demo-run", show_default=True, type=click.Path(file_okay=False),
              help="working directory for configs, mail, logs and the GeoDB")
@click.option("--imap-port", default=1143, show_default=True, help="HAProxy's IMAP port (STARTTLS)")
@click.option("--imaps-port", default=1993, show_default=True, help="HAProxy's IMAPS port")
@click.option("--pop3-port", default=1110, show_default=True, help="HAProxy's POP3 port (STLS)")
@click.option("--pop3s-port", default=1995, show_default=True, help="HAProxy's POP3S port")
@click.option("--submission-port", default=1587, show_default=True, help="HAProxy's Submission port (STARTTLS)")
@click.option("--submissions-port", default=1465, show_default=True, help="HAProxy's Submission port (TLS)")
@click.option("--sieve-port", default=4190, show_default=True, help="HAProxy's ManageSieve port (STARTTLS)")
@click.option("--users", default=20, show_default=True, help="how many demo users to create")
def demo(root: str, imap_port: int, imaps_port: int, pop3_port: int, pop3s_port: int, submission_port: int,
         submissions_port: int, sieve_port: int, users: int) -> None:
    """Start two Dovecot backends with palomar in front, two proxies and HAProxy (embedded GeoDB)."""
    from palomar.devcluster.cluster import LbPorts, LocalCluster

    path = Path(root).resolve()
    if (path / "geodb.sqlite").exists():
        click.echo(f"palomar demo: {path} holds an earlier demo; remove it or pass --dir", err=True)
        sys.exit(1)
    cluster = LocalCluster(path, users_count=users, lb_ports=LbPorts(imap=imap_port, imaps=imaps_port, pop3=pop3_port, pop3s=pop3s_port,
                                                          sieve=sieve_port, submission=submission_port,
                                                          submissions=submissions_port),
                           controller=True,
                           allow_cleartext=True)
    click.echo("palomar demo: starting Dovecot backends, palomar backends, proxies and HAProxy ...")
    try:
        cluster.start()
    except (RuntimeError, OSError) as exc:
        cluster.stop()
        click.echo(f"palomar demo: could not start: {exc}", err=True)
        sys.exit(1)
    user = cluster.users[0]
    click.echo(f"""
palomar demo is running (site DC1, GeoDB {cluster.geodb_path}).

  IMAP (STARTTLS or plain) 127.0.0.1:{cluster.lb_imap}    IMAPS 127.0.0.1:{cluster.lb_imaps}
  POP3 (STLS or plain)     127.0.0.1:{cluster.lb_pop3}    POP3S 127.0.0.1:{cluster.lb_pop3s}
  Submission (STARTTLS)    127.0.0.1:{cluster.lb_submission}    Submission (TLS) 127.0.0.1:{cluster.lb_submissions}
  ManageSieve (STARTTLS)   127.0.0.1:{cluster.lb_sieve}
  user {user.name}   password {user.password}   (user1 .. user{users}, passwordN)

  Try:  curl -k --ssl-reqd 'imap://127.0.0.1:{cluster.lb_imap}/INBOX' -u '{user.name}:{user.password}'
        curl -k 'pop3s://127.0.0.1:{cluster.lb_pop3s}/' -u '{user.name}:{user.password}'
        swaks --server 127.0.0.1 --port {cluster.lb_submission} --tls --auth-user {user.name} \\
              --auth-password {user.password} --to someone@example.test
        sieve-connect --server 127.0.0.1 --port {cluster.lb_sieve} --user {user.name} --notlsverify --list
        palomar cluster -c {cluster.admin_config} backend list
        palomar cluster -c {cluster.admin_config} group list

  Backends: {", ".join(f"{b.name} {b.host}" for b in cluster.backends)}
  Proxies:  {", ".join(f"{p.name} {p.host} (metrics http://{p.host}:{p.metrics}/metrics)" for p in cluster.proxies)}
  Controller (health on): metrics http://127.0.0.1:{cluster.controller_metrics}/metrics
  Mail submitted is relayed to a recording sink on 127.0.0.1 (nothing leaves this machine).
  Logs under {path}.  Ctrl-C stops everything.
""")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("palomar demo: stopping ...")
        cluster.stop()
