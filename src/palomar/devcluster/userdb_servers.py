"""Throwaway user databases for tests: a PostgreSQL and an OpenLDAP ``slapd`` on a loopback address.

Both run from Debian's packages, in a directory of their own, as foreground processes started
in their own session (so ``stop`` ends exactly them), and can be stopped and started again on the
same data and port: what the tests need to take the database away in the middle of a run.
PostgreSQL runs as the ``postgres`` user (it refuses root); slapd runs as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from palomar.devcluster.certs import hop_certificates
from palomar.devcluster.net import free_port, wait_port, wait_until
from palomar.devcluster.procs import stop_tree

START_TIMEOUT = 30.0
LDAP_SCHEMAS = ("core", "cosine", "nis", "inetorgperson")


def _pg_bindir() -> Path:
    """Debian keeps PostgreSQL's programs in /usr/lib/postgresql/VERSION/bin (newest wins)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (scripts/install-system-deps installs it)")
    return Path(found[-1]).parent


@dataclass
class PostgresServer:
    """``initdb`` once, then ``postgres -D`` in the foreground; password (scram) logins over TCP."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    password: str = "pg-test-secret"
    user: str = "postgres"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def _as_postgres(self) -> dict[str, object]:
        pw = pwd.getpwnam("postgres")
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def init(self) -> PostgresServer:
        pw = pwd.getpwnam("postgres")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chown(self.root, pw.pw_uid, pw.pw_gid)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        subprocess.run([str(_pg_bindir() / "initdb"), "-D", str(self.data), "-U", self.user,
                        "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, cwd=self.root, **self._as_postgres())
        pwfile.unlink()
        if not self.port:
            self.port = free_port(self.host)
        return self

    def start(self) -> PostgresServer:
        if not self.data.exists():
            self.init()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server writes it until it stops
        try:
            self.proc = subprocess.Popen(
                [str(_pg_bindir() / "postgres"), "-D", str(self.data), "-h", self.host, "-p", str(self.port),
                 "-k", str(self.root), "-c", "fsync=off", "-c", "max_connections=40"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root, **self._as_postgres())
        finally:
            log.close()
        wait_port(self.host, self.port, time.monotonic() + START_TIMEOUT, alive=lambda: self.proc.poll() is None)
        wait_until(self.ready, START_TIMEOUT, f"PostgreSQL on {self.host}:{self.port} to accept sessions")
        return self

    def ready(self) -> bool:
        """pg_isready: the port alone opens before recovery ends ("the database system is starting up")."""
        return subprocess.run([str(_pg_bindir() / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
                              capture_output=True).returncode == 0

    def stop(self) -> None:
        """A fast shutdown (SIGINT: open sessions are cut, as when the database host goes away)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                stop_tree(self.proc)
        self.proc = None

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through the unix socket as the superuser (setup only)."""
        out = subprocess.run([str(_pg_bindir() / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", self.user,
                              "-d", database, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
                             check=True, capture_output=True, text=True, **self._as_postgres())
        return out.stdout

    def connect_line(self, database: str, user: str | None = None, password: str | None = None) -> str:
        """A ``connect =`` value for dovecot-sql.conf.ext."""
        return (f"host={self.host} port={self.port} dbname={database} user={user or self.user} "
                f"password={password or self.password}")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class SlapdServer:
    """slapd with a slapd.conf, an mdb database loaded by slapadd, ``ldap://`` and ``ldaps://`` listeners."""

    root: Path
    suffix: str = "dc=example,dc=org"
    host: str = "127.0.0.1"
    port: int = 0
    ldaps_port: int = 0
    admin_password: str = "ldap-admin-secret"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    ca_file: Path | None = None
    maxsize: int = 16 << 20
    """The mdb database's size limit in bytes (a million entries need about 2 GiB)."""

    @property
    def admin_dn(self) -> str:
        return f"cn=admin,{self.suffix}"

    @property
    def conf(self) -> Path:
        return self.root / "slapd.conf"

    @property
    def log_path(self) -> Path:
        return self.root / "slapd.log"

    def init(self, ldif: str) -> SlapdServer:
        """Write the configuration and load ``ldif`` (the suffix entry is added first)."""
        (self.root / "db").mkdir(parents=True, exist_ok=True)
        certs = hop_certificates(self.root / "tls", [self.host])
        self.ca_file = certs.ca
        pair = certs.backends[self.host]
        includes = "".join(f"include /etc/ldap/schema/{name}.schema\n" for name in LDAP_SCHEMAS)
        self.conf.write_text(
            f"{includes}"
            "modulepath /usr/lib/ldap\nmoduleload back_mdb\n"
            f"pidfile {self.root / 'slapd.pid'}\nargsfile {self.root / 'slapd.args'}\n"
            f"TLSCACertificateFile {certs.ca}\nTLSCertificateFile {pair.cert}\nTLSCertificateKeyFile {pair.key}\n"
            f"database mdb\nmaxsize {self.maxsize}\n"
            "index objectClass,uid eq\n"
            f'suffix "{self.suffix}"\nrootdn "{self.admin_dn}"\nrootpw {self.admin_password}\n'
            f"directory {self.root / 'db'}\n"
            "access to attrs=userPassword by dn.exact=\"" + self.admin_dn + "\" read by anonymous auth by * none\n"
            "access to * by * read\n")
        top = self.suffix.split(",")[0].split("=")[1]
        base = (f"dn: {self.suffix}\nobjectClass: dcObject\nobjectClass: organization\no: {top}\ndc: {top}\n\n"
                f"dn: ou=people,{self.suffix}\nobjectClass: organizationalUnit\nou: people\n\n")
        data = self.root / "data.ldif"
        data.write_text(base + ldif)
        subprocess.run(["slapadd", "-q", "-f", str(self.conf), "-l", str(data)], check=True, capture_output=True)
        if not self.port:
            self.port, self.ldaps_port = free_port(self.host), free_port(self.host)
        return self

    def start(self) -> SlapdServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server writes it until it stops
        try:
            self.proc = subprocess.Popen(
                ["slapd", "-d", "0", "-f", str(self.conf),
                 "-h", f"ldap://{self.host}:{self.port}/ ldaps://{self.host}:{self.ldaps_port}/"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)
        finally:
            log.close()
        wait_port(self.host, self.port, time.monotonic() + START_TIMEOUT, alive=lambda: self.proc.poll() is None)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                stop_tree(self.proc)
        self.proc = None

    @property
    def uri(self) -> str:
        return f"ldap://{self.host}:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        return f"ldaps://{self.host}:{self.ldaps_port}"

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
