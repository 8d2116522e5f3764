"""passwd-file parsing, reloading and per-request file selection."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from palomar.auth.passwd_file import (
    PasswdArgsError,
    PasswdFile,
    PasswdFileArgs,
    PasswdFileDriver,
    PasswdFileError,
    parse_line,
)
from palomar.auth.variables import user_values

SECRET_HASH = "{SSHA512}qWwv8RJmIrdxkMnpdAlJ6F/o1ojlCxB+JAwYsklUnOdiSM3BKkqCuia9Z9oxOjwF9qmSgFNH5BIhsuAVf6XQ3XNhbHRzYWx0"


def rendered(entry) -> dict[str, str]:
    return {k: t.render(user_values(entry.user)) for k, t in entry.extra_fields}


def test_full_line() -> None:
    entry = parse_line("user:{plain}pass:1000:1000::/home/user::userdb_mail_path=~/Maildir allow_nets=192.168.0.0/24")
    assert entry is not None
    assert (entry.user, entry.password, entry.uid, entry.gid, entry.home) == (
        "user", "{plain}pass", "1000", "1000", "/home/user")
    assert rendered(entry) == {"userdb_mail_path": "~/Maildir", "allow_nets": "192.168.0.0/24"}


def test_short_lines_are_allowed() -> None:
    entry = parse_line("user:{plain}password")
    assert entry is not None and entry.password == "{plain}password" and entry.extra_fields == ()
    bare = parse_line("probe-be1")
    assert bare is not None and bare.user == "probe-be1" and bare.password is None
    empty_pw = parse_line("probe-be2:")
    assert empty_pw is not None and empty_pw.password is None


def test_extra_fields_keep_colons_and_bare_keys() -> None:
    entry = parse_line("u:{plain}p::::::proxy host=127.0.0.1 allow_nets=::1/128,fe80::/10 nologin reason=Moved")
    assert entry is not None
    assert rendered(entry) == {
        "proxy": "", "host": "127.0.0.1", "allow_nets": "::1/128,fe80::/10", "nologin": "", "reason": "Moved",
    }


def test_extra_fields_expand_variables() -> None:
    entry = parse_line("alice@example.com:{plain}p::::::destuser=%n x=%{domain} y=%Lu")
    assert entry is not None
    fields = {k: t.render(user_values("Alice@Example.com")) for k, t in entry.extra_fields}
    assert fields == {"destuser": "Alice", "x": "Example.com", "y": "alice@example.com"}


@pytest.mark.parametrize("line", ["", "   ", "# comment", "  # indented comment"])
def test_blank_and_comment_lines(line: str) -> None:
    assert parse_line(line) is None


@pytest.mark.parametrize("line", [":nouser", "bad user:pw", "u:p::::::=value", "u:p::::::x=%{nosuch}"])
def test_malformed_lines_raise(line: str) -> None:
    with pytest.raises(ValueError):
        parse_line(line)


def test_entry_repr_hides_password() -> None:
    entry = parse_line(f"user:{SECRET_HASH}::::::pass=topsecret")
    assert entry is not None
    assert SECRET_HASH not in repr(entry) and "topsecret" not in repr(entry)


def test_file_skips_malformed_lines_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "users"
    path.write_bytes(
        b"# users\n"
        b"\n"
        b"alice:" + SECRET_HASH.encode() + b"\n"
        b":orphan-" + SECRET_HASH.encode() + b"\n"
        b"bob:{PLAIN}b\n"
        b"bad\xff\xfe:{PLAIN}x\n"
        b"alice:{PLAIN}second\n"
        b"carol\n"
    )
    pf = PasswdFile(str(path))
    with caplog.at_level(logging.WARNING, logger="palomar.auth.passwd_file"):
        assert pf.users() == ["alice", "bob", "carol"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("line 4" in w for w in warnings)
    assert any("line 6" in w and "UTF-8" in w for w in warnings)
    assert any("line 7" in w and "alice" in w for w in warnings)
    assert SECRET_HASH not in caplog.text
    alice = pf.lookup("alice")
    assert alice is not None and alice.password == SECRET_HASH  # the first definition wins
    assert pf.lookup("nobody") is None


def test_reload_after_edit(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:{PLAIN}a\n")
    pf = PasswdFile(str(path))
    assert pf.lookup("bob") is None
    path.write_text("alice:{PLAIN}a\nbob:{PLAIN}b\n")
    bob = pf.lookup("bob")
    assert bob is not None and bob.password == "{PLAIN}b"


def test_reload_after_same_size_edit(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:{PLAIN}a\n")
    st = path.stat()
    pf = PasswdFile(str(path))
    assert pf.lookup("alice").password == "{PLAIN}a"  # type: ignore[union-attr]
    path.write_text("alice:{PLAIN}z\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert pf.lookup("alice").password == "{PLAIN}z"  # type: ignore[union-attr]


def test_reload_after_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:{PLAIN}a\n")
    pf = PasswdFile(str(path))
    assert pf.lookup("alice") is not None
    new = tmp_path / "users.new"
    new.write_text("dave:{PLAIN}d\n")
    new.replace(path)
    assert pf.lookup("alice") is None
    assert pf.lookup("dave") is not None


def test_missing_file_is_an_error_until_created(tmp_path: Path) -> None:
    path = tmp_path / "later"
    pf = PasswdFile(str(path))
    with pytest.raises(PasswdFileError, match="does not exist"):
        pf.lookup("alice")
    path.write_text("alice:{PLAIN}a\n")
    assert pf.lookup("alice") is not None


def test_args_parsing() -> None:
    args = PasswdFileArgs.parse("scheme=sha512-crypt username_format=%Ln /etc/users/%d.passwd")
    assert args.scheme == "SHA512-CRYPT"
    assert args.username_format.render(user_values("Bob@X.org")) == "bob"
    assert args.path.render(user_values("bob@x.org")) == "/etc/users/x.org.passwd"
    plain = PasswdFileArgs.parse("/etc/dovecot/cluster-test-accounts.passwd")
    assert plain.scheme == "CRYPT" and plain.path.is_literal


@pytest.mark.parametrize("args", ["", "scheme=PLAIN", "scheme=NOSUCH /etc/x", "/etc/%{nosuch}"])
def test_bad_args(args: str) -> None:
    with pytest.raises(PasswdArgsError):
        PasswdFileArgs.parse(args)


def test_driver_per_domain_files(tmp_path: Path) -> None:
    (tmp_path / "a.example").write_text("bob:{PLAIN}b\n")
    driver = PasswdFileDriver(f"username_format=%n {tmp_path}/%d")
    found = driver.lookup("bob@a.example", user_values("bob@a.example"))
    assert found.found and found.password == "{PLAIN}b"
    assert not driver.lookup("bob@b.example", user_values("bob@b.example")).found
    missing = driver.lookup("bob@none.example", user_values("bob@none.example"))
    assert not missing.found and missing.error is None  # a domain without a file has no users


def test_driver_refuses_path_escape(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "passwd").write_text("x:{PLAIN}x\n")
    driver = PasswdFileDriver(f"username_format=%n {tmp_path}/sub/%d/../passwd")
    assert not driver.lookup("x@..", user_values("x@..")).found
    assert not driver.lookup("x@a/b", user_values("x@a/b")).found


def test_driver_fixed_path_missing_is_internal_error(tmp_path: Path) -> None:
    driver = PasswdFileDriver(str(tmp_path / "absent"))
    result = driver.lookup("bob", user_values("bob"))
    assert not result.found and result.error is not None and "absent" in result.error


def test_rewrite_in_place_never_answers_from_a_shifted_line(tmp_path: Path) -> None:
    """After an in-place rewrite an old offset may land inside another line that happens to
    read ``alice:...``; the index must see that no line starts there and wait for a new build."""
    path = tmp_path / "users"
    path.write_text("xalice:{PLAIN}x\nalice:{PLAIN}a\n")
    pf = PasswdFile(str(path))
    assert pf.lookup("alice").password == "{PLAIN}a"  # type: ignore[union-attr]
    path.write_text("q" * 15 + "xalice:{PLAIN}evil\n")  # "alice:{PLAIN}evil" now sits at alice's old offset
    assert pf.lookup_nowait("alice") == (False, None)
    assert pf.lookup("alice") is None


def test_malformed_rest_of_line_is_reported_at_lookup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"alice:{PLAIN}a\nbob:" + SECRET_HASH.encode() + b"::::::x=%{nosuch}\n")
    pf = PasswdFile(str(path))
    with caplog.at_level(logging.WARNING, logger="palomar.auth.passwd_file"):
        assert pf.lookup("bob") is None
    assert "line 2 ignored" in caplog.text and SECRET_HASH not in caplog.text
    assert pf.lookup("alice") is not None


def test_warm_indexes_a_fixed_file_so_lookups_need_no_thread(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:{PLAIN}a\n")
    driver = PasswdFileDriver(str(path))
    assert driver.lookup_nowait("alice", user_values("alice")) is None  # nothing indexed yet
    driver.warm()
    found = driver.lookup_nowait("alice", user_values("alice"))
    assert found is not None and found.password == "{PLAIN}a"


def test_many_users_and_lines_without_final_newline(tmp_path: Path) -> None:
    """Blocks of plain lines take the bulk path; a block with a comment or a bad name the careful one."""
    path = tmp_path / "users"
    lines = [f"u{i}:{{PLAIN}}p{i}" for i in range(60_000)]
    lines[30_000] = "# a comment"
    lines[40_000] = "bad name:{PLAIN}x"
    path.write_text("\n".join(lines))  # no newline after the last line
    pf = PasswdFile(str(path))
    assert pf.lookup("u0").password == "{PLAIN}p0"  # type: ignore[union-attr]
    assert pf.lookup("u29999").password == "{PLAIN}p29999"  # type: ignore[union-attr]
    assert pf.lookup("u40001").password == "{PLAIN}p40001"  # type: ignore[union-attr]
    assert pf.lookup("u59999").password == "{PLAIN}p59999"  # type: ignore[union-attr]
    assert len(pf.users()) == 59_998


class SecondsClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_changed_file_is_noticed_at_the_next_second_as_dovecot_does(tmp_path: Path) -> None:
    """`lookup_nowait` stats the file at most once a second (Dovecot's passwd_file_sync): a file
    replaced within the second of the last check is read from the next second on."""
    path = tmp_path / "users"
    path.write_text("alice:{PLAIN}a\n")
    clock = SecondsClock()
    pf = PasswdFile(str(path), clock=clock)
    pf.warm()
    assert pf.lookup_nowait("alice")[1].password == "{PLAIN}a"  # type: ignore[union-attr]
    (tmp_path / "users.new").write_text("alice:{PLAIN}b\nbob:{PLAIN}c\n")
    (tmp_path / "users.new").rename(path)
    clock.now += 0.5  # the same whole second: no stat, the open index answers
    assert pf.lookup_nowait("alice")[1].password == "{PLAIN}a"  # type: ignore[union-attr]
    if pf._reloader is not None:  # (none was started: the file was not looked at)
        pf._reloader.join(10)
    assert pf.lookup_nowait("bob") == (True, None)
    clock.now += 0.5  # the next second: the change is seen and indexed in the background
    pf.lookup_nowait("alice")
    assert pf._reloader is not None
    pf._reloader.join(10)
    assert pf.lookup_nowait("alice")[1].password == "{PLAIN}b"  # type: ignore[union-attr]
    assert pf.lookup_nowait("bob")[1].password == "{PLAIN}c"  # type: ignore[union-attr]
