"""`palomar config check|show` through click: exit codes, messages on stderr, masked secrets."""

from __future__ import annotations

from click.testing import CliRunner

from palomar.cli.main import main
from palomar.config import load

from .conftest import EXAMPLES


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_check_ok() -> None:
    path = str(EXAMPLES / "proxy.conf")
    result = _run("config", "check", path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{path}: ok (role proxy, 10 settings)\n"
    backend = str(EXAMPLES / "backend.conf")
    result = _run("config", "check", backend)
    assert (result.exit_code, result.stdout) == (0, f"{backend}: ok (role backend, 9 settings)\n")


def test_check_reports_every_error_without_traceback(write) -> None:
    path = write("proxy.conf", "cluster_proxy_check_backends = maybe\nbogus = 1\n")
    result = _run("config", "check", str(path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:1: cluster_proxy_check_backends: expected yes or no, got 'maybe'",
        f"{path}:2: bogus: unknown setting",
    ]
    assert "Traceback" not in result.stderr


def test_check_syntax_error_and_missing_file(write, tmp_path) -> None:
    path = write("proxy.conf", "service imap-login {\n")
    result = _run("config", "check", str(path))
    assert result.exit_code == 1
    assert result.stderr == f"{path}:1: syntax error: section 'service imap-login' is not closed with '}}'\n"
    missing = tmp_path / "missing.conf"
    result = _run("config", "check", str(missing))
    assert (result.exit_code, result.stderr) == (1, f"{missing}: No such file or directory\n")


def test_show_masks_secrets_and_only_lists_what_is_set() -> None:
    result = _run("config", "show", str(EXAMPLES / "proxy.conf"))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "placeholder" not in result.stdout
    assert "doveadm_password = # hidden" in lines
    assert "cluster_backend_test_password = # hidden" in lines
    assert not any(line.startswith("cluster_hop_secret") for line in lines)  # derived, not set
    assert "    password = # hidden" in lines
    assert "    proxy = y" in lines
    assert "cluster_local_site = DC1" in lines
    assert "@cluster_defaults = proxy" in lines
    assert not any(line.startswith("haproxy_timeout") for line in lines)
    assert "  inet_listener imap-haproxy {" in lines
    assert "  inet_listener imaps {" not in lines


def test_show_all_includes_defaults_and_default_listeners() -> None:
    result = _run("config", "show", "--all", str(EXAMPLES / "backend.conf"))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "placeholder" not in result.stdout
    assert "cluster_user_move_timeout = 31 secs" in lines
    assert "cluster_backend_dovecot_imap_port = 10143" in lines
    assert "cluster_backend_dovecot_master_password = # hidden" in lines
    assert "login_greeting = palomar ready." not in lines  # a proxy setting, not shown for a backend
    assert "  inet_listener imaps {" not in lines  # a backend listens on the hop port only


def test_show_output_loads_back_to_the_same_settings(write) -> None:
    """What `config show` prints is itself a valid config with the same meaning (secrets aside)."""
    source = write("a.conf", """
        login_greeting = "hello # world"
        cluster_user_move_timeout = 90s
        listen = 127.0.0.1
        service lmtp {
          inet_listener lmtp {
            port = 2424
          }
        }
        passdb users {
          driver = passwd-file
          args = /etc/users
          default_fields {
            proxy = y
          }
        }
        """)
    result = _run("config", "show", str(source))
    assert result.exit_code == 0, result.stderr
    copy = write("copy.conf", result.stdout)
    original, reloaded = load(source), load(copy)
    assert reloaded.effective() == original.effective()
    assert reloaded["login_greeting"] == "hello # world"
    assert reloaded["cluster_user_move_timeout"] == 90.0
    assert reloaded.services["lmtp"].listeners == original.services["lmtp"].listeners
    assert repr(reloaded.passdbs) == repr(original.passdbs)
