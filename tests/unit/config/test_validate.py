"""Cross-setting rules: what each role requires, TLS, HAProxy, doveadm, GeoDB engine, port clashes."""

from __future__ import annotations

import pytest

from palomar.config import ConfigError, load
from palomar.proxy.workers import worker_count

from .test_loader import PROXY


def _errors(path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value.lines


def test_backend_requires_name_site_secret_and_master_password(write) -> None:
    path = write("backend.conf", "# a backend\n@cluster_defaults = backend\n")
    assert _errors(path) == [
        f"{path}:2: cluster_backend_name: required on a backend (@cluster_defaults = backend)",
        f"{path}:2: cluster_local_site: required on a backend (@cluster_defaults = backend)",
        f"{path}:2: cluster_hop_secret: required on a backend (@cluster_defaults = backend) "
        "(or doveadm_password, from which it is derived)",
        f"{path}:2: cluster_backend_dovecot_master_password: required on a backend (@cluster_defaults = backend) "
        "(or doveadm_password, from which it is derived)",
        f"{path}:2: cluster_hop_ssl: TLS on the hop is on (cluster_hop_ssl = yes, the default) but "
        "cluster_hop_ssl_cert_file and cluster_hop_ssl_key_file are not set; set them or cluster_hop_ssl = no",
    ]


def test_proxy_requires_site_secret_and_test_login(write) -> None:
    path = write("proxy.conf", "@cluster_defaults = proxy\nssl = no\n")
    assert _errors(path) == [
        f"{path}:1: cluster_local_site: required on a proxy (@cluster_defaults = proxy)",
        f"{path}:1: cluster_hop_secret: required on a proxy (@cluster_defaults = proxy) "
        "(or doveadm_password, from which it is derived)",
        f"{path}:1: cluster_backend_test_username: required to probe backends "
        "(or set cluster_proxy_check_backends = no)",
        f"{path}:1: cluster_backend_test_password: required to probe backends "
        "(or set cluster_proxy_check_backends = no)",
        f"{path}:1: cluster_hop_ssl: TLS on the hop is on (cluster_hop_ssl = yes, the default) but "
        "cluster_hop_ssl_ca_file is not set; set them or cluster_hop_ssl = no",
    ]
    relaxed = write("relaxed.conf", "@cluster_defaults = proxy\nssl = no\ncluster_local_site = A\n"
                                    "cluster_hop_secret = s\ncluster_proxy_check_backends = no\n"
                                    "cluster_hop_ssl = no\n")
    assert load(relaxed)["cluster_proxy_check_backends"] is False


def test_tls_needs_certificate_and_key(write) -> None:
    base = PROXY.replace("ssl = no", "")
    debian = load(write("debian.conf", base))  # Debian's dovecot-core certificate, as Dovecot there uses
    assert (str(debian["ssl_server_cert_file"]), str(debian["ssl_server_key_file"])) == (
        "/etc/dovecot/private/dovecot.pem", "/etc/dovecot/private/dovecot.key")
    path = write("proxy.conf", base + "ssl_server_cert_file = /etc/palomar/cert.pem\nssl_server_key_file =\n")
    assert _errors(path) == [
        f"{path}:1: ssl: TLS is enabled (ssl = yes) but ssl_server_key_file is not set; set them or ssl = no"
    ]
    required = write("required.conf", "ssl = required\nssl_server_cert_file =\nssl_server_key_file =\n")
    assert _errors(required) == [
        f"{required}:1: ssl: TLS is enabled (ssl = required) but ssl_server_cert_file and ssl_server_key_file "
        "are not set; set them or ssl = no"
    ]
    listener = write("listener.conf", "service doveadm {\n  inet_listener tcp {\n    port = 2300\n"
                                      "    ssl = yes\n  }\n}\ndoveadm_password = x\nssl_server_key_file =\n")
    assert _errors(listener)[0].startswith(f"{listener}:2: ssl: TLS is enabled")
    ok = write("ok.conf", base + "ssl_server_cert_file = /c.pem\nssl_server_key_file = /k.pem\n")
    assert set(load(ok).services["imap-login"].listeners) == {"imap", "imaps"}


def test_explicit_tls_listener_with_ssl_off(write) -> None:
    path = write("proxy.conf", PROXY + "service imap-login {\n  inet_listener imaps {\n    port = 1993\n  }\n}\n")
    assert _errors(path) == [
        f"{path}:9: service imap-login {{ inet_listener imaps }}: ssl = yes but ssl = no globally"
    ]


def test_haproxy_listener_requires_trusted_networks(write) -> None:
    path = write("proxy.conf", PROXY + """
        service imap-login {
          inet_listener imap-haproxy {
            haproxy = yes
            port = 1143
          }
        }
        """)
    assert _errors(path) == [
        f"{path}:10: service imap-login {{ inet_listener imap-haproxy }}: haproxy = yes needs haproxy_trusted_networks"
    ]
    fixed = write("fixed.conf", path.read_text() + "haproxy_trusted_networks = 127.0.0.0/8\n")
    assert load(fixed).services["imap-login"].listeners["imap-haproxy"].haproxy is True


def test_a_doveadm_listener_needs_doveadm_password(write) -> None:
    """The seed's doveadm block loads; without the password nobody could authenticate."""
    seed_block = "service doveadm {\n  inet_listener tcp {\n    port = 2300\n  }\n}\n"
    assert load(write("a.conf", "doveadm_password = x\n" + seed_block)).doveadm_tcp_port == 2300
    no_password = write("b.conf", seed_block)
    assert _errors(no_password) == [f"{no_password}:2: service doveadm {{ inet_listener tcp }}: doveadm_password is "
                                    "required (doveadm clients authenticate with it)"]
    port_only = write("c.conf", "doveadm_password = x\ndoveadm_port = 2300\n")
    assert load(port_only).doveadm_tcp_port == 2300
    http = "service doveadm {\n  inet_listener http {\n    port = 8080\n  }\n}\n"
    assert _errors(write("e.conf", http)) == [f"{write('e.conf', http)}:2: service doveadm {{ inet_listener http }}: "
                                              "doveadm_password or doveadm_api_key is required (doveadm clients "
                                              "authenticate with it)"]
    assert load(write("f.conf", "doveadm_api_key = k\n" + http)).services["doveadm"].listeners["http"].port == 8080


def test_a_proxys_doveadm_listener_may_use_tls(write) -> None:
    tls = write("d.conf", "doveadm_password = x\nservice doveadm {\n  inet_listener tcps {\n"
                          "    port = 2301\n    ssl = yes\n  }\n}\n")
    assert load(tls).services["doveadm"].listeners["tcps"].ssl is True
    off = write("off.conf", "ssl = no\n" + tls.read_text())
    assert _errors(off) == [f"{off}:4: service doveadm {{ inet_listener tcps }}: ssl = yes but ssl = no globally"]


@pytest.mark.parametrize(("hop", "doveadm_ssl", "error"), [
    ("yes", "ssl", None),
    ("yes", "starttls", None),
    ("no", "no", None),
    ("no", "ssl", "doveadm_ssl = ssl: forwarded doveadm commands travel over the hop, which is plaintext "
                  "(cluster_hop_ssl = no); set cluster_hop_ssl = yes or doveadm_ssl = no"),
    ("no", "starttls", "doveadm_ssl = starttls: forwarded doveadm commands travel over the hop, which is "
                       "plaintext (cluster_hop_ssl = no); set cluster_hop_ssl = yes or doveadm_ssl = no"),
])
def test_doveadm_ssl_is_tls_on_the_hop(write, hop: str, doveadm_ssl: str, error: str | None) -> None:
    path = write("p.conf", f"doveadm_ssl = {doveadm_ssl}\ncluster_hop_ssl = {hop}\n"
                           + ("cluster_hop_ssl_ca_file = /ca.pem\n" if hop == "yes" else ""))
    if error is None:
        assert load(path)["doveadm_ssl"] == doveadm_ssl
    else:
        assert _errors(path) == [f"{path}:1: {error}"]


def test_a_backends_doveadm_listener_is_its_dovecots(write) -> None:
    """On a backend the port is the local Dovecot's (on cluster_backend_dovecot_host): nothing else applies."""
    backend = ("@cluster_defaults = backend\ncluster_backend_name = be1\ncluster_local_site = DC1\n"
               "doveadm_password = x\ncluster_hop_ssl = no\n")
    assert load(write("ok.conf", backend + "doveadm_port = 2300\n")).doveadm_tcp_port == 2300
    extra = write("extra.conf", backend + "service doveadm {\n  inet_listener tcp {\n    port = 2300\n"
                                          "    haproxy = yes\n    address = 10.0.0.1\n  }\n}\n")
    problems = [e for e in _errors(extra) if "not used on a backend" in e]
    assert [p.split(": ")[2] for p in problems] == ["haproxy is not used on a backend", "address is not used on a backend"]


def test_worker_processes_only_on_a_proxys_login_services(write) -> None:
    path = write("p.conf", "service imap-login {\n  process_limit = 100\n  process_min_avail = 4\n}\n"
                           "service lmtp {\n  process_limit = 1\n  process_min_avail = 1\n}\n")
    assert _errors(path) == [
        f"{path}:1: service imap-login: process_limit and process_min_avail are only used on a proxy's "
        "imap-login, pop3-login, submission-login, managesieve-login services (worker processes); remove them here",
    ]
    lmtp = write("l.conf", PROXY + "service lmtp {\n  process_limit = 2\n}\n")
    assert [e.split(": ", 1)[1] for e in _errors(lmtp)] == [
        "service lmtp: process_limit and process_min_avail are only used on a proxy's imap-login, pop3-login, "
        "submission-login, managesieve-login services (worker processes); remove them here"]


@pytest.mark.parametrize(("settings", "problem"), [
    ("process_limit = 65", "service imap-login: at most 64 worker processes"),
    ("process_min_avail = 65", "service imap-login: at most 64 worker processes"),
    ("process_limit = 2\n  process_min_avail = 3",
     "service imap-login: process_min_avail (3) is higher than process_limit (2)"),
])
def test_worker_process_counts_are_bounded(write, settings: str, problem: str) -> None:
    path = write("w.conf", PROXY + f"service imap-login {{\n  {settings}\n}}\n")
    assert [e.split(": ", 1)[1] for e in _errors(path)] == [problem]


@pytest.mark.parametrize(("settings", "workers"), [
    ("", 1),
    ("process_limit = 1\n  process_min_avail = 1", 1),
    ("process_min_avail = 2", 2),
    ("process_limit = 3", 3),
    ("process_limit = 4\n  process_min_avail = 2", 4),
])
def test_the_worker_count_is_the_largest_login_service_setting(write, settings: str, workers: int) -> None:
    cfg = load(write("w.conf", PROXY + f"service imap-login {{\n  {settings}\n}}\n"
                                       "service pop3-login {\n  process_min_avail = 1\n}\n"))
    assert worker_count(cfg.services) == workers


def test_client_limit_only_where_it_is_enforced(write) -> None:
    stats = write("s.conf", "service stats {\n  client_limit = 5\n}\n")
    assert _errors(stats) == [f"{stats}:1: service stats: client_limit is only enforced on a proxy's "
                              "imap-login, pop3-login, submission-login, managesieve-login, lmtp services; remove it here"]


def test_geodb_engine_settings_must_match_the_driver(write) -> None:
    assert load(write("seed.conf", "cassandra_hosts = c1 c2\n"))["cluster_geodb_driver"] == "cassandra"
    assert load(write("empty.conf", "\n"))["cluster_geodb_driver"] == "sqlite"
    path = write("a.conf", "cluster_geodb_driver = sqlite\ncassandra_hosts = c1 c2\ncassandra_keyspace = ks\n")
    assert _errors(path) == [
        f"{path}:2: cassandra_hosts: only used with cluster_geodb_driver = cassandra (cluster_geodb_driver is sqlite)",
        f"{path}:3: cassandra_keyspace: only used with cluster_geodb_driver = cassandra "
        "(cluster_geodb_driver is sqlite)",
    ]
    cassandra = write("b.conf", "cluster_geodb_driver = cassandra\ncluster_geodb_path = /x.sqlite\n")
    assert _errors(cassandra) == [
        f"{cassandra}:1: cassandra_hosts: required with cluster_geodb_driver = cassandra",
        f"{cassandra}:2: cluster_geodb_path: only used with cluster_geodb_driver = sqlite",
    ]


def test_listeners_on_the_same_port_clash(write) -> None:
    path = write("a.conf", """
        ssl = no
        service lmtp {
          inet_listener lmtp {
            port = 143
            address = 127.0.0.1
          }
        }
        service stats {
          inet_listener http {
            port = 9900
            address = ::1
          }
          inet_listener http2 {
            port = 9900
            address = 127.0.0.1
          }
        }
        """)
    assert _errors(path) == [
        f"{path}:3: service lmtp {{ inet_listener lmtp }}: port 143 on 127.0.0.1 is already used by "
        "service imap-login { inet_listener imap }"
    ]


def test_hop_tls_needs_its_files_on_each_role_and_plaintext_refuses_them(write) -> None:
    backend = write("backend.conf", "@cluster_defaults = backend\ncluster_backend_name = b\ncluster_local_site = A\n"
                                    "cluster_hop_secret = s\ncluster_backend_dovecot_master_password = m\n"
                                    "cluster_hop_ssl_cert_file = /etc/palomar/hop.crt\n")
    assert _errors(backend) == [
        f"{backend}:1: cluster_hop_ssl: TLS on the hop is on (cluster_hop_ssl = yes, the default) but "
        "cluster_hop_ssl_key_file is not set; set them or cluster_hop_ssl = no"
    ]
    plain = write("plain.conf", PROXY + "cluster_hop_ssl = no\n")
    assert _errors(plain) == [
        f"{plain}:6: cluster_hop_ssl_ca_file: only used with cluster_hop_ssl = yes (cluster_hop_ssl is no)"
    ]
    assert load(write("ok.conf", PROXY.replace("cluster_hop_ssl_ca_file = /etc/palomar/hop-ca.crt",
                                               "cluster_hop_ssl = no")))["cluster_hop_ssl"] == "no"


def test_pre_login_capability_settings_are_checked(write) -> None:
    path = write("proxy.conf", PROXY + "imap_capability = +IDLE STARTTLS\n"
                 "submission_backend_capabilities = 8BITMIME PIPELINING\n")
    errors = _errors(path)
    assert any(e.startswith(f"{path}:8: imap_capability: STARTTLS is decided by the connection state") for e in errors)
    assert any(e.startswith(f"{path}:9: submission_backend_capabilities: PIPELINING is not one of") for e in errors)


def test_pre_login_capability_settings_load(write) -> None:
    cfg = load(write("proxy.conf", PROXY + "imap_capability = +XFOO\nsubmission_backend_capabilities =\n"
                     "managesieve_sieve_capability = fileinto vacation\n"))
    assert cfg["imap_capability"] == "+XFOO" and cfg.is_set("submission_backend_capabilities")


# A minimal valid backend, for tests that only change one thing.
BACKEND = """
    @cluster_defaults = backend
    cluster_backend_name = be1
    cluster_local_site = DC1
    cluster_hop_secret = hop
    cluster_hop_ssl = no
    cluster_backend_dovecot_master_password = m
"""


def test_userdb_sections_are_refused_on_every_role(write) -> None:
    """Nothing reads a userdb: the proxy needs a passdb, a backend's Dovecot gets its userdb elsewhere."""
    for role, base in (("proxy", PROXY), ("backend", BACKEND)):
        path = write(f"{role}.conf", base + "userdb {\n  driver = static\n  args = uid=vmail\n}\n")
        [error] = _errors(path)
        assert error.startswith(f"{path}:{base.count(chr(10))}: userdb: not used: a proxy needs only a passdb")
        assert "palomar backend dovecot-config" in error


def test_unix_listeners_are_refused_because_no_socket_is_created(write) -> None:
    """Only the Palomar document's own `service cluster` sockets are accepted (a documented no-op)."""
    path = write("p.conf", PROXY + "service cluster {\n  unix_listener login/cluster {\n    mode = 0600\n  }\n}\n")
    [error] = _errors(path)
    assert error.startswith(f"{path}:9: service cluster {{ unix_listener login/cluster }}: not supported: "
                            "palomar has no Dovecot auth or login processes")
    path = write("o.conf", PROXY + "service imap-login {\n  unix_listener login/imap {\n  }\n}\n")
    assert "not supported: palomar has no Dovecot auth or login processes" in _errors(path)[0]
    seed = PROXY + "service cluster {\n  unix_listener login/cluster {\n    mode = 0666\n  }\n}\n"
    assert load(write("s.conf", seed)).role == "proxy"
    assert load(write("q.conf", PROXY + "service cluster {\n  process_min_avail = 1\n}\n")).role == "proxy"


@pytest.mark.parametrize("block, why", [
    ("service imap-login {\n  inet_listener imap {\n    port = 143\n  }\n}\n", "a backend's clients are proxies"),
    ("service lmtp {\n  inet_listener lmtp {\n    port = 24\n  }\n}\n", "a backend's clients are proxies"),
])
def test_listeners_a_backend_would_never_open_are_refused(write, block: str, why: str) -> None:
    path = write("b.conf", BACKEND + block)
    [error] = _errors(path)
    assert error.startswith(f"{path}:8: service ") and "not used on a backend: " + why in error
    off = block.replace("port = 143", "port = 0").replace("port = 24", "port = 0").replace("port = 9900", "port = 0")
    assert load(write("off.conf", BACKEND + off)).role == "backend"


@pytest.mark.parametrize("setting", [
    "haproxy_timeout = 5 secs", "login_trusted_networks = 10.0.0.0/8",
    "ssl = required", "ssl_server_cert_file = /etc/c.pem", "ssl_server_key_file = /etc/k.pem",
])
def test_client_side_settings_are_refused_on_a_backend(write, setting: str) -> None:
    """A backend has no client listeners, so these would be read by nothing there."""
    path = write("b.conf", BACKEND + setting + "\n")
    name = setting.split(" ")[0]
    assert _errors(path) == [f"{path}:7: {name}: applies only to a proxy, but this is a backend "
                             "(@cluster_defaults = backend)"]


def test_move_timeout_is_refused_on_a_proxy(write) -> None:
    path = write("p.conf", PROXY + "cluster_user_move_timeout = 1 min\n")
    assert _errors(path) == [f"{path}:8: cluster_user_move_timeout: applies only to a backend, but this is a "
                             "proxy (@cluster_defaults = proxy)"]


def test_the_direct_path_needs_its_ports(write) -> None:
    path = write("p.conf", "cluster_backend_path = direct\ncluster_hop_ssl = no\n")
    assert _errors(path) == [
        f"{path}:1: cluster_backend_path = direct needs cluster_backend_direct_imap_port",
        f"{path}:1: cluster_backend_path = direct needs cluster_backend_direct_pop3_port",
    ]
    good = write("good.conf", "cluster_backend_path = direct\ncluster_backend_direct_imap_port = 10993\n"
                              "cluster_backend_direct_pop3_port = 10995\ncluster_hop_ssl = no\n")
    assert load(good)["cluster_backend_path"] == "direct"


def test_a_direct_path_proxy_needs_the_master_password(write) -> None:
    path = write("p.conf", "@cluster_defaults = proxy\nssl = no\ncluster_local_site = A\ncluster_hop_secret = s\n"
                           "cluster_proxy_check_backends = no\ncluster_hop_ssl = no\n"
                           "cluster_backend_path = direct\ncluster_backend_direct_imap_port = 10993\n"
                           "cluster_backend_direct_pop3_port = 10995\n")
    assert _errors(path) == [f"{path}:7: cluster_backend_path = direct needs cluster_backend_dovecot_master_password"]


@pytest.mark.parametrize("name", ["cluster_backend_direct_imap_port", "cluster_backend_direct_submission_port",
                                  "cluster_backend_direct_sieve_port"])
def test_direct_path_settings_are_refused_on_the_hop_path(write, name: str) -> None:
    path = write("p.conf", f"{name} = 10993\n")
    assert _errors(path) == [f"{path}:1: {name}: only used with cluster_backend_path = direct"]


def test_a_direct_path_backend_needs_its_login_check_socket(write) -> None:
    base = ("@cluster_defaults = backend\ncluster_backend_name = b1\ncluster_local_site = A\n"
            "cluster_hop_secret = s\ncluster_backend_dovecot_master_password = m\ncluster_hop_ssl = no\n"
            "cluster_backend_path = direct\n")
    path = write("b.conf", base)
    assert _errors(path) == [f"{path}:7: cluster_backend_path = direct needs cluster_backend_login_check_socket"]
    good = write("good.conf", base + "cluster_backend_login_check_socket = /run/palomar/login-check\n")
    assert str(load(good)["cluster_backend_login_check_socket"]) == "/run/palomar/login-check"


@pytest.mark.parametrize("setting", [
    "haproxy_trusted_networks = 10.0.0.0/8", "cluster_backend_direct_imap_port = 10993",
    "cluster_backend_direct_pop3_port = 10995", "cluster_backend_direct_listen = 192.0.2.7",
])
def test_a_hop_path_backend_refuses_the_direct_listener_settings(write, setting: str) -> None:
    """Only `palomar backend dovecot-config` with cluster_backend_path = direct reads them on a backend."""
    path = write("b.conf", BACKEND + setting + "\n")
    name = setting.split(" ")[0]
    assert _errors(path) == [f"{path}:7: {name}: only used with cluster_backend_path = direct"]
    direct = write("d.conf", BACKEND + "cluster_backend_path = direct\n"
                                       "cluster_backend_login_check_socket = /run/palomar/login-check\n" + setting + "\n")
    assert load(direct)["cluster_backend_path"] == "direct"
