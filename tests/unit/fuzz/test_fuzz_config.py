"""Fuzzing the configuration parser and loader on text: whatever an operator (or a broken
editor) writes, the answer is a Config or a ConfigError naming file:line, never a traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from palomar.config import settings as reg
from palomar.config.errors import ConfigError
from palomar.config.loader import load
from palomar.config.parser import parse_file
from unit.fuzz.hostile import more


def _relative(text: str) -> str:
    """No `/` in random text: `<file` and `!include` must not wander off the test's directory."""
    return text.replace("/", "_")


NAMES = st.one_of(st.sampled_from(list(reg.GLOBAL)), st.sampled_from(["passdb", "userdb", "service", "dict_server",
                                                                       "inet_listener", "unix_listener", "dict",
                                                                       "fields", "driver", "port", "unknown_x"]))
VALUES = st.one_of(
    st.sampled_from(["", "yes", "no", "0", "1", "-1", "99999999999999999999999", "10s", "1 min", "5M", "1e3", "nan",
                     "127.0.0.1", "::1", "*", "127.0.0.1/33", "proxy", "backend", "sqlite", "cassandra",
                     "passwd-file", "a b c", "$ENV:HOME", "%{user}", "\\", "#", "# hidden", "x" * 300, "\t",
                     "0x10", "2130706433", "1.2.3", "10.0.0.0/8 ::1/128", "256.0.0.1", "65536", "a,b", ",",
                     "<missing.txt", "<secret.txt", "<", "< ", "quorum", "LOCAL_QUORUM", "\u00e9", "\u2028",
                     "\x85", "\0", "\x0c"]),
    st.text(max_size=20).map(lambda text: _relative(text)),
)


@st.composite
def quoted(draw: st.DrawFn, value: str) -> str:
    quote = draw(st.sampled_from(['"', "'", ""]))
    if not quote:
        return value
    body = value.replace("\\", "\\\\").replace(quote, "\\" + quote) if draw(st.booleans()) else value
    return quote + body + (quote if draw(st.sampled_from([True, True, False])) else "")


@st.composite
def config_line(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["assign", "assign", "assign", "open", "close", "group", "include", "raw"]))
    if kind == "assign":
        return f"{draw(NAMES)} = {draw(quoted(draw(VALUES)))}"
    if kind == "open":
        label = draw(st.sampled_from(["", " imap-login", " lmtp", " imap", " cluster-geodb", ' "a b"', " x{",
                                      " cluster", " doveadm", " unknown"]))
        return f"{draw(NAMES)}{label} {{" + draw(st.sampled_from(["", " }", " # c", " x"]))
    if kind == "close":
        return "}" + draw(st.sampled_from(["", " # c", " x", "}"]))
    if kind == "group":
        return "@" + draw(st.sampled_from(["cluster_defaults", "metric_defaults", "x", ""])) + " = " + draw(
            quoted(draw(st.sampled_from(["proxy", "backend", "x", ""]))))
    if kind == "include":
        return "!" + draw(st.sampled_from(["include", "include_try", "includ"])) + " " + draw(
            st.sampled_from(["missing.conf", "other.conf", "*.conf", "sub/*.conf", "", '"other.conf"', "self.conf"]))
    return draw(st.text(max_size=30).map(_relative))


def config_text() -> st.SearchStrategy[str]:
    ends = st.sampled_from(["\n", "\n", "\r\n", " \\\n", "\r", "\x0b", "\u2028", "\x85"])
    return st.lists(st.tuples(config_line(), ends), max_size=14).map(lambda lines: "".join(a + b for a, b in lines))


def check(text: str, other: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "secret.txt").write_text("s3cret\n")
        (directory / "other.conf").write_text(other)
        main = directory / "self.conf"
        main.write_text(text, encoding="utf-8", errors="surrogatepass")
        lines = text.count("\n") + 1  # what an editor (and Dovecot) counts as lines
        for step in (parse_file, load):
            try:
                step(main)
            except ConfigError as exc:
                assert exc.issues and all(str(issue) for issue in exc.issues)
                for issue in exc.issues:
                    if issue.location is not None and issue.location.file == str(main):
                        assert issue.location.line <= lines, (issue, lines)


@given(text=config_text(), other=config_text())
@more(2)
def test_structured_text_loads_or_names_its_errors(text, other):
    check(text, other)


@given(text=st.text(max_size=200).map(lambda text: _relative(text)))
def test_any_text_loads_or_names_its_errors(text):
    check(text, "")
