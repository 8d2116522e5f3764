"""The Dovecot backend config generator: what it renders, what it refuses, what it writes."""

from __future__ import annotations

import base64
import dataclasses
import grp
import os
import stat
from pathlib import Path

import pytest

from palomar.backend.dovecot_config import (
    DovecotConfigError,
    DovecotParams,
    direct_listeners_note,
    hash_password,
    master_passwd_line,
    render,
    write_instance,
)
from palomar.cli.backend_cmd import parse_host_port

# Made by `doveadm pw -s SSHA512 -p 'correct horse'` (Dovecot 2.3.19).
DOVEADM_SSHA512 = ("{SSHA512}xduPvSBnUgb/DomB4dCswrnSy9QwsfPqDTUcroqE1wJuVM6LOWnSAgi4ACbWapJ0BIGM7wwQ8N6KMIUj"
                   "q0PnkjtHM44=")


def _params(tmp: Path = Path("/srv/be1"), **changes: object) -> DovecotParams:
    base = DovecotParams(
        instance_name="backend1", hostname="backend1.example.test", conf_dir=tmp / "etc",
        base_dir=tmp / "run", state_dir=tmp / "state", log_path=tmp / "dovecot.log", listen="127.0.0.2",
        imap_port=10143, pop3_port=10110, lmtp_port=10024, submission_port=10587, sieve_port=14190,
        doveadm_http_port=18080, metrics_port=19900, mail_root=Path("/srv/mail"),
        master_password="Master-Secret-9", doveadm_password='pw "with" \\ quotes', doveadm_api_key="api-key-1",
        trusted_networks=("127.0.0.1/32", "127.0.0.2/32"), relay_host="127.0.0.1", relay_port=2525,
    )
    return dataclasses.replace(base, **changes)


def _block(text: str, header: str) -> str:
    start = text.index(header)
    return text[start:text.index("\n}", start) + 2]


def test_render_sets_listeners_and_trust() -> None:
    text = render(_params())
    assert "listen = 127.0.0.2\n" in text
    assert "protocols = imap pop3 lmtp sieve submission\n" in text
    assert "login_trusted_networks = 127.0.0.1/32 127.0.0.2/32\n" in text
    assert "imap_id_log = *\n" in text
    assert "log_path = /srv/be1/dovecot.log\n" in text
    for service, port in (("imap-login", 10143), ("pop3-login", 10110), ("lmtp", 10024),
                          ("submission-login", 10587), ("managesieve-login", 14190), ("doveadm", 18080),
                          ("stats", 19900)):
        assert f"port = {port}\n" in _block(text, f"service {service} {{"), service
    imap_login = _block(text, "service imap-login {")
    assert "service_count = 0" in imap_login and "port = 0" in imap_login  # high-performance, no imaps
    for service in ("anvil", "auth", "stats"):
        assert "client_limit = 10500" in _block(text, f"service {service} {{")
    assert "submission_relay_host = 127.0.0.1\nsubmission_relay_port = 2525\n" in text
    assert "mail_plugins = $mail_plugins sieve" in _block(text, "protocol lmtp {")


def test_render_the_doveadm_tcp_listener_for_forwarded_commands() -> None:
    """Off unless the backend's doveadm_port sets it; then on the loopback `listen`, with doveadm_password."""
    assert "inet_listener tcp {\n    port = 0\n" in _block(render(_params()), "service doveadm {")
    text = render(_params(doveadm_tcp_port=2300))
    assert "inet_listener tcp {\n    port = 2300\n" in _block(text, "service doveadm {")
    assert "listen = 127.0.0.2\n" in text and 'doveadm_password = "pw' in text
    with pytest.raises(DovecotConfigError, match="share a port"):
        _params(doveadm_tcp_port=18080)


def test_render_passdbs_admit_only_the_master_user() -> None:
    text = render(_params())
    passdbs = [_block(text[i:], "passdb {") for i in range(len(text)) if text.startswith("passdb {", i)]
    assert len(passdbs) == 3
    master, deny, target = passdbs
    assert "args = /srv/be1/etc/master-users.passwd" in master
    assert "master = yes" in master and "result_success = continue" in master
    assert "deny = yes" in deny and "skip = authenticated" in deny
    assert "driver = static" in target and "nopassword=y" in target and "skip = unauthenticated" in target
    userdb = _block(text, "userdb {")
    assert "uid=vmail gid=vmail home=/srv/mail/%Ld/%Ln" in userdb
    assert "mail_location = sdbox:~/mail\n" in text


def test_render_keeps_the_master_secret_out_and_quotes_doveadm_secrets() -> None:
    text = render(_params())
    assert "Master-Secret-9" not in text
    assert 'doveadm_password = "pw \\"with\\" \\\\ quotes"\n' in text
    assert 'doveadm_api_key = "api-key-1"\n' in text
    assert "doveadm_api_key" not in render(_params(doveadm_api_key=""))


def test_repr_hides_secrets() -> None:
    text = repr(_params())
    for secret in ("Master-Secret-9", "quotes", "api-key-1"):
        assert secret not in text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"listen": "192.0.2.1"}, "not a loopback"),
        ({"listen": "backend1"}, "not an IP address"),
        ({"pop3_port": 10143}, "share a port"),
        ({"imap_port": 0}, "imap port"),
        ({"metrics_port": 70000}, "metrics port"),
        ({"base_dir": Path("run")}, "absolute"),
        ({"mail_root": Path("/srv/mail%d")}, "character"),
        ({"mail_root": Path("/srv/my mail")}, "character"),
        ({"master_user": "bad:user"}, "master user"),
        ({"master_password": ""}, "master password is empty"),
        ({"doveadm_password": "a\nb"}, "control character"),
        ({"trusted_networks": ("127.0.0.300",)}, "trusted network"),
        ({"trusted_networks": ()}, "trusted_networks"),
        ({"instance_name": "x y"}, "instance_name"),
        ({"relay_port": 0}, "relay port"),
    ],
)
def test_bad_params_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(DovecotConfigError, match=message):
        _params(**changes)


def test_ipv6_loopback_listen() -> None:
    assert "listen = ::1\n" in render(_params(listen="::1"))


def test_hash_password_matches_dovecot() -> None:
    raw = base64.b64decode(DOVEADM_SSHA512.removeprefix("{SSHA512}"))
    salt = raw[64:]
    assert hash_password("correct horse", salt) == DOVEADM_SSHA512
    assert hash_password("correct horsE", salt) != DOVEADM_SSHA512
    assert hash_password("x") != hash_password("x")  # fresh salt each time


def test_master_passwd_line() -> None:
    line = master_passwd_line("palomar-master", "s3cret")
    user, hashed = line.rstrip("\n").split(":")
    assert user == "palomar-master" and hashed.startswith("{SSHA512}") and "s3cret" not in line
    with pytest.raises(DovecotConfigError):
        master_passwd_line("a b", "s3cret")


def test_write_instance_files_are_private(tmp_path: Path) -> None:
    params = _params(tmp_path)
    files = write_instance(params)
    assert files.config.read_text() == render(params)
    assert stat.S_IMODE(files.config.stat().st_mode) == 0o600
    passdb_mode = stat.S_IMODE(files.master_passdb.stat().st_mode)
    try:
        dovecot_gid: int | None = grp.getgrnam("dovecot").gr_gid
    except KeyError:
        dovecot_gid = None
    if os.geteuid() == 0 and dovecot_gid is not None:
        assert passdb_mode == 0o640
        assert files.master_passdb.stat().st_gid == dovecot_gid
    else:
        assert passdb_mode == 0o600
    assert files.master_passdb.read_text().startswith("palomar-master:{SSHA512}")
    assert sorted(p.name for p in tmp_path.joinpath("etc").iterdir()) == ["dovecot.conf", "master-users.passwd"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:25", ("127.0.0.1", 25)), ("relay.example.test:2525", ("relay.example.test", 2525)),
     ("[::1]:25", ("::1", 25))],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["relay", "relay:", ":25", "relay:99999", "::1:25", "[nothex]:25"])
def test_parse_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


def test_extra_settings_are_written_quoted_at_the_end() -> None:
    text = render(_params(extra_settings=(("imap_capability", "+XFOO"),
                                          ("managesieve_sieve_capability", "fileinto comparator-i;ascii-numeric"))))
    assert text.endswith('imap_capability = "+XFOO"\n'
                         'managesieve_sieve_capability = "fileinto comparator-i;ascii-numeric"\n')


@pytest.mark.parametrize(("extra", "problem"), [
    ((("imap capability", "x"),), "not a Dovecot setting name"),
    ((("!include", "/etc/passwd"),), "not a Dovecot setting name"),
    ((("imap_capability", "x\nssl = no"),), "control character"),
])
def test_extra_settings_cannot_inject(extra, problem: str) -> None:
    with pytest.raises(DovecotConfigError, match=problem):
        _params(extra_settings=extra)


DIRECT = {"login_check_socket": Path("/srv/be1/run/palomar-login-check"), "haproxy_imap_port": 10993,
          "haproxy_pop3_port": 10995, "haproxy_trusted_networks": ("192.0.2.10/32", "192.0.2.11/32")}


def test_render_direct_path_asks_palomar_for_the_target_user() -> None:
    text = render(_params(**DIRECT))
    passdbs = [_block(text[i:], "passdb {") for i in range(len(text)) if text.startswith("passdb {", i)]
    master, deny, target = passdbs
    assert "master = yes" in master and "skip = authenticated" in deny
    assert "driver = dict" in target and "args = /srv/be1/etc/palomar-login-check.conf.ext" in target
    assert "skip = unauthenticated" in target and "nopassword" not in target
    assert "haproxy_trusted_networks = 192.0.2.10/32 192.0.2.11/32\n" in text
    login_userdb, static_userdb = _block(text, "userdb {"), _block(text[text.index("userdb {") + 8:], "userdb {")
    assert "driver = dict" in login_userdb and "result_success = continue-ok" in login_userdb
    assert "result_failure = return-fail" in login_userdb and "driver = static" in static_userdb
    imap = _block(text, "service imap-login {")
    assert "inet_listener imap_haproxy {\n    port = 10993\n    haproxy = yes\n    ssl = no\n  }" in imap
    pop3 = _block(text, "service pop3-login {")
    assert "inet_listener pop3_haproxy {\n    port = 10995\n    haproxy = yes\n    ssl = no\n  }" in pop3
    assert "\nssl = no\n" in text
    hop = render(_params())
    assert "haproxy" not in hop and "driver = dict" not in hop


def test_render_direct_path_with_tls_on_the_haproxy_listeners() -> None:
    text = render(_params(**DIRECT, haproxy_tls=(Path("/srv/tls/hop.crt"), Path("/srv/tls/hop.key"))))
    assert "\nssl = yes\nssl_cert = </srv/tls/hop.crt\nssl_key = </srv/tls/hop.key\n" in text
    assert "ssl_min_protocol = TLSv1.2\n" in text
    imap = _block(text, "service imap-login {")
    assert "inet_listener imap_haproxy {\n    port = 10993\n    haproxy = yes\n    ssl = yes\n  }" in imap
    assert "inet_listener imap {\n    port = 10143\n  }" in imap  # the backend service's own: no TLS


def test_the_login_check_dict_file(tmp_path: Path) -> None:
    p = _params(tmp_path, **{**DIRECT, "login_check_socket": tmp_path / "run" / "palomar-login-check"})
    write_instance(p)
    text = p.login_check_dict_path.read_text()
    assert f"uri = proxy:idle_msecs=60000:{tmp_path}/run/palomar-login-check:palomar\n" in text
    assert "password_key = passdb/%{session}\nuser_key = userdb/%{session}\n" in text
    assert stat.S_IMODE(p.login_check_dict_path.stat().st_mode) in (0o600, 0o640)


def test_render_direct_submission_and_managesieve_listeners() -> None:
    text = render(_params(**DIRECT, haproxy_submission_port=10465, haproxy_sieve_port=14191))
    submission = _block(text, "service submission-login {")
    assert "inet_listener submission_haproxy {\n    port = 10465\n    haproxy = yes\n    ssl = no\n  }" in submission
    assert "inet_listener submission {\n    port = 10587\n  }" in submission
    sieve = _block(text, "service managesieve-login {")
    assert "inet_listener sieve_haproxy {\n    port = 14191\n    haproxy = yes\n    ssl = no\n  }" in sieve
    assert "_haproxy" not in _block(render(_params(**DIRECT)), "service submission-login {")
    assert _params(**DIRECT, haproxy_sieve_port=14191).listeners()["sieve_haproxy"] == 14191


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, None),
    ({**DIRECT, "haproxy_listen": "192.0.2.20"},
     "direct-path listeners (imap 10993, pop3 10995; plaintext, PROXY header) bind to 192.0.2.20"),
    ({**DIRECT, "haproxy_sieve_port": 14191, "haproxy_tls": (Path("/c.crt"), Path("/c.key"))},
     "direct-path listeners (imap 10993, pop3 10995, sieve 14191; TLS, PROXY header) bind to 127.0.0.2: "
     "cluster_backend_direct_listen is empty, which means cluster_backend_dovecot_host, a loopback address; only "
     "proxies on this host reach them (set cluster_backend_direct_listen to an address the proxies reach)"),
])
def test_direct_listeners_note_says_what_they_bind(changes: dict[str, object], expected: str | None) -> None:
    assert direct_listeners_note(_params(**changes)) == expected


def test_direct_listeners_bind_the_address_the_proxies_reach() -> None:
    text = render(_params(**DIRECT, haproxy_listen="192.0.2.20"))
    assert "\nlisten = 127.0.0.2\n" in text  # everything else stays on loopback
    imap, pop3 = _block(text, "service imap-login {"), _block(text, "service pop3-login {")
    assert "inet_listener imap_haproxy {\n    address = 192.0.2.20\n    port = 10993\n    haproxy = yes\n" in imap
    assert "inet_listener pop3_haproxy {\n    address = 192.0.2.20\n    port = 10995\n    haproxy = yes\n" in pop3
    assert "inet_listener imap {\n    port = 10143\n  }" in imap
    assert text.count("address = ") == 2
    assert "address = " not in render(_params(**DIRECT))  # without it: `listen`, as before


@pytest.mark.parametrize(("changes", "message"), [
    ({**DIRECT, "haproxy_trusted_networks": ("0.0.0.0/0",)}, "trusts every address"),
    ({**DIRECT, "haproxy_trusted_networks": ("192.0.2.10/32", "::/0")}, "trusts every address"),
    ({**DIRECT, "haproxy_listen": "proxy-net"}, "haproxy listen address"),
    ({"haproxy_listen": "192.0.2.20"}, "without haproxy listeners"),
    ({"haproxy_imap_port": 10993}, "login check socket"),
    ({"haproxy_sieve_port": 14191}, "login check socket"),
    ({**DIRECT, "haproxy_submission_port": 10587}, "share a port"),
    ({**DIRECT, "haproxy_trusted_networks": ()}, "haproxy_trusted_networks"),
    ({**DIRECT, "login_check_socket": Path("run/sock")}, "absolute"),
    ({**DIRECT, "login_check_socket": Path("/srv/a:b")}, "absolute"),
    ({**DIRECT, "haproxy_imap_port": 10143}, "share a port"),
    ({**DIRECT, "haproxy_trusted_networks": ("192.0.2.300",)}, "trusted network"),
    ({**DIRECT, "haproxy_tls": (Path("/srv/a b.crt"), Path("/srv/k.key"))}, "haproxy TLS certificate"),
])
def test_bad_direct_params_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(DovecotConfigError, match=message):
        _params(**changes)
