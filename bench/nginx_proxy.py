"""nginx's mail proxy (Debian's `nginx` + `libnginx-mod-mail`) in front of palomar's Dovecot backends:
the second comparison point.

nginx asks an `auth_http` service for every login. That service is the same nginx instance's own
`http` block (no extra process to count or to slow down): a `map` over "user:password" decides
`Auth-Status`, another gives the user's backend, and the answer replaces the login with the backend's
master user (`Auth-User: user*master`, `Auth-Pass`), the only login palomar's backends accept
(`auth_master_user_separator = *`). Two worker processes, one per core.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from dovecot_proxy import Route, SpawnedServer, spawn_server
from palomar.devcluster.net import free_port

NGINX = "/usr/sbin/nginx"
MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
WORKERS = 2


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_nginx_conf(root: Path, listen: str, port: int, imaps_port: int, auth_port: int,
                      tls: tuple[Path, Path], routes: list[Route]) -> str:
    checks = "\n".join(f"        {_quote(f'{r.user}:{r.password}')} OK;" for r in routes)
    servers = "\n".join(f"        {_quote(r.user)} {r.host};" for r in routes)
    ports = "\n".join(f"        {_quote(r.user)} {r.port};" for r in routes)
    masters = "\n".join(f"        {_quote(r.user)} {_quote(r.user + '*' + r.master_user)};" for r in routes)
    passes = "\n".join(f"        {_quote(r.user)} {_quote(r.master_password)};" for r in routes)
    cert, key = tls
    return f"""\
# nginx mail proxy with its own auth_http service (benchmark comparison point), by bench/nginx_proxy.py.
load_module {MAIL_MODULE};
daemon off;
worker_processes {WORKERS};
worker_rlimit_nofile 50000;
pid {root / 'nginx.pid'};
error_log {root / 'error.log'} warn;
events {{
    worker_connections 20000;
}}
http {{
    access_log off;
    client_body_temp_path {root / 'tmp'};
    map "$http_auth_user:$http_auth_pass" $auth_status {{
        default "Invalid login or password";
{checks}
    }}
    map $http_auth_user $auth_server {{
{servers}
    }}
    map $http_auth_user $auth_port {{
{ports}
    }}
    map $http_auth_user $auth_login {{
{masters}
    }}
    map $http_auth_user $auth_pass {{
{passes}
    }}
    server {{
        listen {listen}:{auth_port};
        location = /auth {{
            add_header Auth-Status $auth_status;
            add_header Auth-Server $auth_server;
            add_header Auth-Port $auth_port;
            add_header Auth-User $auth_login;
            add_header Auth-Pass $auth_pass;
            return 204;
        }}
    }}
}}
mail {{
    server_name proxy.example.test;
    auth_http {listen}:{auth_port}/auth;
    proxy on;
    imap_auth login plain;
    imap_capabilities IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    server {{
        listen {listen}:{port};
        protocol imap;
    }}
    server {{
        listen {listen}:{imaps_port} ssl;
        protocol imap;
    }}
}}
"""


@dataclass
class NginxProxy(SpawnedServer):
    """One `nginx` master with its workers; `stop()` ends the whole tree."""

    root: Path
    listen: str
    port: int
    imaps_port: int
    tls: tuple[Path, Path]
    routes: list[Route]
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> NginxProxy:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        config = self.root / "nginx.conf"
        config.write_text(render_nginx_conf(self.root, self.listen, self.port, self.imaps_port,
                                            free_port(self.listen), self.tls, self.routes))
        self.proc = spawn_server([NGINX, "-p", str(self.root), "-c", str(config), "-e", str(self.root / "error.log")],
                                 self.root / "nginx.stderr.log", (self.listen, self.port), self.root / "error.log",
                                 "nginx", timeout)
        return self

