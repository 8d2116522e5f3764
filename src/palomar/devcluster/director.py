"""A real Dovecot 2.3 director ring on loopback: the setup an operator migrates away from.

Each director is a Dovecot instance of its own (Debian's dovecot-core still ships the
director service) listening on its own loopback address; together they form a ring
(`director_servers`) that hashes users to `director_mail_servers` and proxies their IMAP
logins there. The directors authenticate users from a passwd-file and log in to the mail
servers as the backends' master user, as a proxy in front of palomar's backends would.
"""

from __future__ import annotations

import atexit
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from palomar.backend.dovecot_config import DEFAULT_MASTER_USER
from palomar.devcluster.dovecot import STARTED_UP, ensure_mail_user
from palomar.devcluster.net import free_port, free_port_on_all, wait_port, wait_until
from palomar.devcluster.procs import stop_tree


@dataclass
class DirectorNode:
    name: str
    host: str
    imap: int
    config: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.config.parent / "dovecot.log"


@dataclass
class DirectorRingInstance:
    """`hosts` directors in a ring in front of `mail_servers` (IPs), which serve IMAP on `mail_port`."""

    root: Path
    hosts: tuple[str, ...]
    mail_servers: tuple[str, ...]
    mail_port: int
    users_passwd: Path
    master_password: str = field(repr=False)
    master_user: str = DEFAULT_MASTER_USER
    username_hash: str = "%Lu"
    nodes: list[DirectorNode] = field(default_factory=list)

    def _config(self, node: DirectorNode, ring_port: int) -> str:
        run = node.config.parent
        servers = " ".join(f"{host}:{ring_port}" for host in self.hosts)
        fields = (f"proxy=y master={self.master_user} pass={self.master_password} port={self.mail_port}")
        return "\n".join([
            f"instance_name = {node.name}",
            f"listen = {node.host}",
            f"base_dir = {run / 'run'}",
            f"state_dir = {run / 'state'}",
            f"log_path = {node.log_path}",
            "protocols = imap",
            "ssl = no",
            "disable_plaintext_auth = no",
            f"director_servers = {servers}",
            f"director_mail_servers = {' '.join(self.mail_servers)}",
            f"director_username_hash = {self.username_hash}",
            "service director {",
            "  unix_listener login/director {\n    mode = 0666\n  }",
            "  fifo_listener login/proxy-notify {\n    mode = 0666\n  }",
            f"  inet_listener {{\n    port = {ring_port}\n  }}",
            "}",
            "service imap-login {",
            "  executable = imap-login director",
            f"  inet_listener imap {{\n    port = {node.imap}\n  }}",
            "  inet_listener imaps {\n    port = 0\n  }",
            "}",
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=SHA512-CRYPT {self.users_passwd}",
            f"  default_fields = {fields}",
            "}",
        ]) + "\n"

    def start(self, timeout: float = 30.0) -> DirectorRingInstance:
        ensure_mail_user()
        ring_port = free_port_on_all(self.hosts, "the director ring")
        atexit.register(self.stop)
        for index, host in enumerate(self.hosts, start=1):
            node = DirectorNode(f"director{index}", host, free_port(host), self.root / f"director{index}" / "dovecot.conf")
            node.config.parent.mkdir(parents=True, exist_ok=True)
            node.config.write_text(self._config(node, ring_port))
            node.config.chmod(0o644)
            with open(node.config.parent / "stderr.log", "ab") as err:
                node.proc = subprocess.Popen(["dovecot", "-F", "-c", str(node.config)], stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            self.nodes.append(node)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            wait_port(node.host, node.imap, deadline, alive=lambda n=node: n.proc is not None and n.proc.poll() is None)
            wait_until(lambda n=node: STARTED_UP.search(n.log_path.read_bytes() if n.log_path.exists() else b"")
                       is not None, max(0.0, deadline - time.monotonic()), f"{node.name} start-up")
        wait_until(self.synced, max(0.0, deadline - time.monotonic()), "the director ring to sync")
        return self

    def doveadm(self, *args: str, node: int = 0) -> str:
        """Run `doveadm ARGS` against one director (its admin socket); stdout."""
        done = subprocess.run(["doveadm", "-c", str(self.nodes[node].config), *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, check=True, timeout=30)
        return done.stdout

    def synced(self) -> bool:
        """Whether every director sees the whole ring as synced (`doveadm director ring status`)."""
        for index in range(len(self.nodes)):
            try:
                status = self.doveadm("director", "ring", "status", node=index)
            except subprocess.CalledProcessError:
                return False
            lines = status.splitlines()[1:]
            if len(lines) < len(self.nodes) or not all(re.search(r"\bsynced\b", line) for line in lines):
                return False
        return True

    def mail_servers_status(self, node: int = 0) -> dict[str, tuple[int, str]]:
        """`doveadm director status` as {mail server IP: (vhost count, up|down)} (untagged servers)."""
        table = {}
        for line in self.doveadm("director", "status", node=node).splitlines()[1:]:
            words = line.split()
            if len(words) >= 3:
                table[words[0]] = (int(words[1]), words[2])
        return table

    def hashed(self, username: str, node: int = 0) -> str:
        """The mail server the ring hashes `username` to now (`doveadm director status USER`: Hashed)."""
        match = re.search(r"^Hashed: (\S+)$", self.doveadm("director", "status", username, node=node), re.M)
        if match is None:
            raise AssertionError(f"no Hashed: line for {username}")
        return match[1]

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                stop_tree(node.proc)
                node.proc = None
        atexit.unregister(self.stop)
