"""A real Dovecot CE backend instance on loopback, configured by palomar's own generator.

The master runs in the foreground (`dovecot -F`) as our child, with stdin/stdout/stderr
redirected: Dovecot keeps inherited descriptors open in all its processes, which would
hang any caller that reads our output through a pipe.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import ipaddress
import os
import pwd
import re
import resource
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

from palomar.backend.doveadm_client import DoveadmClient
from palomar.backend.dovecot_config import DEFAULT_MASTER_USER, DovecotParams, write_instance
from palomar.devcluster.net import free_ports, wait_port, wait_until
from palomar.devcluster.procs import stop_tree

INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
MIN_INOTIFY_INSTANCES = 8192
STARTED_UP = re.compile(rb"master: Info: Dovecot v\S+ .*starting up")


def ensure_mail_user(name: str = "vmail") -> pwd.struct_passwd:
    """The system user every mailbox belongs to; created (with its group) if missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name],
                   stdin=subprocess.DEVNULL, capture_output=True, check=False)
    return pwd.getpwnam(name)  # KeyError here means useradd really failed


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit; Dovecot inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ensure_inotify_instances(minimum: int = MIN_INOTIFY_INSTANCES) -> None:
    """All sessions run as one uid and IDLE takes an inotify instance each (default 128)."""
    try:
        if int(INOTIFY_INSTANCES.read_text()) < minimum:
            INOTIFY_INSTANCES.write_text(f"{minimum}\n")
    except OSError:
        pass  # read-only /proc/sys: IDLE falls back to polling, tests still pass


def backend_params(name: str, listen: str, root: Path, mail_root: Path, *,
                   relay: tuple[str, int] = ("127.0.0.1", 25),
                   master_password: str | None = None,
                   imap_port: int = 0,
                   direct: tuple[dict[str, int], tuple[str, ...]] | None = None,
                   direct_tls: tuple[Path, Path] | None = None,
                   extra_settings: tuple[tuple[str, str], ...] = ()) -> DovecotParams:
    """Params of one test backend under `root/name`, with fresh free ports and secrets.

    `imap_port` (0: a free one) fixes the IMAP port, e.g. one port on every backend for a
    Dovecot director in front of them, which proxies to one port on all its mail servers.
    `direct` (the direct path): the haproxy ports by protocol and the proxies' networks; the
    login check socket is then `run/palomar-login-check` beside Dovecot's own sockets; `direct_tls`
    (certificate, key) puts TLS on those listeners.
    """
    home = root / name
    taken = {imap_port, *(direct[0].values() if direct else ())}
    ports = [port for port in free_ports(listen, 13) if port not in taken][:8]
    imap, pop3, lmtp, submission, sieve, doveadm_http, doveadm_tcp, metrics = ports
    imap = imap_port or imap
    return DovecotParams(
        instance_name=name,
        hostname=f"{name}.example.test",
        conf_dir=home / "etc",
        base_dir=home / "run",
        state_dir=home / "state",
        log_path=home / "dovecot.log",
        listen=listen,
        imap_port=imap,
        pop3_port=pop3,
        lmtp_port=lmtp,
        submission_port=submission,
        sieve_port=sieve,
        doveadm_http_port=doveadm_http,
        doveadm_tcp_port=doveadm_tcp,
        metrics_port=metrics,
        mail_root=mail_root,
        master_user=DEFAULT_MASTER_USER,
        master_password=master_password or secrets.token_urlsafe(24),
        doveadm_password=secrets.token_urlsafe(18),
        doveadm_api_key=secrets.token_urlsafe(18),
        trusted_networks=("127.0.0.1/32", "::1/128", str(ipaddress.ip_network(listen))),
        relay_host=relay[0],
        relay_port=relay[1],
        extra_settings=extra_settings,
        login_check_socket=home / "run" / "palomar-login-check" if direct else None,
        haproxy_imap_port=direct[0].get("imap", 0) if direct else 0,
        haproxy_pop3_port=direct[0].get("pop3", 0) if direct else 0,
        haproxy_submission_port=direct[0].get("submission", 0) if direct else 0,
        haproxy_sieve_port=direct[0].get("sieve", 0) if direct else 0,
        haproxy_trusted_networks=direct[1] if direct else (),
        haproxy_tls=direct_tls if direct else None,
    )


class DovecotInstance:
    """One Dovecot CE process tree; `start()`/`stop()` are idempotent and stop() runs at exit."""

    def __init__(self, params: DovecotParams) -> None:
        self.params = params
        self.stderr_path = params.log_path.with_suffix(".stderr.log")
        self._proc: subprocess.Popen[bytes] | None = None
        self._http: DoveadmClient | None = None

    def __repr__(self) -> str:
        return f"DovecotInstance({self.params.instance_name} on {self.params.listen}, pid={self.pid})"

    @property
    def host(self) -> str:
        return self.params.listen

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        """None while the master runs (or before start); its exit status once it ended (it is reaped)."""
        return None if self._proc is None else self._proc.poll()

    def start(self, timeout: float = 30.0) -> None:
        """Prepare the host, write the config, start Dovecot, wait until every listener accepts."""
        if self.running():
            return
        self.stop()  # after a crash: reap the master, end what it left (its listeners), then start afresh
        p = self.params
        mail_user = ensure_mail_user(p.mail_uid)
        raise_open_files_limit()
        ensure_inotify_instances()
        for directory in (p.base_dir, p.state_dir, p.log_path.parent):
            directory.mkdir(parents=True, exist_ok=True)
        p.mail_root.mkdir(parents=True, exist_ok=True)
        os.chown(p.mail_root, mail_user.pw_uid, mail_user.pw_gid)
        files = write_instance(p)
        log_offset = p.log_path.stat().st_size if p.log_path.exists() else 0
        with open(self.stderr_path, "ab") as err:
            self._proc = subprocess.Popen(["dovecot", "-F", "-c", str(files.config)],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                          start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        try:
            for port in p.listeners().values():
                wait_port(p.listen, port, deadline, alive=self.running)
            # A listener that accepts may be someone else's: Dovecot binds its ports one by one and
            # exits on the first clash. It logs "starting up" only once all of them are bound.
            wait_until(lambda: self._started_up(log_offset), max(0.0, deadline - time.monotonic()),
                       f"{p.instance_name}'s start-up line in {p.log_path}")
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"{p.instance_name} did not start: {exc}\n{self._diagnostics()}") from None

    def _started_up(self, log_offset: int) -> bool:
        """Whether the master logged its start-up line after `log_offset`; raises once it has exited."""
        if not self.running():
            raise RuntimeError(f"dovecot exited with status {self.returncode()}")
        try:
            with open(self.params.log_path, "rb") as log:
                log.seek(log_offset)
                return STARTED_UP.search(log.read()) is not None
        except FileNotFoundError:
            return False

    def stop(self) -> None:
        """TERM the master and every process it had; nothing of this instance is left running."""
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._proc is not None:
            stop_tree(self._proc)
            self._proc = None
        atexit.unregister(self.stop)

    def _diagnostics(self) -> str:
        parts = []
        for path in (self.stderr_path, self.params.log_path):
            if path.exists():
                parts.append(f"--- {path}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    # --- logs ------------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.params.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """First match of regex `pattern` in the log; Dovecot's log process writes asynchronously."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.log_text(), re.MULTILINE)
            if match:
                found.append(match)
            return match is not None

        try:
            wait_until(seen, timeout, f"{pattern!r} in {self.params.log_path}")
        except TimeoutError:
            raise AssertionError(f"no log line matches {pattern!r}; log tail:\n"
                                 + "\n".join(self.log_text().splitlines()[-20:])) from None
        return found[0]

    # --- doveadm -----------------------------------------------------------------------------------
    def doveadm(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run the doveadm CLI against this instance."""
        return subprocess.run(["doveadm", "-c", str(self.params.config_path), *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, check=check, timeout=timeout)

    def _doveadm_client(self) -> DoveadmClient:
        if self._http is None:
            p = self.params
            key = "X-Dovecot-API " + base64.b64encode(p.doveadm_api_key.encode()).decode() if p.doveadm_api_key else ""
            self._http = DoveadmClient(p.listen, p.doveadm_http_port, p.doveadm_password, authorization=key,
                                       timeout=10)
        return self._http

    def doveadm_http_raw(self, payload: Any, authorization: str | None = None) -> tuple[int, Any]:
        """POST `payload` to /doveadm/v1 (keep-alive); (status, parsed body)."""
        return self._doveadm_client().post(payload, authorization)

    def doveadm_http(self, command: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run one doveadm command over the HTTP API and return its result rows."""
        return self._doveadm_client().call(command, params or {})

    # --- metrics -----------------------------------------------------------------------------------
    def metrics(self) -> tuple[str, str]:
        """(content type, body) of GET /metrics on the stats HTTP listener."""
        conn = http.client.HTTPConnection(self.params.listen, self.params.metrics_port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            body = response.read().decode(errors="replace")
            if response.status != 200:
                raise AssertionError(f"GET /metrics: HTTP {response.status}")
            return response.getheader("Content-Type", ""), body
        finally:
            conn.close()

