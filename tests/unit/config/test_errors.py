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
        cluster_localdb = proxy:dict-async:cluster-localdb
        doveadm_ssl = yes
        cluster_geodb = proxy:dict-async:cluster-geodb
        """)
    assert _errors(path) == [
        f"{path}:1: cluster_localdb: as a value: palomar uses cluster_localdb_path; the seed's block "
        "`cluster_localdb { dict proxy { ... } }` is accepted as written",
        f"{path}:2: doveadm_ssl: expected one of no, ssl, starttls, got 'yes'",  # the seed's comment; 2.3 reads it as no
        f"{path}:3: cluster_geodb: as a value: palomar's GeoDB is set by cassandra_hosts (or cluster_geodb_path); "
        "the seed's block `cluster_geodb { dict proxy { ... } }` is accepted as written",
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


def test_dict_server_accepts_the_seeds_dicts_and_their_two_values(write) -> None:
    ok = write("ok.conf", """
        dict_server {
          dict cluster-geodb {
            driver = sql
            sql_driver = cassandra
            cassandra_keyspace = ks
          }
          dict cluster-localdb {
            sqlite_path = /dev/shm/x/localdb.sqlite
          }
        }
        cassandra_hosts = c1
        """)
    cfg = load(ok)
    assert (cfg["cassandra_keyspace"], str(cfg["cluster_localdb_path"])) == ("ks", "/dev/shm/x/localdb.sqlite")
    path = write("proxy.conf", """
        dict_server {
          dict cluster-geodb {
            sql_driver = sqlite
            sqlite_path = /x
            dict_map "shared/cluster/site/$site_id/name" {
              sql_table = other
            }
          }
          dict other {
          }
          driver = sql
        }
        cassandra_hosts = c1
        """)
    assert _errors(path) == [
        f"{path}:3: dict_server: sql_driver = sqlite: differs from the Palomar document's; " + SEED_BLOCKS,
        f"{path}:4: sqlite_path: not a setting of dict cluster-geodb",
        f"{path}:5: dict_server: dict_map shared/cluster/site/$site_id/name: differs from the Palomar "
        "document's; " + SEED_BLOCKS,
        f"{path}:9: dict_server: dict other: not in the Palomar document's dict_server; " + SEED_BLOCKS,
        f"{path}:11: dict_server: driver = sql: not in the Palomar document's dict_server; " + SEED_BLOCKS,
    ]


SEED_BLOCKS = 'palomar implements exactly the document\'s blocks (docs/configuration.md, "The Palomar document\'s blocks")'


def test_metric_blocks_must_be_the_seeds(write) -> None:
    path = write("proxy.conf", """
        metric proxy_session_success {
          filter = event=proxy_session_established
          metric_group_by dest_host {
          }
        }
        metric proxy_session_failure {
          filter = event=proxy_session_finished
        }
        metric imap_command {
          filter = event=imap_command_finished
        }
        """)
    assert _errors(path) == [
        f"{path}:7: metric proxy_session_failure: filter = event=proxy_session_finished: differs from the "
        "Palomar document's; " + SEED_BLOCKS,
        f"{path}:9: metric imap_command: palomar cannot evaluate Dovecot event filters; it exports the Palomar "
        "document's metrics (lmtp_rcpt_finished_failure, lmtp_rcpt_finished_success, proxy_session_failure, "
        "proxy_session_success) and its own",
    ]


def test_dovecot_23_names_get_a_hint(write) -> None:
    path = write("proxy.conf", "disable_plaintext_auth = no\nssl_cert = /etc/ssl/c.pem\nlmtp_proxy = no\n")
    assert _errors(path) == [
        f"{path}:1: disable_plaintext_auth: the Dovecot 2.3 name; like Dovecot 2.4, palomar does not read 2.3 "
        "settings: write auth_allow_cleartext with the opposite value (disable_plaintext_auth = no is "
        "auth_allow_cleartext = yes)",
        f"{path}:2: ssl_cert: the Dovecot 2.3 name: write ssl_server_cert_file = /path (a file name, no `<`)",
        f"{path}:3: lmtp_proxy: expected one of yes, got 'no'",
    ]
