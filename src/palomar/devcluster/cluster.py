"""A complete palomar cluster on loopback: Dovecot CE backends, `palomar backend` in front of
each, `palomar proxy` processes, and HAProxy with send-proxy-v2 in front of the proxies.

Each server gets its own loopback address (backends 127.0.0.2.., proxies 127.0.0.10..), so the
cluster looks like several hosts; HAProxy listens on `lb_host` and `lb_ipv6`. Everything is
configured the way an operator would: config files and `palomar cluster` commands.

Dovecot's unprivileged processes (auth as `dovecot`, mail as `vmail`) must reach their config,
sockets and mail: those live under `shared_dir`, which may differ from `root` when `root` sits
in a directory only root can enter (root's home is 0700 on Debian). A cluster started again on
the same `root` keeps its GeoDB, LocalDBs and mail.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from palomar.auth.schemes import hash_password
from palomar.devcluster.cassandra import reset_keyspace
from palomar.devcluster.certs import hop_certificates, self_signed
from palomar.devcluster.dovecot import DovecotInstance, backend_params
from palomar.devcluster.haproxy import GREETING_CHECKS, HAProxyInstance, Listen
from palomar.devcluster.net import free_port, free_port_on_all, free_ports, port_accepts, wait_port
from palomar.devcluster.procs import snapshot_tree, stop_tree
from palomar.devcluster.smtp_sink import SmtpSink
from palomar.devcluster.supervisor import Child
from palomar.geodb import GeoEngine, open_engine

SITE = "DC1"
PROBE_USERNAME = "probe-%{backend_host}"
STARTED_MARK = "cluster.started"
"""Written into `root` once a cluster has set up its GeoDB there: a later start resumes it."""
SHARED_DIRS = Path("/var/lib/palomar/demo")


def shared_dir_for(root: Path, base: Path = SHARED_DIRS) -> Path:
    """A directory of its own for `root`'s Dovecot files, in a place Dovecot's users can enter.

    Named after the folder and a hash of its absolute path: stable across restarts of one
    demo directory, distinct for two of them, and free of characters Dovecot would interpret.
    """
    absolute = str(root.absolute())
    name = re.sub(r"[^A-Za-z0-9._-]", "_", root.name)[:40] or "root"
    return base / f"{name}-{hashlib.sha256(absolute.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class DemoUser:
    name: str
    password: str


def demo_users(count: int) -> list[DemoUser]:
    return [DemoUser(f"user{i}@example.test", f"password{i}") for i in range(1, count + 1)]


@dataclass
class LbPorts:
    """Where HAProxy listens (0 = pick a free port)."""

    imap: int = 0
    imaps: int = 0
    pop3: int = 0
    pop3s: int = 0
    sieve: int = 0
    submission: int = 0
    submissions: int = 0
    lmtp: int = 0
    doveadm: int = 0
    doveadm_http: int = 0


@dataclass
class ProxyNode:
    name: str
    host: str
    config: Path
    imap: int
    imaps: int
    imap_haproxy: int
    imaps_haproxy: int
    metrics: int
    pop3: int = 0
    pop3s: int = 0
    pop3_haproxy: int = 0
    pop3s_haproxy: int = 0
    sieve: int = 0
    sieve_haproxy: int = 0
    submission: int = 0
    submissions: int = 0
    submission_haproxy: int = 0
    submissions_haproxy: int = 0
    lmtp: int = 0
    lmtp_haproxy: int = 0
    doveadm: int = 0
    doveadm_haproxy: int = 0
    doveadm_http: int = 0
    """The doveadm HTTP API, a haproxy listener (Dovecot serves the API on the listener named `http`)."""
    site: int = 0
    """Port of `cluster_proxy_site_listen` (0: none)."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.config.parent / "palomar.log"


@dataclass
class BackendNode:
    name: str
    host: str
    config: Path
    dovecot: DovecotInstance
    proc: subprocess.Popen[bytes] | None = None
    metrics: int = 0
    """Port of this `palomar backend`'s GET /metrics (on `host`)."""

    @property
    def log_path(self) -> Path:
        return self.config.parent / "palomar.log"


class CommandFailed(subprocess.CalledProcessError):
    """A `palomar` command that failed, shown with its own stderr: a start-up failure then says why,
    not only "exit status 1"."""

    def __str__(self) -> str:
        return (f"{super().__str__()} stdout: {(self.stdout or '').strip()[-500:]!r}"
                f" stderr: {(self.stderr or '').strip()[-2000:]!r}")


@dataclass
class LocalCluster:
    root: Path
    backends_count: int = 2
    proxies_count: int = 2
    users_count: int = 20
    lb_host: str = "127.0.0.1"
    lb_ipv6: str = "::1"
    """HAProxy listens here too, on the same ports ("" = IPv4 only)."""
    lb_ports: LbPorts = field(default_factory=LbPorts)
    shared_dir: Path | None = None
    """Where Dovecot's config, runtime files and the mail go (None: `root`, which must then be
    traversable by Dovecot's users); it holds nothing else, and a fresh `root` empties it."""
    auth_failure_delay: str = "2 secs"
    allow_cleartext: bool = False
    stats_interval: str = "10 secs"
    palomar_cmd: tuple[str, ...] = (sys.executable, "-m", "palomar")
    hop_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    probe_password: str = field(default_factory=lambda: secrets.token_urlsafe(12), repr=False)
    doveadm_password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    """What doveadm clients of the proxies' doveadm listener authenticate with."""
    doveadm_api_key: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    """The proxies' doveadm HTTP API key (X-Dovecot-API)."""
    backends: list[BackendNode] = field(default_factory=list)
    proxies: list[ProxyNode] = field(default_factory=list)
    haproxy: HAProxyInstance | None = None
    users: list[DemoUser] = field(default_factory=list)
    extra_passwd_lines: tuple[str, ...] = ()
    """Raw passwd-file lines added to the users' passdb (e.g. a `nologin` user)."""
    relay: tuple[str, int] | None = None
    """Where the backends' Dovecot submission service relays mail; None starts a recording sink."""
    controller: bool = False
    """Also run the site's `palomar controller` (health feature on)."""
    backend_settings: tuple[str, ...] = ()
    """Extra config lines for every `palomar backend` (e.g. `cluster_backend_stats_interval`)."""
    controller_proc: subprocess.Popen[bytes] | None = None
    controller_metrics: int = 0
    controller_http_port: int | None = None
    """Where the controller serves its REST API and web UI on lb_host (0: a free port; None: not served)."""
    controller_admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(12), repr=False)
    controller_readonly_password: str = field(default_factory=lambda: secrets.token_urlsafe(12), repr=False)
    controller_admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    controller_readonly_token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    controller_settings: tuple[str, ...] = ()
    """Extra lines for the controller's config."""
    sink: SmtpSink | None = None
    users_passdb: tuple[str, ...] = ()
    """Lines inside the users' `passdb users { }` block instead of the passwd-file (e.g. `driver = sql`
    and `args = /path/dovecot-sql.conf.ext`): the users then live in a database the caller filled."""
    password_scheme: str = "SHA512-CRYPT"
    """Scheme of the demo users' passwords; benchmarks use PLAIN to measure the proxy, not the hash."""
    proxy_settings: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Extra config lines for proxies, by proxy name (`proxy1`) or `*` for all of them."""
    backend_dovecot_settings: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    """Extra Dovecot settings (name, value) for backends' Dovecot, by backend name (`backend1`) or `*`."""
    geodb: str = "sqlite"
    """GeoDB engine: `sqlite` (a file under root) or `cassandra` (a running Cassandra, see below)."""
    cassandra_hosts: str = "127.0.0.1"
    cassandra_keyspace: str = ""
    """Empty: `palomar_` + the root folder's name. start() drops it first: the cluster owns it."""
    cassandra_local_dc: str = "dc1"
    cassandra_replication: str = "dc1:1"
    owns_geodb: bool = True
    """start() empties the Cassandra keyspace of a fresh cluster; False for a site that shares the
    keyspace of another one started before it (`sites.two_sites`)."""
    haproxy_maxconn: int = 4096
    """HAProxy's global and per-listener connection limit (the soak holds 10,000 connections)."""
    hop_tls: bool = True
    """TLS on the proxy-to-backend hop (a CA and a certificate per backend under root/tls/hop);
    False writes `cluster_hop_ssl = no`."""
    shared_backend_imap: bool = False
    """Every backend's Dovecot on one IMAP port, with one master password (`backend_master_password`),
    so that a Dovecot director ring can stand in front of them (tests of the migration from one)."""
    backend_master_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    backend_imap_port: int = 0
    """The shared IMAP port of the backends' Dovecot once started (with `shared_backend_imap`)."""
    backend_path: str = "hop"
    """`cluster_backend_path`: `direct` has the proxies log in to the backends' Dovecot themselves for IMAP
    and POP3 (haproxy listeners, one master password for all backends; TLS with the hop certificates
    when `hop_tls`)."""
    direct_ports: dict[str, int] = field(default_factory=dict)
    """The backends' Dovecot haproxy listeners by protocol (imap, pop3, submission, sieve) once started
    (with backend_path = direct)."""
    site: str = SITE
    """This cluster's site name (`cluster_local_site`)."""
    host_offset: int = 0
    """Added to the last octet of the backends' (127.0.0.2..) and proxies' (127.0.0.10..) addresses,
    so several sites fit on one loopback (DC2: 100)."""
    geodb_file: Path | None = None
    """A SQLite GeoDB shared with other sites (None: root/geodb.sqlite)."""
    shared_hop_tls: Path | None = None
    """Hop certificates made by the caller for every site's backends and load balancers (one CA for
    all sites); None: this cluster makes its own under root/tls/hop."""
    site_port: int = 0
    """Port of the load balancer's site-hop frontend, where other sites' proxies relay logins to
    this site (`cluster_proxy_site_listen` on every proxy); 0: a single-site cluster."""

    # --- layout ---------------------------------------------------------------------------
    @property
    def dovecot_dir(self) -> Path:
        return (self.shared_dir or self.root) / "dovecot"

    @property
    def mail_root(self) -> Path:
        return (self.shared_dir or self.root) / "mail"

    @property
    def resumed(self) -> bool:
        """Whether `root` holds a cluster started before (its GeoDB, LocalDBs and mail are kept)."""
        return (self.root / STARTED_MARK).exists()

    @property
    def geodb_path(self) -> Path:
        return self.geodb_file or self.root / "geodb.sqlite"

    @property
    def keyspace(self) -> str:
        if self.cassandra_keyspace:
            return self.cassandra_keyspace
        return "palomar_" + re.sub(r"[^a-z0-9_]", "_", self.root.name.lower())[:40]

    def geodb_settings(self) -> list[str]:
        """The GeoDB lines every role's config shares."""
        if self.geodb == "sqlite":
            return [f"cluster_geodb_path = {self.geodb_path}"]
        if self.geodb != "cassandra":
            raise ValueError(f"unknown GeoDB engine {self.geodb!r} (sqlite or cassandra)")
        return [
            "cluster_geodb_driver = cassandra",
            f"cassandra_hosts = {self.cassandra_hosts}",
            f"cassandra_keyspace = {self.keyspace}",
            f"cassandra_local_dc = {self.cassandra_local_dc}",
            f"cassandra_replication = {self.cassandra_replication}",
        ]

    def geodb_engine(self) -> GeoEngine:
        """An engine (not yet open) on this cluster's GeoDB, configured as its processes are."""
        if self.geodb == "sqlite":
            return open_engine("sqlite", path=str(self.geodb_path))
        from palomar.geodb.cassandra_engine import parse_replication

        return open_engine("cassandra", hosts=self.cassandra_hosts, keyspace=self.keyspace,
                           local_dc=self.cassandra_local_dc or None,
                           replication=parse_replication(self.cassandra_replication))

    @property
    def admin_config(self) -> Path:
        """A config for running `palomar cluster` against this cluster (the first proxy's)."""
        return self.proxies[0].config

    def palomar(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a `palomar` command (e.g. `cluster backend list`) against this cluster."""
        done = subprocess.run([*self.palomar_cmd, *args], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, check=False, timeout=60)
        if check and done.returncode != 0:
            raise CommandFailed(done.returncode, done.args, done.stdout, done.stderr)
        return done

    def cluster(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.palomar("cluster", "-c", str(self.admin_config), *args, check=check)

    def _write_users(self) -> None:
        self.users = demo_users(self.users_count)
        lines = [f"{u.name}:{hash_password(self.password_scheme, u.password)}" for u in self.users]
        lines += self.extra_passwd_lines
        (self.root / "users.passwd").write_text("\n".join(lines) + "\n")
        (self.root / "users.passwd").chmod(0o600)
        probes = [f"probe-{host}" for host in self._backend_hosts()]
        (self.root / "test-accounts.passwd").write_text("".join(f"{p}::::::\n" for p in probes))

    def _backend_hosts(self) -> list[str]:
        return [f"127.0.0.{2 + self.host_offset + i}" for i in range(self.backends_count)]

    def _proxy_hosts(self) -> list[str]:
        return [f"127.0.0.{10 + self.host_offset + i}" for i in range(self.proxies_count)]

    def _hop_port(self) -> int:
        """One port free on every backend address (the hop port is cluster-wide)."""
        return free_port_on_all(self._backend_hosts(), "the hop")

    def _common(self, role_dir: Path) -> list[str]:
        return [
            f"cluster_local_site = {self.site}",
            *self.geodb_settings(),
            f"cluster_localdb_path = {role_dir / 'localdb.sqlite'}",
            f"cluster_hop_secret = {self.hop_secret}",
            f"cluster_hop_port = {self.hop_port}",
            *([] if self.hop_tls else ["cluster_hop_ssl = no"]),
            *self._direct_settings(),
            f"cluster_backend_test_username = {PROBE_USERNAME}",
            f"log_path = {role_dir / 'palomar.log'}",
            f"base_dir = {role_dir / 'run'}",
        ]

    def _direct_settings(self) -> list[str]:
        if self.backend_path == "hop":
            return []
        return ["cluster_backend_path = direct",
                f"cluster_backend_dovecot_master_password = {self.backend_master_password}"]

    @property
    def hop_tls_dir(self) -> Path:
        return self.shared_hop_tls or self.root / "tls" / "hop"

    @property
    def load_balancer(self) -> str:
        """This site's `sites.load_balancer`: where other sites' proxies relay logins."""
        return f"{self.lb_host}:{self.site_port}"

    def _proxy_config(self, node: ProxyNode) -> str:
        role_dir = node.config.parent
        lines = ["@cluster_defaults = proxy", *self._common(role_dir)]
        if self.hop_tls:
            lines.append(f"cluster_hop_ssl_ca_file = {self.hop_tls_dir / 'hop-ca.crt'}")
        if self.backend_path == "direct":
            lines += [f"cluster_backend_direct_{protocol}_port = {port}"
                      for protocol, port in self.direct_ports.items()]
        if self.site_port:
            lines.append(f"cluster_proxy_site_listen = {node.host}:{node.site}")
            if self.hop_tls:  # other sites' proxies verify this site's load balancer name
                lines += [f"cluster_hop_ssl_cert_file = {self.hop_tls_dir / f'hop-{self.lb_host}.crt'}",
                          f"cluster_hop_ssl_key_file = {self.hop_tls_dir / f'hop-{self.lb_host}.key'}"]
        lines += [
            f"hostname = {node.name}",
            f"cluster_backend_test_password = {self.probe_password}",
            f"listen = {node.host}",
            f"doveadm_password = {self.doveadm_password}",
            f"doveadm_port = {node.doveadm}",
            f"doveadm_api_key = {self.doveadm_api_key}",
            "service doveadm {",
            f"  inet_listener doveadm-haproxy {{\n    port = {node.doveadm_haproxy}\n    haproxy = yes\n  }}",
            f"  inet_listener http {{\n    port = {node.doveadm_http}\n    haproxy = yes\n  }}",
            "}",
            f"haproxy_trusted_networks = {self.lb_host}/32",
            f"ssl_server_cert_file = {self.root / 'tls' / 'localhost.crt'}",
            f"ssl_server_key_file = {self.root / 'tls' / 'localhost.key'}",
            f"auth_allow_cleartext = {'yes' if self.allow_cleartext else 'no'}",
            f"auth_failure_delay = {self.auth_failure_delay}",
            f"cluster_proxy_stats_interval = {self.stats_interval}",
            "passdb test-accounts {",
            "  driver = passwd-file",
            f"  args = {self.root / 'test-accounts.passwd'}",
            "  fields {",
            "    proxy = y",
            f"    password = {self.probe_password}",
            "  }",
            "}",
            "passdb users {",
            *([f"  {line}" for line in self.users_passdb] if self.users_passdb else
              ["  driver = passwd-file", f"  args = scheme=SHA512-CRYPT {self.root / 'users.passwd'}"]),
            "}",
            "service imap-login {",
            f"  inet_listener imap {{\n    port = {node.imap}\n  }}",
            f"  inet_listener imaps {{\n    port = {node.imaps}\n    ssl = yes\n  }}",
            f"  inet_listener imap-haproxy {{\n    port = {node.imap_haproxy}\n    haproxy = yes\n  }}",
            f"  inet_listener imaps-haproxy {{\n    port = {node.imaps_haproxy}\n    haproxy = yes\n    ssl = yes\n  }}",
            "}",
            "service stats {",
            f"  inet_listener http {{\n    port = {node.metrics}\n  }}",
            "}",
        ]
        lines += [*self.proxy_settings.get("*", ()), *self.proxy_settings.get(node.name, ())]
        lines += [
            "service pop3-login {",
            f"  inet_listener pop3 {{\n    port = {node.pop3}\n  }}",
            f"  inet_listener pop3s {{\n    port = {node.pop3s}\n    ssl = yes\n  }}",
            f"  inet_listener pop3-haproxy {{\n    port = {node.pop3_haproxy}\n    haproxy = yes\n  }}",
            f"  inet_listener pop3s-haproxy {{\n    port = {node.pop3s_haproxy}\n    haproxy = yes\n    ssl = yes\n  }}",
            "}",
            "service managesieve-login {",
            f"  inet_listener sieve {{\n    port = {node.sieve}\n  }}",
            f"  inet_listener sieve-haproxy {{\n    port = {node.sieve_haproxy}\n    haproxy = yes\n  }}",
            "}",
        ]
        lines += [
            "service submission-login {",
            f"  inet_listener submission {{\n    port = {node.submission}\n  }}",
            f"  inet_listener submissions {{\n    port = {node.submissions}\n    ssl = yes\n  }}",
            f"  inet_listener submission-haproxy {{\n    port = {node.submission_haproxy}\n    haproxy = yes\n  }}",
            f"  inet_listener submissions-haproxy {{\n    port = {node.submissions_haproxy}\n    haproxy = yes\n"
            "    ssl = yes\n  }",
            "}",
        ]
        lines += [
            "service lmtp {",
            f"  inet_listener lmtp {{\n    port = {node.lmtp}\n  }}",
            f"  inet_listener lmtp-haproxy {{\n    port = {node.lmtp_haproxy}\n    haproxy = yes\n  }}",
            "}",
        ]
        return "\n".join(lines) + "\n"

    def _backend_config(self, node: BackendNode) -> str:
        p = node.dovecot.params
        lines = ["@cluster_defaults = backend", *self._common(node.config.parent)]
        lines += [
            f"cluster_backend_name = {node.host}",
            f"listen = {node.host}",
            *([f"cluster_hop_ssl_cert_file = {self.hop_tls_dir / f'hop-{node.host}.crt'}",
               f"cluster_hop_ssl_key_file = {self.hop_tls_dir / f'hop-{node.host}.key'}"] if self.hop_tls else []),
            f"cluster_backend_dovecot_host = {p.listen}",
            f"cluster_backend_dovecot_imap_port = {p.imap_port}",
            f"cluster_backend_dovecot_pop3_port = {p.pop3_port}",
            f"cluster_backend_dovecot_lmtp_port = {p.lmtp_port}",
            f"cluster_backend_dovecot_submission_port = {p.submission_port}",
            f"cluster_backend_dovecot_sieve_port = {p.sieve_port}",
            f"cluster_backend_dovecot_doveadm_http_port = {p.doveadm_http_port}",
            f"cluster_backend_dovecot_master_user = {p.master_user}",
            *([] if self.backend_path == "direct" else [f"cluster_backend_dovecot_master_password = {p.master_password}"]),
            *([f"cluster_backend_login_check_socket = {p.login_check_socket}",
               *(f"cluster_backend_direct_{protocol}_port = {port}" for protocol, port in p.haproxy_ports().items()),
               f"haproxy_trusted_networks = {' '.join(p.haproxy_trusted_networks)}"] if p.login_check_socket else []),
            f"doveadm_password = {p.doveadm_password}",
            f"doveadm_port = {p.doveadm_tcp_port}",
            *self.backend_settings,
            "service stats {",
            f"  inet_listener http {{\n    port = {node.metrics}\n  }}",
            "}",
        ]
        return "\n".join(lines) + "\n"

    # --- processes --------------------------------------------------------------------------
    def _spawn(self, role: str, config: Path) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        err = open(config.parent / f"{role}.stderr.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            return subprocess.Popen([*self.palomar_cmd, role, "-c", str(config)], stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, env=env, start_new_session=True)
        finally:
            err.close()

    def _wait(self, proc: subprocess.Popen[bytes], host: str, port: int, what: str, log: Path) -> None:
        try:
            wait_port(host, port, time.monotonic() + 30, alive=lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            details = []
            for path in (log, log.parent / f"{what}.stderr.log"):
                if path.exists():
                    details.append(path.read_text(errors="replace")[-3000:])
            raise RuntimeError(f"{what} on {host}:{port} did not start: {exc}\n" + "\n".join(details)) from None

    def _prepare_shared_dir(self, resumed: bool) -> None:
        """Create `shared_dir` (emptied for a fresh root) and link it from `root` for the curious."""
        if self.shared_dir is None:
            return
        if not resumed and self.shared_dir.exists():
            shutil.rmtree(self.shared_dir)  # left behind by a removed demo directory of the same path
        created = [path for path in (self.shared_dir, *self.shared_dir.parents) if not path.exists()]
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        for path in created:
            path.chmod(0o755)  # whatever the umask: Dovecot's users must enter them
        for name in ("dovecot", "mail"):
            link = self.root / name
            if not link.is_symlink() and not link.exists():
                link.symlink_to(self.shared_dir / name)

    def start(self) -> LocalCluster:
        atexit.register(self.stop)
        self.root.mkdir(parents=True, exist_ok=True)
        resumed = self.resumed
        self._prepare_shared_dir(resumed)
        self_signed(self.root / "tls", hosts=tuple(self._proxy_hosts()))
        if self.hop_tls and self.shared_hop_tls is None:
            hop_certificates(self.hop_tls_dir, self._backend_hosts())
        self._write_users()
        self.hop_port = self._hop_port()
        if self.shared_backend_imap:
            self.backend_imap_port = free_port_on_all(self._backend_hosts(), "the backends' IMAP", (self.hop_port,))
        if self.backend_path == "direct":
            self.direct_ports = {}
            for protocol in ("imap", "pop3", "submission", "sieve"):
                self.direct_ports[protocol] = free_port_on_all(
                    self._backend_hosts(), f"the backends' direct {protocol}", (self.hop_port, *self.direct_ports.values()))
        mail_root = self.mail_root
        relay = self.relay
        if relay is None:
            self.sink = SmtpSink(self.lb_host).start()
            relay = (self.sink.host, self.sink.port)
        for index, host in enumerate(self._backend_hosts(), start=1):
            name = f"backend{index}"
            extra = (*self.backend_dovecot_settings.get("*", ()), *self.backend_dovecot_settings.get(name, ()))
            shared = self.shared_backend_imap or self.backend_path == "direct"
            dovecot = DovecotInstance(backend_params(
                name, host, self.dovecot_dir, mail_root, relay=relay, extra_settings=extra,
                imap_port=self.backend_imap_port, master_password=self.backend_master_password if shared else None,
                # proxies connect without binding their own address: from 127.0.0.1 on one loopback
                direct=(self.direct_ports, ("127.0.0.1/32", *(f"{proxy}/32" for proxy in self._proxy_hosts())))
                if self.backend_path == "direct" else None,
                direct_tls=(self.hop_tls_dir / f"hop-{host}.crt", self.hop_tls_dir / f"hop-{host}.key")
                if self.hop_tls else None))
            config = self.root / name / "palomar.conf"
            self.backends.append(BackendNode(name, host, config, dovecot, metrics=free_port(host)))
        for index, host in enumerate(self._proxy_hosts(), start=1):
            ports = free_ports(host, 21)
            config = self.root / f"proxy{index}" / "palomar.conf"
            self.proxies.append(ProxyNode(
                f"proxy{index}", host, config, *ports[:5], pop3=ports[5], pop3s=ports[6], pop3_haproxy=ports[7],
                pop3s_haproxy=ports[8], sieve=ports[9], sieve_haproxy=ports[10], submission=ports[11],
                submissions=ports[12], submission_haproxy=ports[13], submissions_haproxy=ports[14],
                lmtp=ports[15], lmtp_haproxy=ports[16], doveadm=ports[17], doveadm_haproxy=ports[18],
                doveadm_http=ports[19], site=ports[20] if self.site_port else 0))
        for node in self.proxies:
            node.config.parent.mkdir(parents=True, exist_ok=True)
            node.config.write_text(self._proxy_config(node))
            node.config.chmod(0o600)
        if not resumed:
            if self.geodb == "cassandra" and self.owns_geodb:
                reset_keyspace(self.cassandra_hosts, self.keyspace, local_dc=self.cassandra_local_dc)
            self.cluster("site", "add", self.site)
            (self.root / STARTED_MARK).write_text(f"site {self.site}\n")
        if self.site_port:
            self.cluster("site", "update", "--load-balancer", self.load_balancer, self.site)
        for node in self.backends:
            node.dovecot.start()
            node.config.parent.mkdir(parents=True, exist_ok=True)
            node.config.write_text(self._backend_config(node))
            node.config.chmod(0o600)
            node.proc = self._spawn("backend", node.config)
            self._wait(node.proc, node.host, self.hop_port, "backend", node.log_path)
            self.cluster("backend", "update", "--status", "online", node.host)
        for node in self.proxies:
            node.proc = self._spawn("proxy", node.config)
            self._wait(node.proc, node.host, node.imap, "proxy", node.log_path)
        lb = {name: getattr(self.lb_ports, name) or self._lb_port()
              for name in ("imap", "imaps", "pop3", "pop3s", "sieve", "submission", "submissions", "lmtp",
                           "doveadm", "doveadm_http")}
        lb_hosts = [self.lb_host, *([self.lb_ipv6] if self.lb_ipv6 else [])]
        # doveadm clients speak first: the proxies are checked by a connection with a PROXY header
        doveadm_ports = {"doveadm": "doveadm_haproxy", "doveadm_http": "doveadm_http"}
        site_listens = [Listen("site", [(self.lb_host, self.site_port)], [(p.host, p.site) for p in self.proxies],
                               send_proxy_v2=False, check=False)] if self.site_port else []
        self.haproxy = HAProxyInstance([
            # `source`: the proxies trust HAProxy's address (haproxy_trusted_networks), and on loopback the
            # kernel would otherwise connect from 127.0.0.1 whatever address HAProxy listens on.
            *(Listen(name.replace("_", "-"), [(host, port) for host in lb_hosts],
                     [(p.host, getattr(p, doveadm_ports.get(name, f"{name}_haproxy"))) for p in self.proxies],
                     greeting=GREETING_CHECKS.get(name),
                     extra_server_options=("source", self.lb_host,
                                           *(("check-send-proxy",) if name in doveadm_ports else ())))
              for name, port in lb.items()),
            *site_listens,
        ], self.root / "haproxy", timeout_client="31m", timeout_server="31m", check_interval="1s",
            timeout_check="2s", maxconn=self.haproxy_maxconn)
        self.haproxy.start()
        (self.lb_imap, self.lb_imaps, self.lb_pop3, self.lb_pop3s, self.lb_sieve, self.lb_submission,
         self.lb_submissions, self.lb_lmtp, self.lb_doveadm, self.lb_doveadm_http) = lb.values()
        if self.controller:
            self._start_controller()
        return self

    def _lb_port(self) -> int:
        """A port free on `lb_host` and, if HAProxy listens there too, on `lb_ipv6`."""
        for _ in range(50):
            port = free_port(self.lb_host)
            if not self.lb_ipv6 or not port_accepts(self.lb_ipv6, port):
                return port
        raise RuntimeError(f"no port free on both {self.lb_host} and {self.lb_ipv6}")

    def _start_controller(self) -> None:
        role_dir = self.root / "controller"
        role_dir.mkdir(parents=True, exist_ok=True)
        self.controller_metrics = free_port(self.lb_host)
        http: list[str] = []
        if self.controller_http_port is not None:
            self.controller_http_port = self.controller_http_port or free_port(self.lb_host)
            http = [f"controller_http_listen = {self.lb_host}:{self.controller_http_port}",
                    f"controller_http_admin_password = {self.controller_admin_password}",
                    f"controller_http_readonly_password = {self.controller_readonly_password}",
                    f"controller_http_admin_token = {self.controller_admin_token}",
                    f"controller_http_readonly_token = {self.controller_readonly_token}"]
        config = role_dir / "palomar.conf"
        config.write_text("\n".join([
            f"cluster_local_site = {self.site}",
            *self.geodb_settings(),
            f"log_path = {role_dir / 'palomar.log'}",
            f"base_dir = {role_dir / 'run'}",
            "controller_interval = 2 secs",
            f"controller_history_path = {role_dir / 'history.sqlite'}",
            *http,
            *self.controller_settings,
            f"listen = {self.lb_host}",
            "service stats {",
            f"  inet_listener http {{\n    port = {self.controller_metrics}\n  }}",
            "}",
        ]) + "\n")
        self.cluster("feature", "set", self.site, "health", "on")
        self.restart_controller()

    def restart_controller(self) -> None:
        role_dir = self.root / "controller"
        if self.controller_proc is not None:
            stop_tree(self.controller_proc)
        self.controller_proc = self._spawn("controller", role_dir / "palomar.conf")
        self._wait(self.controller_proc, self.lb_host, self.controller_metrics, "controller", role_dir / "palomar.log")
        if self.controller_http_port:
            self._wait(self.controller_proc, self.lb_host, self.controller_http_port, "controller",
                       role_dir / "palomar.log")

    def restart_proxy(self, node: ProxyNode) -> None:
        """A fresh `palomar proxy` process (e.g. before a memory measurement: heaps never shrink)."""
        if node.proc is not None:
            stop_tree(node.proc)
        node.proc = self._spawn("proxy", node.config)
        self._wait(node.proc, node.host, node.imap, "proxy", node.log_path)

    def restart_backend(self, node: BackendNode) -> None:
        """A fresh `palomar backend` process; its Dovecot keeps running."""
        if node.proc is not None:
            stop_tree(node.proc)
        node.proc = self._spawn("backend", node.config)
        self._wait(node.proc, node.host, self.hop_port, "backend", node.log_path)

    def children(self) -> list[Child]:
        """Every server process of the started cluster, for a Supervisor."""
        children: list[Child] = []
        for backend in self.backends:
            children.append(Child(f"{backend.name} Dovecot", backend.dovecot.params.log_path,
                                  backend.dovecot.returncode, backend.dovecot.start))
            children.append(Child(f"{backend.name} palomar backend", backend.log_path, _poller(backend),
                                  lambda b=backend: self.restart_backend(b)))
        for proxy in self.proxies:
            children.append(Child(f"{proxy.name} palomar proxy", proxy.log_path, _poller(proxy),
                                  lambda p=proxy: self.restart_proxy(p)))
        if self.haproxy is not None:
            children.append(Child("HAProxy", self.haproxy.log_path, self.haproxy.returncode, self.haproxy.start))
        if self.controller_proc is not None:
            children.append(Child("palomar controller", self.root / "controller" / "palomar.log",
                                  _poller(self, "controller_proc"), self.restart_controller))
        return children

    def kill_dovecot(self, node: BackendNode) -> None:
        """SIGKILL the backend's whole Dovecot process tree (a crash); `node.dovecot.start()` revives it."""
        pid = node.dovecot.pid
        if pid is not None:
            for proc in snapshot_tree(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        node.dovecot.stop()  # reaps what is left and lets start() run again

    def kill_backend_service(self, node: BackendNode) -> None:
        """SIGKILL the `palomar backend` process (its Dovecot keeps running); `restart_backend` revives it."""
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait(10)

    def stop(self) -> None:
        if self.controller_proc is not None:
            stop_tree(self.controller_proc)
            self.controller_proc = None
        if self.haproxy is not None:
            self.haproxy.stop()
        for node in [*self.proxies, *self.backends]:
            if node.proc is not None:
                stop_tree(node.proc)
                node.proc = None
        for node in self.backends:
            node.dovecot.stop()
        if self.sink is not None:
            self.sink.stop()
        atexit.unregister(self.stop)


def _poller(owner: object, attribute: str = "proc") -> Callable[[], int | None]:
    """Poll (and reap) the Popen in `owner.attribute`, read anew each time since restarts replace it."""
    def returncode() -> int | None:
        proc = getattr(owner, attribute)
        return None if proc is None else proc.poll()
    return returncode
