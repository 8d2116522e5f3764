"""A real HAProxy in TCP mode in front of palomar proxies, as in the seed's sample haproxy.conf.

Every server line has `check send-proxy-v2`, so the proxies behind it see the client's
address in a PROXY v2 header. HAProxy runs in the foreground (`-db`) as our child.

A plain TCP check cannot see a stalled proxy (SIGSTOP, a wedged event loop): the kernel
still completes the handshake. So a listener that names its protocol is checked the way a
client would notice: connect (with a PROXY header, over TLS where the port is TLS), wait for
the greeting, say goodbye. A proxy that does not greet within `timeout check` twice in a row
is taken out of rotation. Its sessions are left alone (no `on-marked-down shutdown-sessions`): a
proxy that stops gracefully closes its listeners first, fails its checks at once, and must
still finish the logins and LMTP transactions it holds.
"""

from __future__ import annotations

import atexit
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from palomar.devcluster.net import wait_port
from palomar.devcluster.procs import stop_tree


@dataclass(frozen=True)
class GreetingCheck:
    """What a healthy proxy says first on a protocol's port, and the polite way to leave."""

    expect: str
    goodbye: str
    tls: bool = False


GREETING_CHECKS = {
    "imap": GreetingCheck("* OK", "a LOGOUT\\r\\n"),
    "imaps": GreetingCheck("* OK", "a LOGOUT\\r\\n", tls=True),
    "pop3": GreetingCheck("+OK", "QUIT\\r\\n"),
    "pop3s": GreetingCheck("+OK", "QUIT\\r\\n", tls=True),
    "sieve": GreetingCheck("\\nOK", "LOGOUT\\r\\n"),
    "submission": GreetingCheck("220 ", "QUIT\\r\\n"),
    "submissions": GreetingCheck("220 ", "QUIT\\r\\n", tls=True),
    "lmtp": GreetingCheck("220 ", "QUIT\\r\\n"),
}
"""By LocalCluster's listener name; strings in HAProxy's escaped form."""


@dataclass(frozen=True)
class Listen:
    """One `listen` section: clients connect to any of `binds`, connections go round-robin to `servers`."""

    name: str
    binds: Sequence[tuple[str, int]]
    servers: Sequence[tuple[str, int]]
    send_proxy_v2: bool = True
    check: bool = True
    extra_server_options: tuple[str, ...] = field(default=())
    greeting: GreetingCheck | None = None
    """Check each server by its greeting (see the module's docstring); None: a TCP connect."""


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_haproxy_cfg(listens: Sequence[Listen], *, timeout_client: str = "1m",
                       timeout_server: str = "1m", timeout_connect: str = "10s",
                       check_interval: str = "2s", timeout_check: str = "10s", maxconn: int = 4096) -> str:
    """The haproxy.cfg text: the seed's defaults, one `listen` per entry. `maxconn` bounds the whole
    process and each `listen` (HAProxy raises its own RLIMIT_NOFILE to fit it when started as root)."""
    lines = [
        "global",
        "  log stderr format raw local0 info",
        f"  maxconn {maxconn}",
        "",
        "defaults",
        "  mode tcp",
        "  log global",
        "  option dontlognull",
        "  retries 3",
        "  timeout queue 1m",
        f"  timeout connect {timeout_connect}",
        f"  timeout client {timeout_client}",
        f"  timeout server {timeout_server}",
        f"  timeout check {timeout_check}",
        f"  maxconn {maxconn}",
    ]
    for listen in listens:
        lines += ["", f"listen {listen.name}", *(f"  bind {_addr(*bind)}" for bind in listen.binds),
                  "  mode tcp", "  balance roundrobin"]
        greeting = listen.greeting if listen.check else None
        if greeting is not None:
            # A refused connection is retried on another server, not on the dead one.
            lines += ["  option redispatch 1", "  option tcp-check",
                      f'  tcp-check expect string "{greeting.expect}"', f'  tcp-check send "{greeting.goodbye}"']
        for index, (host, port) in enumerate(listen.servers, start=1):
            options = []
            if greeting is not None:
                options += [f"check inter {check_interval} fall 2 rise 2 check-send-proxy",
                            *(["check-ssl verify none"] if greeting.tls else [])]
            elif listen.check:
                options.append(f"check inter {check_interval}")
            if listen.send_proxy_v2:
                options.append("send-proxy-v2")
            options.extend(listen.extra_server_options)
            lines.append(f"  server {listen.name}-{index} {_addr(host, port)} {' '.join(options)}".rstrip())
    return "\n".join(lines) + "\n"


class HAProxyInstance:
    """haproxy -db with a rendered config under `workdir`; stopped by pid."""

    def __init__(self, listens: Sequence[Listen], workdir: Path, **render_options: str | int) -> None:
        self.listens = list(listens)
        self.workdir = workdir
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self._render_options = render_options
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        """None while the process runs (or before start); its exit status once it ended (it is reaped)."""
        return None if self._proc is None else self._proc.poll()

    def start(self, timeout: float = 15.0) -> None:
        if self.running():
            return
        self.stop()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_haproxy_cfg(self.listens, **self._render_options))
        check = subprocess.run(["haproxy", "-c", "-f", str(self.config_path)], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejects {self.config_path}:\n{check.stdout}{check.stderr}")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.config_path)],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        try:
            for listen in self.listens:
                for host, port in listen.binds:
                    wait_port(host, port, deadline, alive=self.running)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"haproxy did not start: {exc}\n{self.log_text()}") from None

    def stop(self) -> None:
        if self._proc is not None:
            stop_tree(self._proc)
            self._proc = None
        atexit.unregister(self.stop)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
