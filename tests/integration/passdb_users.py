"""The users the sql and ldap passdb tests put in their databases: one per password scheme, plus fields."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache

from palomar.auth import libxcrypt
from palomar.auth.passdb import AuthRequest, AuthResult, PassdbChain
from palomar.auth.schemes import hash_password


@dataclass(frozen=True)
class User:
    name: str
    password: str
    scheme: str
    host: str | None = None
    nologin: str | None = None
    reason: str | None = None

    @property
    def local(self) -> str:
        return self.name.partition("@")[0]

    @property
    def stored(self) -> str:
        return stored_password(self.scheme, self.password)


@cache
def stored_password(scheme: str, password: str) -> str:
    """``{SCHEME}data``; ``NOSCHEME`` is a bare MD5-crypt hash, for ``default_pass_scheme``."""
    if scheme == "NOSCHEME":
        return libxcrypt.crypt(password.encode(), libxcrypt.gensalt(b"$1$", 0)).decode()
    return hash_password(scheme, password)


USERS = (
    User("sha512@example.test", "pw-sha512", "SHA512-CRYPT"),
    User("ssha@example.test", "pw-ssha", "SSHA"),
    User("plain@example.test", "pw-plain", "PLAIN"),
    User("argon@example.test", "pw-argon", "ARGON2ID"),
    User("noscheme@example.test", "pw-noscheme", "NOSCHEME"),
    User("pinned@example.test", "pw-pinned", "SSHA", host="127.0.0.3"),
    User("off@example.test", "pw-off", "PLAIN", nologin="y", reason="Moved to the new server."),
)
SCHEME_USERS = [u for u in USERS if u.host is None and u.nologin is None]
BY_NAME = {u.name: u for u in USERS}


def sql_literal(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def sql_rows() -> str:
    """CREATE TABLE and INSERTs that PostgreSQL and SQLite both take."""
    rows = ",\n".join(
        f"({sql_literal(u.name)}, {sql_literal(u.stored)}, {sql_literal(u.host)}, {sql_literal(u.nologin)}, "
        f"{sql_literal(u.reason)}, 'Y')" for u in USERS)
    return ("CREATE TABLE users (userid TEXT PRIMARY KEY, password TEXT, host TEXT, nologin TEXT, reason TEXT, "
            "active CHAR(1) NOT NULL DEFAULT 'Y');\n"
            f"INSERT INTO users (userid, password, host, nologin, reason, active) VALUES\n{rows};\n")


# A dovecot-sql.conf.ext password_query as operators write it (continued lines, quoted %u).
PASSWORD_QUERY = ("SELECT userid AS user, password, host, nologin, reason \\\n"
                  "    FROM users WHERE userid = '%u' AND active = 'Y'")


def ldif(suffix: str) -> str:
    """posixAccount entries under ou=people; uid is the whole address, the host in roomNumber."""
    entries = []
    for i, u in enumerate(USERS):
        lines = [f"dn: uid={u.name},ou=people,{suffix}", "objectClass: inetOrgPerson", "objectClass: posixAccount",
                 f"uid: {u.name}", f"cn: {u.local}", f"sn: {u.local}", f"uidNumber: {2000 + i}",
                 "gidNumber: 2000", f"homeDirectory: /home/{u.local}", f"userPassword: {u.stored}"]
        if u.host:
            lines.append(f"roomNumber: {u.host}")
        entries.append("\n".join(lines) + "\n")
    return "\n".join(entries)


RECOVERY_BOUND = 30.0
"""Seconds a restarted database has to serve logins again."""


async def login(chain: PassdbChain, user: str, password: str) -> AuthResult:
    return await chain.authenticate(AuthRequest(user, password, remote_ip="192.0.2.7"))


async def wait_for_status(chain: PassdbChain, user: str, password: str, status: str) -> None:
    """Log in until the chain answers ``status`` (a restarted server), at most RECOVERY_BOUND seconds."""
    deadline = asyncio.get_running_loop().time() + RECOVERY_BOUND
    while (result := await login(chain, user, password)).status != status:
        assert asyncio.get_running_loop().time() < deadline, f"still {result.status}, never {status}"
        await asyncio.sleep(0.1)  # poll the condition, bounded by RECOVERY_BOUND
