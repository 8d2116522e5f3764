"""Pure parts of the sql and ldap passdbs and the auth cache: file syntax, escaping, result rows, eviction."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from palomar.auth.cache import AuthCache
from palomar.auth.driver import DriverLookup
from palomar.auth.ext_file import ExtFileError, parse_ext
from palomar.auth.ldap_driver import (
    LdapArgsError,
    LdapConf,
    dn_escape,
    entry_to_lookup,
    filter_escape,
    parse_servers,
)
from palomar.auth.passdb import Passdb, PassdbConfigError
from palomar.auth.sql_driver import PgConnect, SqlArgsError, rows_to_lookup, sql_escape
from palomar.auth.variables import Template, user_values


def test_ext_file_comments_continuations_quotes_and_last_wins() -> None:
    text = ('# comment\n\ndriver = pgsql\nconnect = "host=a dbname=b"\npassword_query = SELECT a, \\\n'
            '   b FROM t \\\n  WHERE u = \'%u\'\ndriver = sqlite\n')
    assert parse_ext(text, "f") == {"driver": "sqlite", "connect": "host=a dbname=b",
                                    "password_query": "SELECT a, b FROM t WHERE u = '%u'"}


@pytest.mark.parametrize("text", ["just s3cret words\n", "= s3cret\n", "a = s3cret \\\n"])
def test_ext_file_errors_name_the_line_not_the_value(text: str) -> None:
    with pytest.raises(ExtFileError, match=r"^f line 1") as err:
        parse_ext(text, "f")
    assert "s3cret" not in str(err.value)


@pytest.mark.parametrize(("value", "escaped"), [
    ("plain", "plain"), ("o'brien", "o''brien"), ("'; DROP TABLE users; --", "''; DROP TABLE users; --"),
    ("back\\slash", "back\\slash"),
])
def test_sql_escape_doubles_quotes_only(value: str, escaped: str) -> None:
    assert sql_escape(value) == escaped
    rendered = Template.parse("WHERE u = '%u'").render(user_values(value), sql_escape)
    assert rendered == f"WHERE u = '{escaped}'"


@pytest.mark.parametrize(("columns", "rows", "found", "error", "password", "fields"), [
    (["password"], [], False, None, None, {}),
    (["user", "password"], [("a@x", "{PLAIN}p"), ("b@x", "{PLAIN}q")], False, "multiple", None, {}),
    (["user", "host"], [("a@x", "h")], False, "password", None, {}),
    (["password", "host", "nologin", "proxy"], [("{PLAIN}p", "10.0.0.1", None, True)], True, None, "{PLAIN}p",
     {"host": "10.0.0.1", "proxy": "t"}),
    (["PASSWORD_NOSCHEME"], [("{weird}x",)], True, None, "{MD5-CRYPT}{weird}x", {}),
    (["password", "username", "domain"], [(None, "Bob", "Example.org")], True, None, None,
     {"user": "Bob@Example.org"}),
    (["password", "username"], [("x", "bob")], True, None, "x", {"user": "bob@example.test"}),
    (["password", "reason"], [("x", "100% full")], True, None, "x", {"reason": "100% full"}),
])
def test_rows_to_lookup(columns, rows, found, error, password, fields) -> None:
    got = rows_to_lookup(columns, rows, user="alice@example.test", default_scheme="MD5-CRYPT")
    assert got.found is found
    assert (got.error is None) if error is None else (error in got.error)
    assert got.password == password
    assert {k: t.render({}) for k, t in got.fields} == fields


def test_pg_connect_string() -> None:
    c = PgConnect.parse("host=db1 host=db2 port=5433 dbname=mail user=dovecot password='p w\\'x' "
                        "connect_timeout=3 maxconns=9 sslmode=require", "f")
    assert c.hosts == ("db1", "db2") and c.connect_timeout == 3 and c.maxconns == 9
    assert c.kwargs == {"port": 5433, "database": "mail", "user": "dovecot", "password": "p w'x", "ssl": "require"}
    for bad in ("host=a options=-c", "port=x", "sslmode=sometimes", "password='open"):
        with pytest.raises(SqlArgsError):
            PgConnect.parse(bad, "f")


@pytest.mark.parametrize(("value", "escaped"), [("a*b", "a\\2ab"), ("x)(uid=*", "x\\29\\28uid=\\2a"),
                                                ("\\", "\\5c")])
def test_filter_escape(value: str, escaped: str) -> None:
    assert filter_escape(value) == escaped


def test_dn_escape() -> None:
    assert dn_escape("a,b=c+d") == "a\\,b\\=c\\+d"


def test_ldap_servers_from_uris_and_hosts() -> None:
    servers = parse_servers("ldap://a ldaps://b:1636", "c:3389 d", "f")
    assert [(s.host, s.port, s.ssl) for s in servers] == [("a", 389, False), ("b", 1636, True),
                                                          ("c", 3389, False), ("d", 389, False)]
    with pytest.raises(LdapArgsError):
        parse_servers("", "", "f")


def test_pass_attrs_map_attributes_to_fields() -> None:
    conf = LdapConf.from_settings({"hosts": "h", "base": "dc=x", "pass_attrs":
                                   "uid=user, userPassword=password, mailHost=host, =proxy=y, =destuser=%n"}, "f")
    attrs = {"UID": [b"alice"], "userpassword": [b"{SSHA}abc", b"second"], "mailHost": [b"10.0.0.2"]}
    got = entry_to_lookup(attrs, conf, user_values("alice@x"))
    assert got.password == "{SSHA}abc"
    assert {k: t.render({}) for k, t in got.fields} == {"user": "alice", "host": "10.0.0.2", "proxy": "y",
                                                        "destuser": "alice"}
    bind = LdapConf.from_settings({"hosts": "h", "base": "dc=x", "auth_bind": "yes"}, "f")
    assert entry_to_lookup(attrs, bind, {}).password is None  # the directory checks it


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cache_is_bounded_by_size_and_evicts_least_recently_used() -> None:
    cache = AuthCache(size=1000, ttl=10, negative_ttl=5, clock=Clock())
    for i in range(20):
        cache.put(f"user{i}", DriverLookup(True, "{PLAIN}" + "x" * 50))
        assert cache.used <= 1000
    assert len(cache) < 20 and cache.get("user19") is not None and cache.get("user0") is None
    cache.put("huge", DriverLookup(True, "x" * 5000))
    assert cache.get("huge") is None


def test_cache_ttls() -> None:
    clock = Clock()
    cache = AuthCache(size=10_000, ttl=10, negative_ttl=5, clock=clock)
    cache.put("known", DriverLookup(True, "{PLAIN}p"))
    cache.put("unknown", DriverLookup(False))
    clock.now = 6
    known, unknown = cache.get("known"), cache.get("unknown")
    assert known is not None and not known.expired(clock.now)
    assert unknown is not None and unknown.expired(clock.now)  # kept, for a database outage
    clock.now = 11
    assert cache.get("known").expired(clock.now)
    off = AuthCache(size=10_000, ttl=10, negative_ttl=0, clock=clock)
    off.put("unknown", DriverLookup(False))
    assert off.get("unknown") is None


@pytest.mark.parametrize(("driver", "text", "expected"), [
    ("sql", "driver = mysql\nconnect = host=x\npassword_query = SELECT 1\n", "mysql"),
    ("sql", "driver = pgsql\nconnect = host=x\n", "password_query"),
    ("sql", "driver = pgsql\nconnect = host=x bogus=1\npassword_query = SELECT '%u'\n", "bogus"),
    ("sql", "driver = sqlite\nconnect = /x\npassword_query = SELECT '%u'\niterate_filter = x\n", "iterate_filter"),
    ("sql", "driver = sqlite\nconnect = /x\npassword_query = SELECT '%{nope}'\n", "nope"),
    ("ldap", "base = dc=x\n", "uris or hosts"),
    ("ldap", "uris = ldap://h\n", "base"),
    ("ldap", "uris = http://h\nbase = dc=x\n", "ldap://"),
    ("ldap", "uris = ldap://h\nbase = dc=x\nsasl_bind = yes\n", "sasl_bind"),
    ("ldap", "uris = ldap://h\nbase = dc=x\nscope = everything\n", "scope"),
    ("ldap", "uris = ldap://h\nbase = dc=x\nldaprc_path = /x\n", "ldaprc_path"),
    ("ldap", "uris = ldap://h\nbase = dc=x\npass_attrs = =host=%{ldap:mailHost}\n", "malformed"),
    ("ldap", "uris = ldap://h\nbase = dc=x\nauth_bind = perhaps\n", "auth_bind"),
])
def test_bad_conf_files_are_configuration_errors(tmp_path, driver: str, text: str, expected: str) -> None:
    conf = tmp_path / "bad.conf.ext"
    conf.write_text(text)
    with pytest.raises(PassdbConfigError, match=expected):
        Passdb.from_settings(SimpleNamespace(driver=driver, args=str(conf)))
    with pytest.raises(PassdbConfigError, match="cannot read"):
        Passdb.from_settings(SimpleNamespace(driver=driver, args=str(tmp_path / "missing.conf.ext")))
