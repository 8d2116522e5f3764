"""`palomar demo`: a whole cluster on this machine, until Ctrl-C.

It proves itself before it says it runs (one login per protocol through HAProxy), then
supervises its processes: a server that dies is reported and restarted. Started again on the
same `--dir`, it resumes with the mail and GeoDB it had.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import click

SUPERVISE_INTERVAL = 0.5


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
@click.option("--lmtp-port", default=1024, show_default=True, help="HAProxy's LMTP port")
@click.option("--ui-port", default=8100, show_default=True, help="the controller's web UI and REST API port")
@click.option("--doveadm-port", default=2300, show_default=True, help="HAProxy's doveadm TCP port")
@click.option("--doveadm-http-port", default=8080, show_default=True, help="HAProxy's doveadm HTTP API port")
@click.option("--users", default=20, show_default=True, help="how many demo users to create")
@click.option("--geodb", type=click.Choice(["sqlite", "cassandra"]), default="sqlite", show_default=True,
              help="GeoDB engine; cassandra starts a local node with scripts/cassandra unless one runs")
def demo(root: str, imap_port: int, imaps_port: int, pop3_port: int, pop3s_port: int, submission_port: int,
         submissions_port: int, sieve_port: int, lmtp_port: int, doveadm_port: int, doveadm_http_port: int,
         ui_port: int, users: int, geodb: str) -> None:
    """Start two Dovecot backends with palomar in front, two proxies and HAProxy (GeoDB: SQLite or Cassandra).

    Started again on the same --dir, the demo keeps its mail and GeoDB.
    """
    from palomar.devcluster.cassandra import LocalCassandra, cassandra_dir
    from palomar.devcluster.cluster import LbPorts, LocalCluster, shared_dir_for
    from palomar.devcluster.login_check import check_logins, error_lines
    from palomar.devcluster.supervisor import Supervisor

    path = Path(root).resolve()
    path.mkdir(parents=True, exist_ok=True)
    lock = _lock(path)
    cassandra = LocalCassandra(cassandra_dir(path))
    if geodb == "cassandra":
        click.echo("palomar demo: starting Cassandra (scripts/cassandra start; the first start takes a while) ...")
        try:
            click.echo("palomar demo: Cassandra " + ("started" if cassandra.start() else
                                                      "already answers on 127.0.0.1:9042; using it"))
        except (RuntimeError, KeyboardInterrupt) as exc:
            cassandra.stop()
            click.echo(f"palomar demo: {exc or 'interrupted'}", err=True)
            sys.exit(1)
    lb_ports = LbPorts(imap=imap_port, imaps=imaps_port, pop3=pop3_port, pop3s=pop3s_port, sieve=sieve_port,
                       submission=submission_port, submissions=submissions_port, lmtp=lmtp_port,
                       doveadm=doveadm_port, doveadm_http=doveadm_http_port)
    cluster = LocalCluster(path, users_count=users, lb_ports=lb_ports, controller=True, allow_cleartext=True,
                           geodb=geodb, shared_dir=shared_dir_for(path), controller_http_port=ui_port)
    if cluster.resumed:
        click.echo(f"palomar demo: resuming the demo in {path} (its mail and GeoDB are kept)")
    click.echo("palomar demo: starting Dovecot backends, palomar backends, proxies and HAProxy ...")
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        cluster.stop()
        cassandra.stop()
        reason = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else exc
        click.echo(f"palomar demo: could not start: {reason}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        cluster.stop()
        cassandra.stop()
        sys.exit(130)
    user = cluster.users[0]
    lb_hosts = [cluster.lb_host, cluster.lb_ipv6]
    click.echo("palomar demo: logging in once on every protocol through HAProxy ...")
    failures = check_logins(cluster, lb_hosts, user.name, user.password)
    if failures:
        click.echo("palomar demo: the cluster started but does not serve:", err=True)
        for line in failures:
            click.echo(f"  {line}", err=True)
        hints = error_lines(child.log_path for child in cluster.children())
        if hints:
            click.echo("palomar demo: errors in the logs:", err=True)
            for line in hints:
                click.echo(f"  {line}", err=True)
        cluster.stop()
        cassandra.stop()
        sys.exit(1)
    where = (f"Cassandra 127.0.0.1, keyspace {cluster.keyspace}" if geodb == "cassandra"
             else str(cluster.geodb_path))
    click.echo(f"""
palomar demo is running (site DC1, GeoDB {where}); every protocol served a login through HAProxy.

  IMAP (STARTTLS or plain) 127.0.0.1:{cluster.lb_imap}    IMAPS 127.0.0.1:{cluster.lb_imaps}
  POP3 (STLS or plain)     127.0.0.1:{cluster.lb_pop3}    POP3S 127.0.0.1:{cluster.lb_pop3s}
  Submission (STARTTLS)    127.0.0.1:{cluster.lb_submission}    Submission (TLS) 127.0.0.1:{cluster.lb_submissions}
  ManageSieve (STARTTLS)   127.0.0.1:{cluster.lb_sieve}    LMTP 127.0.0.1:{cluster.lb_lmtp}
  doveadm  127.0.0.1:{cluster.lb_doveadm} (http {cluster.lb_doveadm_http})  password {cluster.doveadm_password}
  The same ports listen on [::1] too.
  user {user.name}   password {user.password}   (user1 .. user{users}, passwordN)

  Try:  curl -k --ssl-reqd 'imap://127.0.0.1:{cluster.lb_imap}/INBOX' -u '{user.name}:{user.password}'
        curl -k 'pop3s://127.0.0.1:{cluster.lb_pop3s}/' -u '{user.name}:{user.password}'
        swaks --server 127.0.0.1 --port {cluster.lb_submission} --tls --auth-user {user.name} \\
              --auth-password {user.password} --to someone@example.test
        swaks --server 127.0.0.1 --port {cluster.lb_lmtp} --protocol LMTP --to {cluster.users[1].name}
        sieve-connect --server 127.0.0.1 --port {cluster.lb_sieve} --user {user.name} --notlsverify --list
        doveadm -o doveadm_password={cluster.doveadm_password} mailbox status -S 127.0.0.1:{cluster.lb_doveadm} \
              -u {user.name} -t all INBOX
        curl -u doveadm:{cluster.doveadm_password} http://127.0.0.1:{cluster.lb_doveadm_http}/doveadm/v1 \
              -d '[["mailboxStatus",{{"user":"{user.name}","field":["all"],"mailboxMask":["INBOX"]}},"t1"]]'
        palomar cluster -c {cluster.admin_config} backend list
        palomar cluster -c {cluster.admin_config} group list

  Backends: {", ".join(f"{b.name} {b.host} (metrics http://{b.host}:{b.metrics}/metrics)" for b in cluster.backends)}
  Proxies:  {", ".join(f"{p.name} {p.host} (metrics http://{p.host}:{p.metrics}/metrics)" for p in cluster.proxies)}
  Controller (health on): metrics http://127.0.0.1:{cluster.controller_metrics}/metrics
  controller UI http://127.0.0.1:{cluster.controller_http_port}/  user admin  password {cluster.controller_admin_password}
  REST API http://127.0.0.1:{cluster.controller_http_port}/api/v1/  (Basic auth, or Bearer {cluster.controller_admin_token})
  Mail submitted is relayed to a recording sink on 127.0.0.1 (nothing leaves this machine).
  Logs under {path}; Dovecot's files and the mail under {cluster.shared_dir}.
  A server that dies is restarted.  Ctrl-C stops everything; `palomar demo --dir {root}` resumes.
""")
    supervisor = Supervisor(cluster.children(), lambda line: click.echo(f"palomar demo: {line}"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(SUPERVISE_INTERVAL):
            supervisor.tick()
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("palomar demo: stopping ...")
        cluster.stop()
        if cassandra.started:
            click.echo("palomar demo: stopping Cassandra ...")
            cassandra.stop()
        lock.close()


def _lock(path: Path) -> IO[str]:
    """Hold `path/demo.lock` for the demo's life: two demos on one directory would share its files."""
    lock = open(path / "demo.lock", "a+")  # noqa: SIM115 - held until the demo ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        click.echo(f"palomar demo: a demo is already running in {path} (pid {holder}); stop it first", err=True)
        sys.exit(1)
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
