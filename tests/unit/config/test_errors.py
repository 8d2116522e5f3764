"""One test per error class: each message names `file:line` and the setting; nothing is ignored."""

from __future__ import annotations

import pytest

from palomar.config import ConfigError, load

from .test_loader import PROXY


def _errors(path, overrides=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path, overrides)
    return info.value.lines


def test_syntax_error(write) -> None:
    path = write("proxy.conf", "cluster_local_site = DC1\nservice imap-login {\n  port 143\n}\n")
    assert _errors(path) == [f"{path}:3: syntax error: expected '=' or '{{' after 'port'"]


def test_unknown_setting(write) -> None:
    path = write("proxy.conf", "cluster_local_site = DC1\ncluster_loacl_site = DC2\nfrobnicate = 1\n")
    assert _errors(path) == [
        f"{path}:2: cluster_loacl_site: unknown setting (did you mean cluster_local_site?)",
        f"{path}:3: frobnicate: unknown setting",
    ]


def test_unknown_section(write) -> None:
    path = write("proxy.conf", """
        protocol imap {
          x = 1
        }
        service imap {
        }
        passdb {
          driver = passwd-file
          filters {
          }
        }
        service lmtp {
          inet_listener lmtp {
            prot = 24
          }
        }
        """)
    assert _errors(path) == [
        f"{path}:1: protocol: unknown section",
        f"{path}:4: service imap: unknown service; known: imap-login, "
        "pop3-login, submission-login, managesieve-login, lmtp, doveadm, stats, cluster",
        f"{path}:8: filters: unknown section in passdb",
        f"{path}:13: prot: unknown setting in service lmtp {{ inet_listener lmtp }} (did you mean port?)",
    ]


def test_wrong_type(write) -> None:
    path = write("proxy.conf", """
        cluster_local_site = DC1
        cluster_proxy_check_backends = maybe
        cluster_default_group_count = lots
        cluster_user_move_timeout = 31 parsecs
        service imap-login {
          inet_listener imap {
            port = 143000
            haproxy = sometimes
          }
        }
        """)
    assert _errors(path) == [
        f"{path}:2: cluster_proxy_check_backends: expected yes or no, got 'maybe'",
        f"{path}:3: cluster_default_group_count: expected a non-negative integer, got 'lots'",
        f"{path}:4: cluster_user_move_timeout: expected a time such as '30 secs', '2 mins' or '500 ms', "
        "got '31 parsecs'",
        f"{path}:7: port: expected at most 65535, got '143000'",
        f"{path}:8: haproxy: expected yes or no, got 'sometimes'",
    ]


def test_bad_value(write) -> None:
    path = write("proxy.conf", """
        ssl = always
        cluster_geodb_driver = mysql
        login_trusted_networks = 10.0.0.0/8 not-a-net
        @cluster_defaults = director
        @frobnicate_defaults = proxy
        passdb {
          driver = passwd-file
          result_success = stop
        }
        """)
    assert _errors(path) == [
        f"{path}:1: ssl: expected one of no, yes, required, got 'always'",
        f"{path}:2: cluster_geodb_driver: expected one of sqlite, cassandra, got 'mysql'",
        f"{path}:3: login_trusted_networks: expected IP networks such as 10.0.0.0/8 or ::1, got 'not-a-net'",
        f"{path}:4: @cluster_defaults: expected proxy or backend, got 'director'",
        f"{path}:5: @frobnicate_defaults: unknown group include; known: @cluster_defaults, @metric_defaults",
        f"{path}:8: result_success: expected one of return-ok, return, return-fail, continue, continue-ok, "
        "continue-fail, got 'stop'",
    ]


def test_missing_include(write) -> None:
    path = write("proxy.conf", "cluster_local_site = DC1\n!include conf.d/local.conf\n")
    assert _errors(path) == [f"{path}:2: !include {path.parent}/conf.d/local.conf: No such file or directory"]


def test_missing_file_value(write) -> None:
    path = write("proxy.conf", "doveadm_password = </etc/palomar/no-such-secret\n")
    assert _errors(path) == [
        f"{path}:1: doveadm_password: cannot read </etc/palomar/no-such-secret: No such file or directory"
    ]


def test_unsupported_settings_are_refused_not_ignored(write) -> None:
    path = write("proxy.conf", """
        cluster_director_transition_config = /etc/dovecot/transition.conf
        doveadm_ssl = yes
        cluster_geodb {
          dict proxy {
          }
        }
        """)
    assert _errors(path) == [
        f"{path}:1: cluster_director_transition_config: not supported yet",
        f"{path}:2: doveadm_ssl: not supported yet",
        f"{path}:3: cluster_geodb: not supported: palomar uses cluster_geodb_driver, cluster_geodb_path "
        "and cassandra_hosts",
    ]


def test_secret_values_are_never_echoed(write) -> None:
    path = write("proxy.conf", "cluster_hop_secret = hunter2\ncluster_hop_secret {\n}\n")
    [message] = _errors(path)
    assert "hunter2" not in message
    assert message == f"{path}:2: cluster_hop_secret: is a setting, not a section (write cluster_hop_secret = value)"


def test_group_include_only_at_top_level_and_consistent(write) -> None:
    path = write("proxy.conf", """
        @cluster_defaults = proxy
        @cluster_defaults = backend
        @metric_defaults = backend
        service lmtp {
          @cluster_defaults = proxy
        }
        """)
    assert _errors(path) == [
        f"{path}:1: @metric_defaults = backend does not match @cluster_defaults = proxy",
        f"{path}:2: @cluster_defaults: already set to proxy at {path}:1",
        f"{path}:5: @cluster_defaults: group includes are only allowed at the top level",
    ]


def test_setting_of_the_other_role(write) -> None:
    path = write("proxy.conf", PROXY + "cluster_backend_name = be1\ncluster_backend_dovecot_imap_port = 143\n")
    assert _errors(path) == [
        f"{path}:8: cluster_backend_name: applies only to a backend, but this is a proxy "
        "(@cluster_defaults = proxy)",
        f"{path}:9: cluster_backend_dovecot_imap_port: applies only to a backend, but this is a proxy "
        "(@cluster_defaults = proxy)",
    ]


def test_passdb_needs_a_driver_and_unique_names(write) -> None:
    path = write("proxy.conf", """
        passdb users {
          args = /etc/passwd
        }
        passdb a {
          driver = passwd-file
        }
        passdb a {
          driver = passwd-file
        }
        """)
    assert _errors(path) == [
        f"{path}:1: passdb users: driver is required (e.g. driver = passwd-file)",
        f"{path}:7: passdb a: defined twice",
    ]


def test_dict_server_accepts_only_the_seeds_keyspace(write) -> None:
    path = write("proxy.conf", """
        dict_server {
          dict cluster-geodb {
            driver = sql
            cassandra_keyspace = ks
          }
          dict cluster-localdb {
          }
        }
        cluster_geodb_driver = cassandra
        cassandra_hosts = c1
        """)
    assert _errors(path) == [
        f"{path}:3: driver: unknown setting in dict cluster-geodb",
        f"{path}:6: dict cluster-localdb: not supported in dict_server (only dict cluster-geodb "
        "{ cassandra_keyspace } is)",
    ]
