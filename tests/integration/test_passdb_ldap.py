"""The ldap passdb against a real OpenLDAP slapd started here: lookups, auth binds, TLS, an outage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from passdb_users import BY_NAME, SCHEME_USERS, ldif, login

from palomar.auth.cache import AuthCache
from palomar.auth.passdb import Passdb, PassdbChain
from palomar.devcluster.userdb_servers import SlapdServer

LDAP_HOST = "127.0.0.45"
SUFFIX = "dc=example,dc=org"


@pytest.fixture(scope="module")
def slapd(harness_root: Path) -> Iterator[SlapdServer]:
    server = SlapdServer(harness_root / "passdb-ldap", suffix=SUFFIX, host=LDAP_HOST)
    server.init(ldif(SUFFIX)).start()
    yield server
    server.destroy()


def write_conf(path: Path, slapd: SlapdServer, *lines: str) -> Path:
    path.write_text("\n".join([
        f"uris = {slapd.uri}",
        f"dn = {slapd.admin_dn}",
        f"dnpass = {slapd.admin_password}",
        f"base = ou=people,{SUFFIX}",
        "scope = subtree",
        "pass_attrs = uid=user,userPassword=password,roomNumber=host",
        "pass_filter = (&(objectClass=posixAccount)(uid=%u))",
        "user_filter = (&(objectClass=posixAccount)(uid=%u))",
        *lines, ""]))
    return path


def chain_for(conf: Path, cache: AuthCache | None = None, username_chars: str | None = None) -> PassdbChain:
    extra = {} if username_chars is None else {"username_chars": username_chars}
    return PassdbChain([Passdb.from_settings(SimpleNamespace(name="ldap", driver="ldap", args=str(conf)))],
                       cache=cache, **extra)



@pytest.mark.parametrize("user", SCHEME_USERS, ids=lambda u: u.scheme)
async def test_password_lookup_users_of_every_scheme(slapd: SlapdServer, tmp_path: Path, user) -> None:
    chain = chain_for(write_conf(tmp_path / "ldap.conf.ext", slapd, "default_pass_scheme = MD5-CRYPT"))
    assert (await login(chain, user.name, user.password)).status == "ok"
    assert (await login(chain, user.name, user.password + "!")).status == "failed"


async def test_pass_attrs_become_fields_and_unknown_users_are_unknown(slapd: SlapdServer, tmp_path: Path) -> None:
    chain = chain_for(write_conf(tmp_path / "ldap.conf.ext", slapd))
    pinned = await login(chain, "pinned@example.test", "pw-pinned")
    assert pinned.status == "ok" and pinned.fields == {"host": "127.0.0.3"}
    assert (await chain.lookup("pinned@example.test")).fields == {"host": "127.0.0.3"}
    assert (await login(chain, "nobody@example.test", "x")).status == "unknown_user"


async def test_filter_metacharacters_in_the_name_are_escaped(slapd: SlapdServer, tmp_path: Path) -> None:
    chain = chain_for(write_conf(tmp_path / "ldap.conf.ext", slapd), username_chars="")
    for name in ("*", "ssha*", "*)(uid=ssha@example.test"):
        assert (await login(chain, name, "pw-ssha")).status == "unknown_user", name


@pytest.mark.parametrize("bind", ["search", "userdn"])
async def test_auth_bind_lets_the_directory_check_the_password(slapd: SlapdServer, tmp_path: Path, bind: str
                                                               ) -> None:
    lines = ["auth_bind = yes"]
    if bind == "userdn":
        lines.append(f"auth_bind_userdn = uid=%u,ou=people,{SUFFIX}")
    chain = chain_for(write_conf(tmp_path / "ldap.conf.ext", slapd, *lines))
    ok = await login(chain, "pinned@example.test", "pw-pinned")  # {SSHA}: slapd verifies it itself
    assert ok.status == "ok"
    if bind == "search":
        assert ok.fields == {"host": "127.0.0.3"}
    assert (await login(chain, "pinned@example.test", "wrong")).status == "failed"
    assert (await login(chain, "pinned@example.test", "")).status == "failed"  # never an anonymous bind
    unknown = await login(chain, "nobody@example.test", "x")
    assert unknown.status == ("unknown_user" if bind == "search" else "failed")


@pytest.mark.parametrize("transport", ["ldaps", "starttls"])
async def test_tls_to_the_directory(slapd: SlapdServer, tmp_path: Path, transport: str) -> None:
    assert slapd.ca_file is not None
    conf = write_conf(tmp_path / "ldap.conf.ext", slapd, f"tls_ca_cert_file = {slapd.ca_file}",
                      "tls_require_cert = hard", "auth_bind = yes")
    text = conf.read_text()
    if transport == "ldaps":
        text = text.replace(f"uris = {slapd.uri}", f"uris = {slapd.ldaps_uri}")
    else:
        text += "tls = yes\n"
    conf.write_text(text)
    chain = chain_for(conf)
    assert (await login(chain, "ssha@example.test", "pw-ssha")).status == "ok"
    assert (await login(chain, "ssha@example.test", "nope")).status == "failed"
    untrusted = tmp_path / "untrusted.conf.ext"
    untrusted.write_text(text.replace(f"tls_ca_cert_file = {slapd.ca_file}", "tls_ca_cert_file = /etc/ssl/certs/"
                                      "ca-certificates.crt"))
    assert (await login(chain_for(untrusted), "ssha@example.test", "pw-ssha")).status == "tempfail"


@pytest.mark.parametrize("auth_bind", ["no", "yes"])
async def test_slapd_stopped_mid_run_is_tempfail_then_works_again(slapd: SlapdServer, tmp_path: Path,
                                                                  auth_bind: str) -> None:
    chain = chain_for(write_conf(tmp_path / "ldap.conf.ext", slapd, f"auth_bind = {auth_bind}"))
    user = BY_NAME["ssha@example.test"]
    assert (await login(chain, user.name, user.password)).status == "ok"  # pooled connections now open
    slapd.stop()
    try:
        for name in (user.name, "nobody@example.test"):
            assert (await login(chain, name, user.password)).status == "tempfail"
    finally:
        slapd.start()
    # The pooled connections died with the server: the first login after it is back already works.
    assert (await login(chain, user.name, user.password)).status == "ok"
    assert (await login(chain, user.name, "wrong")).status == "failed"


async def test_auth_bind_with_cache_keeps_a_hash_of_the_bound_password(slapd: SlapdServer, tmp_path: Path) -> None:
    cache = AuthCache(1 << 20, ttl=3600, negative_ttl=3600)
    chain = chain_for(write_conf(tmp_path / "ldap.conf.ext", slapd, "auth_bind = yes"), cache)
    user = BY_NAME["ssha@example.test"]
    assert (await login(chain, user.name, "wrong")).status == "failed"
    assert (await login(chain, user.name, user.password)).status == "ok"
    slapd.stop()
    try:
        assert (await login(chain, user.name, user.password)).status == "ok"  # from the cached hash
        assert (await login(chain, user.name, "wrong")).status == "failed"
    finally:
        slapd.start()
