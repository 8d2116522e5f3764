"""Loading whole configurations: the seed's examples, typed values, defaults, sections, groups."""

from __future__ import annotations

import ipaddress

import pytest

from palomar.config import ConfigError, ListenerSettings, PassdbSettings, load
from palomar.config.derived import derive_secret
from palomar.config.seed_blocks import SEED_DIR

from .conftest import EXAMPLES

# A minimal valid proxy, for tests that only change one thing.
PROXY = """
    @cluster_defaults = proxy
    cluster_local_site = DC1
    cluster_hop_secret = hop
    cluster_backend_test_username = probe-%{backend_host}
    cluster_backend_test_password = probe
    cluster_hop_ssl_ca_file = /etc/palomar/hop-ca.crt
    ssl = no
"""


def test_seed_proxy_example_loads() -> None:
    """The seed's proxy blocks, verbatim but for their placeholders, mean what the seed says."""
    cfg = load(EXAMPLES / "proxy.conf")
    assert cfg.role == "proxy"
    assert cfg.metric_role == "proxy"
    assert cfg["cluster_local_site"] == "DC1"
    assert cfg["cassandra_hosts"] == ["cassandra-host-3", "cassandra-host-2", "cassandra-host-1"]
    assert cfg["cluster_geodb_driver"] == "cassandra"  # cassandra_hosts alone selects it
    assert not cfg.is_set("cluster_geodb_driver")
    assert cfg["cassandra_keyspace"] == "cluster"
    # the seed puts the keyspace in dict_server { dict cluster-geodb { } }
    keyspace_line = (EXAMPLES / "proxy.conf").read_text().splitlines().index("cassandra_keyspace = cluster") + 1
    assert cfg.location("cassandra_keyspace").line == keyspace_line
    assert cfg["login_trusted_networks"] == [ipaddress.ip_network(n) for n in ("127.0.0.1/32", "::1/128",
                                                                               "192.168.1.0/24")]
    assert cfg["doveadm_port"] == 2300
    assert cfg["doveadm_password"] == "doveadm-placeholder"
    # palomar's hop secret is derived from the seed's one shared secret
    assert cfg["cluster_hop_secret"] == derive_secret("doveadm-placeholder", "cluster_hop_secret")
    assert "doveadm-placeholder" not in cfg["cluster_hop_secret"] and len(cfg["cluster_hop_secret"]) == 64
    assert cfg["cluster_backend_test_username"] == "probe-%{backend_host}"
    assert cfg["cluster_backend_test_password"] == "probe-placeholder"
    assert cfg["cluster_proxy_check_backends"] is True  # default
    assert cfg["cluster_user_move_timeout"] == 31.0  # default
    assert (cfg["lmtp_proxy"], cfg["auth_socket_path"], cfg["login_socket_path"]) == ("yes", "cluster-userdb",
                                                                                      "cluster")
    assert str(cfg["ssl_server_cert_file"]) == "/etc/dovecot/private/dovecot.pem"  # as Debian's Dovecot
    [passdb] = cfg.passdbs
    assert isinstance(passdb, PassdbSettings)
    assert (passdb.name, passdb.driver, passdb.args) == ("test-accounts", "passwd-file",
                                                         "/etc/dovecot/cluster-test-accounts.passwd")
    assert passdb.fields == {"proxy": "y", "password": "probe-placeholder"}
    assert passdb.master is False and passdb.result_success == "return-ok" and passdb.skip == "never"
    imap = cfg.services["imap-login"].listeners
    assert imap == {
        "imap": ListenerSettings("imap", 143, ["*", "::"], False, False),
        "imaps": ListenerSettings("imaps", 993, ["*", "::"], False, True),
        "imap-haproxy": ListenerSettings("imap-haproxy", 1143, ["*", "::"], True, False),
    }
    # the seed's doveadm block: doveadm clients connect here (proxy/doveadm_frontend.py)
    assert cfg.services["doveadm"].listeners == {"tcp": ListenerSettings("tcp", 2300, ["*", "::"], False, False)}
    assert cfg.doveadm_tcp_port == 2300
    assert cfg.source_files == [str(EXAMPLES / "proxy.conf")]


def test_seed_backend_example_loads() -> None:
    cfg = load(EXAMPLES / "backend.conf")
    assert cfg.role == "backend"
    assert cfg["cluster_backend_name"] == "hac-dc1-be3"
    assert cfg["cluster_local_site"] == "DC1"
    assert cfg["cluster_geodb_driver"] == "cassandra"
    proxy = load(EXAMPLES / "proxy.conf")
    assert cfg["cluster_hop_secret"] == proxy["cluster_hop_secret"]  # one doveadm_password, one hop key
    master = cfg["cluster_backend_dovecot_master_password"]
    assert master and master not in (cfg["cluster_hop_secret"], cfg["doveadm_password"])
    [passdb] = cfg.passdbs
    assert (passdb.name, passdb.driver) == ("passwd-file", "passwd-file")  # unnamed: named by its driver
    assert cfg["cluster_backend_dovecot_imap_port"] == 10143
    assert cfg["cluster_backend_dovecot_host"] == "127.0.0.1"
    assert cfg["cluster_hop_port"] == 7425
    # a backend's clients are proxies on the hop port: Dovecot's client listeners are not its own;
    # its doveadm listener is the local Dovecot's, which runs the commands proxies forward
    assert {name for name, service in cfg.services.items() if service.listeners} == {"doveadm"}
    assert cfg.doveadm_tcp_port == 2300


@pytest.mark.parametrize("role", ["proxy", "backend"])
def test_seed_examples_load_with_the_cluster_defaults_expansion_written_out(write, role: str) -> None:
    """An operator may copy what `@cluster_defaults` stands for into the file: it means the same."""
    expansion = SEED_DIR / f"cluster_defaults_{role}.conf"
    path = write(f"{role}.conf", (EXAMPLES / f"{role}.conf").read_text() + f"!include {expansion}\n")
    cfg = load(path)
    plain = load(EXAMPLES / f"{role}.conf")
    def without_localdb(c):
        return [pair for pair in c.effective(include_defaults=True) if pair[0] != "cluster_localdb_path"]

    assert without_localdb(cfg) == without_localdb(plain)
    # the one value the expansion carries: its LocalDB dict's sqlite_path is palomar's LocalDB file
    assert str(cfg["cluster_localdb_path"]) == "/dev/shm/dovecot/cluster-localdb.sqlite"
    assert cfg.location("cluster_localdb_path").file == str(expansion)


def test_defaults_of_an_empty_config(write) -> None:
    cfg = load(write("empty.conf", "# nothing\n"))
    assert cfg.role is None
    expected = {
        "cluster_proxy_check_backends": True,
        "cluster_user_move_timeout": 31.0,
        "cluster_default_group_count": 100,
        "haproxy_timeout": 3.0,
        "haproxy_trusted_networks": [],
        "listen": ["*", "::"],
        "ssl": "yes",
        "auth_allow_cleartext": False,
        "auth_failure_delay": 2.0,
        "auth_username_format": "%Lu",
        "login_greeting": "palomar ready.",
        "log_path": "",
        "base_dir": "/run/palomar",
        "cluster_geodb_driver": "sqlite",
        "cluster_geodb_path": "/var/lib/palomar/geodb.sqlite",
        "cassandra_keyspace": "cluster",
        "cluster_localdb_path": "/dev/shm/palomar/localdb.sqlite",
        "cluster_hop_port": 7425,
        "cluster_backend_dovecot_master_user": "palomar-master",
        "cluster_backend_dovecot_pop3_port": 10110,
        "cluster_backend_dovecot_lmtp_port": 10024,
        "cluster_backend_dovecot_submission_port": 10587,
        "cluster_backend_dovecot_sieve_port": 14190,
        "cluster_backend_dovecot_doveadm_http_port": 18080,
        "doveadm_port": 0,
    }
    assert {name: cfg[name] for name in expected} == expected
    assert not cfg.is_set("listen")
    assert cfg.effective() == []
    with pytest.raises(KeyError):
        cfg["no_such_setting"]


def test_default_listeners_and_overrides(write) -> None:
    cfg = load(write("p.conf", PROXY + """
        listen = 127.0.0.1
        service pop3-login {
          inet_listener pop3s {
            port = 0
          }
        }
        service lmtp {
          inet_listener lmtp {
            address = 127.0.0.2, ::1
            port = 2424
          }
          process_min_avail = 1
          client_limit = 50
        }
        service stats {
          inet_listener http {
            port = 9900
          }
        }
        """))
    services = cfg.services
    assert set(services) == {"imap-login", "pop3-login", "submission-login", "managesieve-login", "lmtp",
                             "doveadm", "stats", "cluster"}
    assert services["pop3-login"].listeners == {"pop3": ListenerSettings("pop3", 110, ["127.0.0.1"])}
    assert services["pop3-login"].disabled_listeners == ["pop3s"]
    # `ssl = no` drops the default implicit-TLS listeners
    assert set(services["imap-login"].listeners) == {"imap"}
    assert set(services["submission-login"].listeners) == {"submission"}
    assert services["managesieve-login"].listeners["sieve"].port == 4190
    assert services["lmtp"].listeners["lmtp"] == ListenerSettings("lmtp", 2424, ["127.0.0.2", "::1"])
    assert services["lmtp"].process_min_avail == 1
    assert services["lmtp"].client_limit == 50
    assert services["imap-login"].client_limit == 10000  # palomar's default
    assert services["stats"].listeners["http"].port == 9900
    assert services["doveadm"].listeners == {}  # doveadm_port defaults to 0
    assert services["doveadm"].disabled_listeners == ["tcp"]


def test_repeated_service_blocks_merge(write) -> None:
    cfg = load(write("p.conf", PROXY + """
        service imap-login {
          inet_listener imap {
            port = 1430
          }
        }
        service imap-login {
          inet_listener imap {
            address = 127.0.0.1
          }
          client_limit = 10
        }
        """))
    service = cfg.services["imap-login"]
    assert service.listeners["imap"] == ListenerSettings("imap", 1430, ["127.0.0.1"])
    assert service.client_limit == 10


def test_load_overrides_apply_last_and_are_checked(write) -> None:
    path = write("p.conf", PROXY)
    cfg = load(path, overrides={"cluster_local_site": "DC2", "haproxy_timeout": "500 ms"})
    assert cfg["cluster_local_site"] == "DC2"
    assert cfg["haproxy_timeout"] == 0.5
    assert str(cfg.location("cluster_local_site")) == "<override>"
    with pytest.raises(ConfigError) as info:
        load(path, overrides={"haproxy_timeout": "soon"})
    assert str(info.value) == "<override>: haproxy_timeout: expected a time such as '30 secs', '2 mins' or " \
                              "'500 ms', got 'soon'"


def test_override_can_set_the_role(write) -> None:
    path = write("p.conf", PROXY.replace("@cluster_defaults = proxy", ""))
    assert load(path).role is None
    assert load(path, overrides={"@cluster_defaults": "proxy"}).role == "proxy"
    with pytest.raises(ConfigError, match=r"^<override>: @cluster_defaults: expected proxy or backend, got 'x'$"):
        load(path, overrides={"@cluster_defaults": "x"})


def test_later_assignment_wins(write) -> None:
    cfg = load(write("a.conf", "cluster_local_site = A\ncluster_local_site = B\n"))
    assert cfg["cluster_local_site"] == "B"
    assert cfg.location("cluster_local_site").line == 2


def test_passdb_sections(write) -> None:
    cfg = load(write("p.conf", PROXY + """
        passdb master {
          driver = passwd-file
          args = /etc/palomar/master.passwd
          master = yes
          result_success = continue
          result_failure = return-fail
          skip = authenticated
        }
        passdb users {
          driver = passwd-file
          args = scheme=ARGON2ID /etc/palomar/users.passwd
          default_fields = proxy=y nopassword
          override_fields {
            host = 127.0.0.1
          }
        }
        """))
    master, users = cfg.passdbs
    assert (master.name, master.master, master.result_success, master.result_failure, master.skip) == (
        "master", True, "continue", "return-fail", "authenticated")
    assert users.default_fields == {"proxy": "y", "nopassword": "yes"}
    assert users.override_fields == {"host": "127.0.0.1"}
    assert users.args == "scheme=ARGON2ID /etc/palomar/users.passwd"


def test_passdb_repr_hides_passwords() -> None:
    cfg = load(EXAMPLES / "proxy.conf")
    text = repr(cfg.passdbs[0]) + repr(cfg)
    assert "probe-placeholder" not in text
    assert "'password': '# hidden'" in text
    assert "'proxy': 'y'" in text


def test_include_and_group_handling_end_to_end(write) -> None:
    write("conf.d/10-site.conf", "cluster_local_site = DC9\n")
    write("secret", "from-a-file\n")
    path = write("main.conf", """
        @cluster_defaults = proxy
        @metric_defaults = proxy
        !include conf.d/*.conf
        cluster_hop_secret = <secret
        cluster_proxy_check_backends = no
        cluster_hop_ssl = no
        ssl = no
        """)
    cfg = load(path)
    assert cfg.role == "proxy" and cfg.metric_role == "proxy"
    assert cfg["cluster_local_site"] == "DC9"
    assert cfg.location("cluster_local_site").file.endswith("10-site.conf")
    assert cfg["cluster_hop_secret"] == "from-a-file"
    assert len(cfg.source_files) == 2
    assert cfg.effective()[:2] == [("@cluster_defaults", "proxy"), ("@metric_defaults", "proxy")]
    assert ("cluster_hop_secret", "# hidden") in cfg.effective()


def test_effective_masks_secrets_and_lists_defaults_of_the_role() -> None:
    cfg = load(EXAMPLES / "proxy.conf")
    names = dict(cfg.effective())
    assert names["doveadm_password"] == "# hidden"
    assert names["cluster_backend_test_password"] == "# hidden"
    assert "haproxy_timeout" not in names
    everything = dict(cfg.effective(include_defaults=True))
    assert everything["haproxy_timeout"] == "3 secs"
    assert "cluster_user_move_timeout" not in everything  # moves run on backends
    assert "cluster_backend_name" not in everything  # a backend-only setting, on a proxy
    assert "cluster_geodb" not in everything  # unsupported as a value
    assert all("placeholder" not in value for value in everything.values())
