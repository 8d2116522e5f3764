"""A whole cluster whose users live in PostgreSQL and OpenLDAP: every protocol logs in through HAProxy,
and a database taken away mid-run answers "try again later", never "wrong password"."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from palomar.auth.schemes import hash_password
from palomar.devcluster.cluster import LocalCluster, demo_users
from palomar.devcluster.login_check import check_logins, imap_login, lmtp_delivery, pop3_login
from palomar.devcluster.net import wait_until
from palomar.devcluster.userdb_servers import PostgresServer, SlapdServer

PG_HOST, LDAP_HOST = "127.0.0.46", "127.0.0.47"
SUFFIX = "dc=example,dc=test"
USERS = demo_users(8)
SQL_USERS, LDAP_USERS = USERS[:4], USERS[4:]
SCHEMES = ("SHA512-CRYPT", "SSHA", "PLAIN", "ARGON2ID")
RECOVERY_BOUND = 30.0


@pytest.fixture(scope="module")
def databases(harness_root: Path) -> Iterator[tuple[PostgresServer, SlapdServer]]:
    pg = PostgresServer(harness_root / "cluster-pg", host=PG_HOST).start()
    slapd = SlapdServer(harness_root / "cluster-ldap", suffix=SUFFIX, host=LDAP_HOST)
    try:
        pg.psql("CREATE ROLE dovecot LOGIN PASSWORD 'db-secret'")
        pg.psql("CREATE DATABASE mail")
        rows = ", ".join(f"('{u.name}', '{hash_password(s, u.password)}')" for u, s in zip(SQL_USERS, SCHEMES, strict=True))
        pg.psql("CREATE TABLE users (userid TEXT PRIMARY KEY, password TEXT NOT NULL);"
                f"INSERT INTO users VALUES {rows}; GRANT SELECT ON users TO dovecot;", "mail")
        entries = [
            f"dn: uid={u.name},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n"
            f"uid: {u.name}\ncn: {u.name}\nsn: x\nuidNumber: {3000 + i}\ngidNumber: 3000\n"
            f"homeDirectory: /nonexistent\nuserPassword: {hash_password(s, u.password)}\n"
            for i, (u, s) in enumerate(zip(LDAP_USERS, SCHEMES, strict=True))]
        slapd.init("\n".join(entries)).start()
        yield pg, slapd
    finally:
        slapd.destroy()
        pg.destroy()


@pytest.fixture(scope="module")
def cluster(harness_root: Path, databases: tuple[PostgresServer, SlapdServer]) -> Iterator[LocalCluster]:
    pg, slapd = databases
    root = harness_root / "passdb-db-cluster"
    root.mkdir()
    sql_conf, ldap_conf = root / "dovecot-sql.conf.ext", root / "dovecot-ldap.conf.ext"
    sql_conf.write_text(f"driver = pgsql\nconnect = {pg.connect_line('mail', 'dovecot', 'db-secret')} "
                        "connect_timeout=2\ndefault_pass_scheme = SHA512-CRYPT\n"
                        "password_query = SELECT password FROM users WHERE userid = '%u'\n")
    ldap_conf.write_text(f"uris = {slapd.ldaps_uri}\ntls_ca_cert_file = {slapd.ca_file}\n"
                         f"dn = {slapd.admin_dn}\ndnpass = {slapd.admin_password}\nbase = ou=people,{SUFFIX}\n"
                         "pass_attrs = userPassword=password\n"
                         "pass_filter = (&(objectClass=posixAccount)(uid=%u))\n")
    ldap_passdb = ("passdb directory {", "  driver = ldap", f"  args = {ldap_conf}", "}")
    c = LocalCluster(root, backends_count=2, proxies_count=2, auth_failure_delay="0",
                     proxy_settings={"*": ("auth_cache_size = 1M", "auth_cache_ttl = 1 hour", *ldap_passdb)},
                     users_passdb=("driver = sql", f"args = {sql_conf}"))
    c.start()
    yield c
    c.stop()


def test_users_in_postgresql_and_ldap_use_every_protocol(cluster: LocalCluster) -> None:
    for user in (SQL_USERS[0], LDAP_USERS[0], SQL_USERS[3], LDAP_USERS[3]):
        assert check_logins(cluster, [cluster.lb_host], user.name, user.password) == []


def test_wrong_password_is_an_authentication_failure(cluster: LocalCluster) -> None:
    for user in (SQL_USERS[1], LDAP_USERS[1]):
        with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
            imap_login(cluster.lb_host, cluster.lb_imap, user.name, user.password + "-wrong")


@pytest.mark.parametrize("which", ["postgresql", "ldap"])
def test_a_database_stopped_mid_run_is_a_temporary_failure_until_it_is_back(
        cluster: LocalCluster, databases: tuple[PostgresServer, SlapdServer], which: str) -> None:
    pg, slapd = databases
    server, users, other = (pg, SQL_USERS, LDAP_USERS) if which == "postgresql" else (slapd, LDAP_USERS, SQL_USERS)
    user = users[2]  # no login before (the auth cache would answer for it): the database must
    server.stop()
    try:
        with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
            imap_login(cluster.lb_host, cluster.lb_imap, user.name, user.password)
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
            pop3_login(cluster.lb_host, cluster.lb_pop3, user.name, user.password)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            lmtp_delivery(cluster.lb_host, cluster.lb_lmtp, user.name, "")
        (code, _text), = refused.value.recipients.values()
        assert 400 <= code < 500, code
        imap_login(cluster.lb_host, cluster.lb_imap, other[0].name, other[0].password)  # the other database
    finally:
        server.start()

    def back() -> bool:
        return check_logins(cluster, [cluster.lb_host], user.name, user.password) == []

    wait_until(back, RECOVERY_BOUND, f"logins through {which} after its restart")
