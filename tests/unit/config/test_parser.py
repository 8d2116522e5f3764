"""Dovecot config syntax: the tree, locations, includes, quoting, continuations, `<file` values."""

from __future__ import annotations

from pathlib import Path

import pytest

from palomar.config import ConfigError
from palomar.config.parser import Assignment, GroupInclude, Section, parse_file


def _pairs(section: Section) -> list[tuple[str, str]]:
    return [(n.key, n.value) for n in section.children if isinstance(n, Assignment)]


def test_tree_with_nested_sections_and_locations(write) -> None:
    path = write("a.conf", """
        # comment
        cluster_local_site = DC1
        @cluster_defaults = proxy
        service imap-login {
          inet_listener imap-haproxy {
            haproxy = yes
            port = 1143
          }
        }
        passdb {
          driver = passwd-file
        }
        dict_map "shared/cluster/site/$site_id" {
          sql_table = sites
        }
        """)
    root = parse_file(path).root
    site, group, service, passdb, dict_map = root.children
    assert site == Assignment("cluster_local_site", "DC1", site.location)
    assert str(site.location) == f"{path}:2"
    assert isinstance(group, GroupInclude) and (group.name, group.value) == ("cluster_defaults", "proxy")
    assert isinstance(service, Section) and (service.kind, service.label) == ("service", "imap-login")
    listener = service.children[0]
    assert isinstance(listener, Section) and listener.title == "inet_listener imap-haproxy"
    assert _pairs(listener) == [("haproxy", "yes"), ("port", "1143")]
    assert str(listener.children[1].location) == f"{path}:7"
    assert isinstance(passdb, Section) and passdb.label is None
    assert isinstance(dict_map, Section) and dict_map.label == "shared/cluster/site/$site_id"


def test_values_comments_quotes_and_spacing(write) -> None:
    path = write("a.conf", """
        a = plain value with spaces   # trailing comment
        b=no_spaces
        c = "quoted # not a comment"  # but this is
        d = 'single \\'quoted\\''
        e =
        f = # only a comment
        g = "  kept  "
        h = event=x AND NOT error="" AND y=*
        empty_section {}
        k = value#glued comment
        """)
    root = parse_file(path).root
    assert _pairs(root) == [
        ("a", "plain value with spaces"),
        ("b", "no_spaces"),
        ("c", "quoted # not a comment"),
        ("d", "single 'quoted'"),
        ("e", ""),
        ("f", ""),
        ("g", "  kept  "),
        ("h", 'event=x AND NOT error="" AND y=*'),
        ("k", "value"),
    ]
    assert any(isinstance(n, Section) and n.kind == "empty_section" and not n.children for n in root.children)


def test_only_lf_ends_a_line(tmp_path: Path) -> None:
    """Found by fuzzing: CR, NEL, FF and U+2028 also ended lines (universal newlines and
    str.splitlines), tearing values apart and numbering lines unlike Dovecot and editors."""
    path = tmp_path / "a.conf"
    path.write_bytes("login_greeting = Hello\u2028World\x85!\r\nlog_path = a\rb\x0cc\nhostname = h\n".encode())
    root = parse_file(path).root
    assert _pairs(root) == [("login_greeting", "Hello\u2028World\x85!"), ("log_path", "a\rb\x0cc"),
                            ("hostname", "h")]
    assert [node.location.line for node in root.children] == [1, 2, 3]
    (tmp_path / "secret").write_bytes(b"p\rw\r\n")
    path.write_text("cluster_hop_secret = <secret\n")
    assert _pairs(parse_file(path).root) == [("cluster_hop_secret", "p\rw")]


def test_backslash_continues_a_value(write) -> None:
    path = write("a.conf", """
        first = one \\
                two \\
          three
        second = x
        """)
    root = parse_file(path).root
    assert _pairs(root) == [("first", "one two three"), ("second", "x")]
    assert root.children[0].location.line == 1
    assert root.children[1].location.line == 4


def test_file_value_is_read_relative_to_the_config(write, tmp_path: Path) -> None:
    write("secrets/hop", "s3cret\n")
    path = write("conf/a.conf", """
        cluster_hop_secret = <../secrets/hop
        literal = "<not-a-file"
        """)
    assert _pairs(parse_file(path).root) == [("cluster_hop_secret", "s3cret"), ("literal", "<not-a-file")]


def test_include_relative_glob_and_try(write) -> None:
    write("conf.d/20-b.conf", "b = 2\n")
    write("conf.d/10-a.conf", "a = 1\n")
    write("conf.d/skip.txt", "nope = 1\n")
    write("local.conf", "service imap-login {\n  inet_listener imap {\n    port = 0\n  }\n}\n")
    path = write("main.conf", """
        first = 0
        !include conf.d/*.conf
        !include_try missing.conf
        !include_try none.d/*.conf
        service lmtp {
          !include lmtp.inc
        }
        !include "local.conf"   # quoted names work too
        """)
    write("lmtp.inc", "process_min_avail = 2\n")
    parsed = parse_file(path)
    root = parsed.root
    assert _pairs(root) == [("first", "0"), ("a", "1"), ("b", "2")]
    assert root.children[1].location.file.endswith("conf.d/10-a.conf")
    lmtp = root.children[3]
    assert isinstance(lmtp, Section) and _pairs(lmtp) == [("process_min_avail", "2")]
    assert isinstance(root.children[4], Section) and root.children[4].label == "imap-login"
    assert [Path(f).name for f in parsed.files] == ["main.conf", "10-a.conf", "20-b.conf", "lmtp.inc", "local.conf"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a = 1\n}\n", 2, "'}' without an open section"),
        ("service x {\n  a = 1\n", 1, "section 'service x' is not closed"),
        ("a = \"unterminated\n", 1, "unterminated quoted string"),
        ("just words here\n", 1, "expected '=' or '{' after 'just'"),
        ("= value\n", 1, "expected 'key = value', 'name {' or '}'"),
        ("a = \"x\" trailing\n", 1, "unexpected text after the quoted value of a"),
        ("s {\n} junk\n", 2, "unexpected text after '}'"),
        ("s { a = 1 }\n", 1, "unexpected text after 's {'"),
        ("!frobnicate x\n", 1, "unknown directive '!frobnicate'"),
        ("!include\n", 1, "!include needs a file name"),
        ("@cluster_defaults proxy\n", 1, "expected '@group = value'"),
    ],
)
def test_syntax_errors_name_file_and_line(write, text: str, line: int, message: str) -> None:
    path = write("bad.conf", text)
    with pytest.raises(ConfigError) as info:
        parse_file(path)
    assert str(info.value).startswith(f"{path}:{line}: syntax error: ")
    assert message in str(info.value)


def test_missing_include_is_an_error_at_the_include_line(write) -> None:
    path = write("main.conf", "a = 1\n!include nothere.conf\n")
    with pytest.raises(ConfigError) as info:
        parse_file(path)
    assert str(info.value) == f"{path}:2: !include {path.parent / 'nothere.conf'}: No such file or directory"


def test_include_glob_without_match_is_an_error(write) -> None:
    path = write("main.conf", "!include conf.d/*.conf\n")
    with pytest.raises(ConfigError, match=r"main.conf:1: !include .*conf.d/\*.conf: no files match"):
        parse_file(path)


def test_include_loop_is_an_error(write) -> None:
    write("b.conf", "!include a.conf\n")
    path = write("a.conf", "!include b.conf\n")
    with pytest.raises(ConfigError, match=r"b.conf:1: !include .*a.conf: include loop"):
        parse_file(path)


def test_missing_file_value_is_an_error(write) -> None:
    path = write("a.conf", "x = 1\ncluster_hop_secret = <secret.txt\n")
    with pytest.raises(ConfigError) as info:
        parse_file(path)
    assert str(info.value) == (
        f"{path}:2: cluster_hop_secret: cannot read <{path.parent / 'secret.txt'}: No such file or directory"
    )


def test_missing_main_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.conf: No such file or directory"):
        parse_file(tmp_path / "nope.conf")


def test_syntax_error_in_included_file_names_that_file(write) -> None:
    write("inc.conf", "ok = 1\nbroken {\n")
    path = write("main.conf", "!include inc.conf\n")
    with pytest.raises(ConfigError) as info:
        parse_file(path)
    assert str(info.value).startswith(f"{path.parent / 'inc.conf'}:2: syntax error")
