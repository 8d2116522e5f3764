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
TWO_DC_HEAP = "512M"
"""JVM heap of each of the two Cassandra nodes of `--sites 2 --geodb cassandra`."""


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
              help="GeoDB engine; cassandra starts a local node with scripts/cassandra unless one runs "
                   "(with --sites 2: two nodes, datacenters dc1 and dc2, one per site)")
@click.option("--sites", type=click.IntRange(1, 2), default=1, show_default=True,
              help="2: a second site DC2 with its own HAProxy on 127.0.0.101 (the same ports); odd users prefer "
                   "DC1, even users DC2")
def demo(root: str, imap_port: int, imaps_port: int, pop3_port: int, pop3s_port: int, submission_port: int,
         submissions_port: int, sieve_port: int, lmtp_port: int, doveadm_port: int, doveadm_http_port: int,
         ui_port: int, users: int, geodb: str, sites: int) -> None:
    """Start two Dovecot backends with palomar in front, two proxies and HAProxy (GeoDB: SQLite or Cassandra).

    With --sites 2, two sites of two backends and one proxy each, one HAProxy per site.
    Started again on the same --dir, the demo keeps its mail and GeoDB.
    """
    from palomar.devcluster.cassandra import LocalCassandra, cassandra_dir
    from palomar.devcluster.cluster import LbPorts, LocalCluster, shared_dir_for
    from palomar.devcluster.login_check import check_logins, error_lines
    from palomar.devcluster.sites import CASSANDRA_BASE, home_demo_users, start_sites, two_sites
    from palomar.devcluster.supervisor import Supervisor

    path = Path(root).resolve()
    path.mkdir(parents=True, exist_ok=True)
    lock = _lock(path)
    if sites == 2:  # one node per site's datacenter: dc1 on 127.0.0.201, dc2 on 127.0.0.202
        cassandra = LocalCassandra(cassandra_dir(path), nodes=2, base_address=CASSANDRA_BASE, heap=TWO_DC_HEAP)
    else:
        cassandra = LocalCassandra(cassandra_dir(path))
    if geodb == "cassandra":
        click.echo(f"palomar demo: starting Cassandra on {', '.join(cassandra.hosts)} (scripts/cassandra start; "
                   + ("two nodes, one per datacenter, heap " + TWO_DC_HEAP + " each: about 2 GB of memory and "
                      "1-3 minutes on a small machine" if sites == 2 else "the first start takes a while")
                   + ") ...")
        try:
            click.echo("palomar demo: Cassandra " + ("started" if cassandra.start() else
                                                      f"already answers on {', '.join(cassandra.hosts)}; using it"))
        except (RuntimeError, KeyboardInterrupt) as exc:
            cassandra.stop()
            click.echo(f"palomar demo: {exc or 'interrupted'}", err=True)
            sys.exit(1)
    lb_ports = LbPorts(imap=imap_port, imaps=imaps_port, pop3=pop3_port, pop3s=pop3s_port, sieve=sieve_port,
                       submission=submission_port, submissions=submissions_port, lmtp=lmtp_port,
                       doveadm=doveadm_port, doveadm_http=doveadm_http_port)
    if sites == 2:
        clusters = two_sites(path, lb_ports, users, ui_port=ui_port, geodb=geodb,
                             cassandra_hosts=(cassandra.hosts[0], cassandra.hosts[-1]))
    else:
        clusters = [LocalCluster(path, users_count=users, lb_ports=lb_ports, controller=True, allow_cleartext=True,
                                 geodb=geodb, shared_dir=shared_dir_for(path), controller_http_port=ui_port)]
    cluster = clusters[0]
    if cluster.resumed:
        click.echo(f"palomar demo: resuming the demo in {path} (its mail and GeoDB are kept)")
    click.echo("palomar demo: starting Dovecot backends, palomar backends, proxies and HAProxy ...")
    try:
        if sites == 2:
            start_sites(clusters)
            home_demo_users(cluster)
        else:
            cluster.start()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        for started in clusters:
            started.stop()
        cassandra.stop()
        reason = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else exc
        click.echo(f"palomar demo: could not start: {reason}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        for started in clusters:
            started.stop()
        cassandra.stop()
        sys.exit(130)
    user = cluster.users[0]
    lb_hosts = [cluster.lb_host, cluster.lb_ipv6]
    click.echo("palomar demo: logging in once on every protocol through HAProxy ...")
    failures = check_logins(cluster, lb_hosts, user.name, user.password)
    if sites == 2:  # each site's users through the other site's load balancer: relayed between sites
        dc2_user = cluster.users[1]
        failures += check_logins(cluster, [cluster.lb_host], dc2_user.name, dc2_user.password)
        failures += check_logins(clusters[1], [clusters[1].lb_host], user.name, user.password)
    if failures:
        click.echo("palomar demo: the cluster started but does not serve:", err=True)
        for line in failures:
            click.echo(f"  {line}", err=True)
        hints = error_lines(child.log_path for c in clusters for child in c.children())
        if hints:
            click.echo("palomar demo: errors in the logs:", err=True)
            for line in hints:
                click.echo(f"  {line}", err=True)
        for started in clusters:
            started.stop()
        cassandra.stop()
        sys.exit(1)
    where = (f"Cassandra {' and '.join(cassandra.hosts)}, keyspace {cluster.keyspace}" if geodb == "cassandra"
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
    if sites == 2:
        click.echo(_second_site_text(clusters[1], root, cluster.cassandra_hosts))
    supervisor = Supervisor([child for c in clusters for child in c.children()],
                            lambda line: click.echo(f"palomar demo: {line}"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(SUPERVISE_INTERVAL):
            supervisor.tick()
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("palomar demo: stopping ...")
        for started in reversed(clusters):
            started.stop()
        if cassandra.started:
            click.echo("palomar demo: stopping Cassandra ...")
            cassandra.stop()
        lock.close()


def _second_site_text(dc2, root: str, dc1_hosts: str) -> str:
    users = dc2.users
    return f"""  Two sites share the GeoDB: DC1 above (HAProxy on 127.0.0.1) and DC2 (HAProxy on {dc2.lb_host}, the same
  ports; backends {", ".join(b.host for b in dc2.backends)}, proxy {", ".join(p.host for p in dc2.proxies)}).
  Odd-numbered users ({users[0].name}, {users[2].name}, ...) prefer DC1, even-numbered ({users[1].name}, ...) DC2:
  log in through either site's HAProxy and the session ends on a backend of the user's site (relayed through
  the other site's load balancer, site-hop port {dc2.site_port}). Try:
        palomar cluster -c {dc2.admin_config} user access -A
        palomar cluster -c {dc2.admin_config} site update --status offline DC2     (DC2's users fail over to DC1)
        palomar cluster -c {dc2.admin_config} site reachability list
  DC2's controller UI http://{dc2.lb_host}:{dc2.controller_http_port}/  user admin  password {dc2.controller_admin_password}
  DC2's logs under {dc2.root}.
""" + (f"""  GeoDB: each site's servers use their own Cassandra datacenter as the local one (DC1: dc1 on
  {dc1_hosts}, DC2: dc2 on {dc2.cassandra_hosts}; one replica per datacenter, LOCAL_QUORUM
  writes, LOCAL_ONE reads): a site keeps reading and writing while the other datacenter is away,
  and the datacenters converge by write time.
""" if dc2.geodb == "cassandra" else "")


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
