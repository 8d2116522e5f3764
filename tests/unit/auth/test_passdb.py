"""The passdb chain: order, result rules, fields, rename, nologin, allow_nets, lookups."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from palomar.auth import passwd_file
from palomar.auth.driver import DriverLookup
from palomar.auth.passdb import (
    AuthRequest,
    AuthResult,
    Passdb,
    PassdbChain,
    PassdbConfigError,
    ip_allowed,
)
from palomar.auth.schemes import hash_password
from palomar.auth.variables import user_values

SHARED = "probe-shared-pw"


@dataclass
class PassdbCfg:
    """Stands in for the config loader's passdb objects (same attribute names)."""

    name: str
    driver: str
    args: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    default_fields: str | dict[str, str] = ""
    override_fields: str | dict[str, str] = ""
    master: bool = False
    result_success: str = "return-ok"
    result_failure: str = "continue"
    result_internalfail: str = "continue"
    skip: str = "never"


def req(user: str, password: str | None, ip: str = "127.0.0.1", **kw) -> AuthRequest:
    return AuthRequest(user, password, "imap", ip, "127.0.0.2", False, "PLAIN", **kw)


@pytest.fixture
def seed_chain(tmp_path: Path) -> PassdbChain:
    """The seed's proxy layout: test accounts first (password from fields), then real users."""
    (tmp_path / "test-accounts.passwd").write_text("probe-be1\nprobe-be2:\nprobe-be3:{PLAIN}file-own\n")
    sha = hash_password("SHA512-CRYPT", "alice-pw").removeprefix("{SHA512-CRYPT}")
    (tmp_path / "users.passwd").write_text(
        f"alice@example.com:{sha}\n"
        "bob@example.com:{PLAIN}bob-pw::::::proxy host=10.0.0.7 port=1143 destuser=%n\n"
        "old@example.com:{PLAIN}old-pw::::::user=new@example.com\n"
        "gone@example.com:{PLAIN}gone-pw::::::nologin reason=Account-moved\n"
        "office@example.com:{PLAIN}office-pw::::::allow_nets=192.0.2.0/24,2001:db8::/32\n"
        "local@example.com:{PLAIN}local-pw::::::allow_nets=local\n"
        "probe-be1:{PLAIN}file-pw\n"
    )
    return PassdbChain.from_settings([
        PassdbCfg("test-accounts", "passwd-file", str(tmp_path / "test-accounts.passwd"),
                  fields={"proxy": "y", "password": SHARED, "host": "%{backend_host}"}),
        PassdbCfg("users", "passwd-file", str(tmp_path / "users.passwd")),
    ])


async def test_test_accounts_passdb_comes_first(seed_chain: PassdbChain) -> None:
    result = await seed_chain.authenticate(req("probe-be1", SHARED, backend_host="10.1.1.3"))
    assert result.status == "ok" and result.passdb_name == "test-accounts"
    assert result.fields == {"proxy": "y", "host": "10.1.1.3"}
    assert result.flag("proxy")
    # The file's own password for probe-be1 is in the second passdb only.
    second = await seed_chain.authenticate(req("probe-be1", "file-pw"))
    assert second.status == "ok" and second.passdb_name == "users" and "proxy" not in second.fields


async def test_password_from_fields_overrides_missing_file_password(seed_chain: PassdbChain) -> None:
    assert (await seed_chain.authenticate(req("probe-be2", SHARED))).ok
    wrong = await seed_chain.authenticate(req("probe-be2", "nope"))
    assert wrong.status == "unknown_user"  # mismatch continues; the last passdb does not know the user
    assert (await seed_chain.authenticate(req("probe-be3", SHARED))).ok
    assert not (await seed_chain.authenticate(req("probe-be3", "file-own"))).ok


async def test_fields_password_may_name_a_scheme(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("probe-a\n")
    for stored in (hash_password("SHA512-CRYPT", "pw"), hash_password("SSHA256", "pw"), "{PLAIN}pw", "pw"):
        chain = PassdbChain.from_settings([PassdbCfg("t", "passwd-file", f"{tmp_path}/t", fields={"password": stored})])
        assert (await chain.authenticate(req("probe-a", "pw"))).ok
        assert (await chain.authenticate(req("probe-a", "px"))).status == "failed"


async def test_default_scheme_is_crypt(seed_chain: PassdbChain) -> None:
    assert (await seed_chain.authenticate(req("alice@example.com", "alice-pw"))).ok
    wrong = await seed_chain.authenticate(req("alice@example.com", "bad"))
    assert wrong.status == "failed" and wrong.reason == "password mismatch"


async def test_username_is_lowercased_by_default(seed_chain: PassdbChain) -> None:
    result = await seed_chain.authenticate(req("Alice@Example.COM", "alice-pw"))
    assert result.ok and result.user == "alice@example.com"


async def test_proxy_fields_are_returned(seed_chain: PassdbChain) -> None:
    result = await seed_chain.authenticate(req("bob@example.com", "bob-pw"))
    assert result.ok and result.fields == {"proxy": "", "host": "10.0.0.7", "port": "1143", "destuser": "bob"}
    assert result.flag("proxy") and not result.flag("nologin")


async def test_user_rename(seed_chain: PassdbChain) -> None:
    result = await seed_chain.authenticate(req("old@example.com", "old-pw"))
    assert result.ok and result.user == "new@example.com" and "user" not in result.fields


async def test_nologin_with_reason_only_after_correct_password(seed_chain: PassdbChain) -> None:
    result = await seed_chain.authenticate(req("gone@example.com", "gone-pw"))
    assert result.status == "nologin" and result.reason == "Account-moved"
    wrong = await seed_chain.authenticate(req("gone@example.com", "x"))
    assert wrong.status == "failed" and "moved" not in (wrong.reason or "") and wrong.fields == {}


@pytest.mark.parametrize(("ip", "status"), [
    ("192.0.2.55", "ok"), ("198.51.100.1", "failed"),
    ("2001:db8::5", "ok"), ("2001:db9::5", "failed"),
    ("::ffff:192.0.2.9", "ok"), (None, "failed"),
])
async def test_allow_nets(seed_chain: PassdbChain, ip: str | None, status: str) -> None:
    result = await seed_chain.authenticate(req("office@example.com", "office-pw", ip=ip))  # type: ignore[arg-type]
    assert result.status == status
    if status == "failed":
        assert result.reason == "allow_nets mismatch"


async def test_allow_nets_local_matches_non_ip_clients(seed_chain: PassdbChain) -> None:
    assert (await seed_chain.authenticate(req("local@example.com", "local-pw", ip=None))).ok  # type: ignore[arg-type]
    assert not (await seed_chain.authenticate(req("local@example.com", "local-pw", ip="127.0.0.1"))).ok


def test_ip_allowed_helper() -> None:
    assert ip_allowed("10.0.0.0/8 ::1", "::1")
    assert ip_allowed("10.0.0.0/8, ::1", "10.2.3.4")
    assert not ip_allowed("10.0.0.0/8", "::1")
    assert not ip_allowed("not-a-net", "10.0.0.1")
    assert not ip_allowed("10.0.0.0/8", "garbage")


async def test_unknown_user(seed_chain: PassdbChain) -> None:
    result = await seed_chain.authenticate(req("nobody@example.com", "x"))
    assert result.status == "unknown_user" and result.user == "nobody@example.com"


async def test_lookup_skips_password_but_applies_fields(seed_chain: PassdbChain) -> None:
    bob = await seed_chain.lookup("bob@example.com", req("bob@example.com", None))
    assert bob.ok and bob.fields["host"] == "10.0.0.7"
    old = await seed_chain.lookup("OLD@example.com")
    assert old.ok and old.user == "new@example.com"
    gone = await seed_chain.lookup("gone@example.com")
    assert gone.status == "nologin"
    assert (await seed_chain.lookup("nobody@example.com")).status == "unknown_user"
    office = await seed_chain.lookup("office@example.com", req("office@example.com", None, ip="203.0.113.1"))
    assert office.status == "failed"


async def test_invalid_input_is_rejected_cleanly(seed_chain: PassdbChain) -> None:
    assert (await seed_chain.authenticate(req("bob example", "x"))).status == "failed"
    assert (await seed_chain.authenticate(req("", "x"))).status == "failed"
    assert (await seed_chain.authenticate(req("a" * 300, "x"))).status == "failed"
    assert (await seed_chain.authenticate(req("bob@example.com", "bob-pw\r\n"))).status == "failed"
    assert (await seed_chain.authenticate(req("bob@example.com", None))).status == "failed"
    assert (await seed_chain.lookup("bob:example")).status == "failed"


async def test_static_driver_and_variables(tmp_path: Path) -> None:
    chain = PassdbChain.from_settings([
        PassdbCfg("backend-trust", "static", "nopassword=y allow_nets=127.0.0.0/8",
                  fields={"destuser": "%{username}", "where": "%{domain}/%u/%{service}/%{rip}"}),
    ])
    result = await chain.authenticate(req("carol@example.org", "anything"))
    assert result.ok
    assert result.fields == {"destuser": "carol", "where": "example.org/carol@example.org/imap/127.0.0.1"}
    assert not (await chain.authenticate(req("carol@example.org", "anything", ip="10.0.0.1"))).ok

    moved = PassdbChain.from_settings([
        PassdbCfg("m", "static", "nopassword", fields={"nologin": "y", "reason": "Moved to a new server."}),
    ])
    result = await moved.authenticate(req("carol", "x"))
    assert result.status == "nologin" and result.reason == "Moved to a new server."

    shared = PassdbChain.from_settings([PassdbCfg("s", "static", "password=pw-%n")])
    assert (await shared.authenticate(req("dave", "pw-dave"))).ok
    assert (await shared.authenticate(req("dave", "pw-erin"))).status == "failed"


async def test_fields_default_and_remove_modifiers(tmp_path: Path) -> None:
    (tmp_path / "u").write_text("a:{PLAIN}a::::::host=10.0.0.1 port=1\nb:{PLAIN}b\n")
    chain = PassdbChain.from_settings([
        PassdbCfg("u", "passwd-file", f"{tmp_path}/u", fields={"host:default": "10.9.9.9", "port:remove": ""},
                  default_fields="proxy=y", override_fields={"ttl": "5"}),
    ])
    a = await chain.authenticate(req("a", "a"))
    assert a.fields == {"proxy": "y", "host": "10.0.0.1", "ttl": "5"}
    b = await chain.authenticate(req("b", "b"))
    assert b.fields == {"proxy": "y", "host": "10.9.9.9", "ttl": "5"}


async def test_passwd_file_scheme_argument(tmp_path: Path) -> None:
    (tmp_path / "u").write_text("plain:secret\n")
    chain = PassdbChain.from_settings([PassdbCfg("u", "passwd-file", f"scheme=PLAIN {tmp_path}/u")])
    assert (await chain.authenticate(req("plain", "secret"))).ok
    crypt_chain = PassdbChain.from_settings([PassdbCfg("u", "passwd-file", f"{tmp_path}/u")])
    assert not (await crypt_chain.authenticate(req("plain", "secret"))).ok


async def test_file_reload_is_seen_by_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "u"
    path.write_text("a:{PLAIN}one\n")
    chain = PassdbChain.from_settings([PassdbCfg("u", "passwd-file", str(path))])
    assert (await chain.authenticate(req("a", "one"))).ok
    path.write_text("a:{PLAIN}two-longer\n")
    assert not (await chain.authenticate(req("a", "one"))).ok
    assert (await chain.authenticate(req("a", "two-longer"))).ok


async def test_result_rules_and_skip(tmp_path: Path) -> None:
    (tmp_path / "first").write_text("a:{PLAIN}a::::::from_first=1\n")
    (tmp_path / "second").write_text("a:{PLAIN}other::::::from_second=1\n")
    # continue-ok: the first passdb authenticates, the second adds fields without a password check.
    chain = PassdbChain.from_settings([
        PassdbCfg("first", "passwd-file", f"{tmp_path}/first", result_success="continue-ok"),
        PassdbCfg("second", "passwd-file", f"{tmp_path}/second"),
    ])
    result = await chain.authenticate(req("a", "a"))
    assert result.ok and result.fields == {"from_first": "1", "from_second": "1"}

    # skip=authenticated: the second passdb is not consulted once the first succeeded.
    skipping = PassdbChain.from_settings([
        PassdbCfg("first", "passwd-file", f"{tmp_path}/first", result_success="continue-ok"),
        PassdbCfg("second", "passwd-file", f"{tmp_path}/second", skip="authenticated"),
    ])
    result = await skipping.authenticate(req("a", "a"))
    assert result.ok and result.fields == {"from_first": "1"} and result.passdb_name == "first"

    # result_failure=return-fail stops the chain at the first mismatch.
    stopping = PassdbChain.from_settings([
        PassdbCfg("first", "passwd-file", f"{tmp_path}/first", result_failure="return-fail"),
        PassdbCfg("second", "passwd-file", f"{tmp_path}/second"),
    ])
    assert (await stopping.authenticate(req("a", "other"))).status == "failed"
    assert (await chain.authenticate(req("a", "other"))).ok  # default: continue to the second passdb

    # skip=unauthenticated on the only passdb: everything skipped is an internal failure.
    none_left = PassdbChain.from_settings([PassdbCfg("x", "passwd-file", f"{tmp_path}/first", skip="unauthenticated")])
    assert (await none_left.authenticate(req("a", "a"))).status == "tempfail"


async def test_internal_failure_then_success_and_tempfail(tmp_path: Path) -> None:
    (tmp_path / "broken").write_text("a:{NOSUCH}zzz\n")
    (tmp_path / "good").write_text("a:{PLAIN}a\n")
    chain = PassdbChain.from_settings([
        PassdbCfg("broken", "passwd-file", f"{tmp_path}/broken"),
        PassdbCfg("good", "passwd-file", f"{tmp_path}/good"),
    ])
    assert (await chain.authenticate(req("a", "a"))).ok
    # The later mismatch must not hide that the first passdb could not check the password.
    assert (await chain.authenticate(req("a", "b"))).status == "tempfail"
    missing = PassdbChain.from_settings([PassdbCfg("m", "passwd-file", f"{tmp_path}/absent")])
    assert (await missing.authenticate(req("a", "a"))).status == "tempfail"


async def test_master_login(tmp_path: Path) -> None:
    (tmp_path / "masters").write_text("admin:{PLAIN}master-pw\n")
    (tmp_path / "users").write_text("a:{PLAIN}a::::::host=10.0.0.3\n")
    chain = PassdbChain.from_settings([
        PassdbCfg("masters", "passwd-file", f"{tmp_path}/masters", master=True),
        PassdbCfg("users", "passwd-file", f"{tmp_path}/users"),
    ])
    ok = await chain.authenticate(req("a", "master-pw", master_user="admin"))
    assert ok.ok and ok.user == "a" and ok.fields == {"host": "10.0.0.3"}
    assert (await chain.authenticate(req("a", "a", master_user="admin"))).status == "failed"
    assert (await chain.authenticate(req("ghost", "master-pw", master_user="admin"))).status == "unknown_user"
    # Master passdbs never authenticate ordinary logins.
    assert (await chain.authenticate(req("admin", "master-pw"))).status == "unknown_user"


def test_config_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(PassdbConfigError, match="ldap"):
        PassdbChain.from_settings([PassdbCfg("x", "ldap", "/etc/ldap.conf")])
    with pytest.raises(PassdbConfigError, match="result_success"):
        PassdbChain.from_settings([PassdbCfg("x", "static", "nopassword", result_success="maybe")])
    with pytest.raises(PassdbConfigError, match="nosuch"):
        PassdbChain.from_settings([PassdbCfg("x", "static", "nopassword", fields={"host": "%{nosuch}"})])
    with pytest.raises(PassdbConfigError, match="passdb users"):
        PassdbChain.from_settings([PassdbCfg("users", "passwd-file", "")])
    with pytest.raises(PassdbConfigError, match="skip"):
        PassdbChain.from_settings([PassdbCfg("x", "static", "nopassword", skip="sometimes")])


async def test_secrets_never_logged_or_shown(seed_chain: PassdbChain, caplog: pytest.LogCaptureFixture,
                                             tmp_path: Path) -> None:
    (tmp_path / "bad").write_text("a:{NOSUCH}stored-secret-hash\n")
    bad = PassdbChain.from_settings([PassdbCfg("bad", "passwd-file", f"{tmp_path}/bad",
                                               fields={"pass": "%{password}"})])
    with caplog.at_level(logging.DEBUG):
        await seed_chain.authenticate(req("alice@example.com", "typed-secret"))
        await seed_chain.authenticate(req("probe-be1", SHARED))
        await bad.authenticate(req("a", "typed-secret"))
    assert "typed-secret" not in caplog.text and SHARED not in caplog.text
    assert "stored-secret-hash" not in caplog.text
    assert "NOSUCH" in caplog.text  # the error itself is reported
    assert "typed-secret" not in repr(req("a", "typed-secret"))

    forwarding = PassdbChain.from_settings([PassdbCfg("f", "static", "nopassword", fields={"pass": "%{password}"})])
    result = await forwarding.authenticate(req("a", "typed-secret"))
    assert result.fields["pass"] == "typed-secret"  # pass=%{password} forwards the cleartext to the backend
    assert "typed-secret" not in repr(result) and "typed-secret" not in str(result)
    assert SHARED not in repr(seed_chain)


class BlockingDriver:
    """A driver that can finish only if the event loop keeps running while it works."""

    default_scheme = "PLAIN"

    def __init__(self) -> None:
        self.release = threading.Event()

    def lookup(self, user: str, values: Mapping[str, str]) -> DriverLookup:
        if not self.release.wait(timeout=10):
            return DriverLookup(found=False, error="event loop was blocked")
        return DriverLookup(found=True, password="{PLAIN}pw")


async def test_lookups_do_not_block_the_event_loop() -> None:
    driver = BlockingDriver()
    chain = PassdbChain([Passdb("blocking", driver)])
    task = asyncio.ensure_future(chain.authenticate(req("a", "pw")))
    asyncio.get_running_loop().call_soon(driver.release.set)
    result = await task
    assert result.ok, result.reason


async def test_concurrent_authentications(tmp_path: Path) -> None:
    stored = hash_password("ARGON2ID", "pw")
    (tmp_path / "u").write_text("".join(f"u{i}:{stored}\n" for i in range(8)))
    chain = PassdbChain.from_settings([PassdbCfg("u", "passwd-file", f"{tmp_path}/u")])
    results = await asyncio.gather(*(chain.authenticate(req(f"u{i}", "pw" if i % 2 else "no")) for i in range(8)))
    assert [r.status for r in results] == ["failed", "ok"] * 4


def test_auth_result_repr_masks_pass_fields() -> None:
    result = AuthResult("ok", "a", {"pass": "p1", "password": "p2", "host": "h"})
    assert "p1" not in repr(result) and "p2" not in repr(result) and "'h'" in repr(result)


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting the jobs handed to it (worker-thread hand-offs)."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.jobs = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


async def test_cheap_steps_run_inline_slow_ones_in_a_thread(tmp_path: Path) -> None:
    """A loaded passwd-file and a PLAIN/SSHA check need no thread; a file (re)read or crypt does."""
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    path = tmp_path / "u"
    crypt = hash_password("SHA512-CRYPT", "slow-pw")
    ssha = hash_password("SSHA", "salted-pw")
    path.write_text(f"plain:{{PLAIN}}pw\nslow:{crypt}\nsalted:{ssha}\n")
    chain = PassdbChain.from_settings([PassdbCfg("u", "passwd-file", str(path))])

    assert (await chain.authenticate(req("plain", "pw"))).ok
    assert executor.jobs == 1  # the first lookup reads the file
    assert (await chain.authenticate(req("plain", "pw"))).ok
    assert not (await chain.authenticate(req("plain", "wrong"))).ok
    assert (await chain.authenticate(req("salted", "salted-pw"))).ok
    assert (await chain.lookup("nobody")).status == "unknown_user"
    assert executor.jobs == 1
    assert (await chain.authenticate(req("slow", "slow-pw"))).ok
    assert not (await chain.authenticate(req("slow", "pw"))).ok
    assert executor.jobs == 3  # each crypt check in a thread

    path.write_text(f"plain:{{PLAIN}}new-pw\nslow:{crypt}\n")
    assert not (await chain.authenticate(req("plain", "pw"))).ok
    assert (await chain.authenticate(req("plain", "new-pw"))).ok
    assert executor.jobs == 3  # a line is read at each lookup; the file is re-indexed in a thread of its own


async def test_login_during_reload_is_answered_from_the_old_table(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """While a replaced large file is being indexed, logins go on with the old index."""
    path = tmp_path / "users"
    bulk = "".join(f"user{i}@example.com:{{PLAIN}}pw{i}\n" for i in range(100_000))
    path.write_text(f"{bulk}alice:{{PLAIN}}old\n")
    chain = PassdbChain.from_settings([PassdbCfg("u", "passwd-file", str(path))])
    assert (await chain.authenticate(req("alice", "old"))).ok

    building, release = threading.Event(), threading.Event()

    def gated_build(p: str) -> passwd_file.PasswdIndex:
        building.set()
        assert release.wait(30)
        return real_build(p)

    real_build = passwd_file.build_index
    monkeypatch.setattr(passwd_file, "build_index", gated_build)
    new = tmp_path / "users.new"
    new.write_text(f"alice:{{PLAIN}}new\n{bulk}")
    new.replace(path)
    try:
        assert (await asyncio.wait_for(chain.authenticate(req("alice", "old")), 10)).ok
        assert (await asyncio.wait_for(chain.authenticate(req("user7@example.com", "pw7")), 10)).ok
        assert await asyncio.to_thread(building.wait, 10)  # the new index was being built meanwhile
    finally:
        release.set()
    # a blocking lookup waits for that build; from then on the new file answers
    assert (await asyncio.to_thread(chain.passdbs[0].driver.lookup, "alice", user_values("alice"))).password \
        == "{PLAIN}new"
    assert (await chain.authenticate(req("alice", "new"))).ok
    assert not (await chain.authenticate(req("alice", "old"))).ok


async def test_static_passdb_runs_inline() -> None:
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    chain = PassdbChain.from_settings([PassdbCfg("s", "static", "password=shared-pw proxy=y")])
    assert (await chain.authenticate(req("anyone", "shared-pw"))).flag("proxy")
    assert not (await chain.authenticate(req("anyone", "other"))).ok
    assert executor.jobs == 0
