"""Import file lines to records or refusals (`cluster.user_import`), table-tested."""

from __future__ import annotations

import pytest

from palomar.cluster.user_import import BadLine, ImportRecord, format_for, parse


def records(text: str, fmt: str) -> list[ImportRecord | BadLine]:
    return list(parse(text.splitlines(keepends=True), fmt))


@pytest.mark.parametrize(("text", "expected"), [
    ("alice\n", [ImportRecord(1, "alice")]),
    ("alice,east,g1\nbob,,g2\n", [ImportRecord(1, "alice", "east", "g1"), ImportRecord(2, "bob", None, "g2")]),
    ("username,group\nalice,g1\n", [ImportRecord(2, "alice", None, "g1")]),
    ("# comment\n\n alice , east \n", [ImportRecord(3, "alice", "east")]),
    ('"al,ice",east\n', [ImportRecord(1, "al,ice", "east")]),
    ("alice,east,g1,extra\n", [BadLine(1, "4 fields, at most 3 expected (username,site,group)")]),
    ("a b,east\n", [BadLine(1, "invalid user name 'a b': must be 1-255 characters without spaces or '/'")]),
    (",east,g1\n", [BadLine(1, "no username")]),
    ("username,nosuch\nalice,x\n", [BadLine(1, "header must name distinct columns among username, site, group")]),
    ("alice,e\udcff\n", [BadLine(1, "site name is not valid UTF-8")]),
    ('"unterminated\nbob\n', [BadLine(1, "not CSV: unexpected end of data")]),
])
def test_csv(text: str, expected: list[ImportRecord | BadLine]) -> None:
    assert records(text, "csv") == expected


@pytest.mark.parametrize(("text", "expected"), [
    ('{"username": "alice", "site": "east", "group": "g1"}\n', [ImportRecord(1, "alice", "east", "g1")]),
    ('\n{"username": "bob", "group": null}\n', [ImportRecord(2, "bob")]),
    ('{"username": "bob"\n', [BadLine(1, "not JSON: Expecting ',' delimiter at column 19")]),
    ('["bob"]\n', [BadLine(1, "not a JSON object")]),
    ('{"username": "bob", "quota": 1}\n', [BadLine(1, "unknown key(s) 'quota'; known: username, site, group")]),
    ('{"username": 7}\n', [BadLine(1, "username must be a string")]),
    ('{"site": "east"}\n', [BadLine(1, "no username")]),
    ('{"username": "x/y"}\n', [BadLine(1, "invalid user name 'x/y': must be 1-255 characters without spaces or '/'")]),
])
def test_jsonl(text: str, expected: list[ImportRecord | BadLine]) -> None:
    assert records(text, "jsonl") == expected


def test_lines_after_a_bad_one_keep_their_numbers() -> None:
    got = records('{"username": "a"}\nnot json\n{"username": "c"}\n', "jsonl")
    assert [r.lineno for r in got] == [1, 2, 3]
    assert isinstance(got[1], BadLine)


@pytest.mark.parametrize(("name", "fmt"), [("u.csv", "csv"), ("U.CSV", "csv"), ("u.jsonl", "jsonl"),
                                           ("u.ndjson", "jsonl"), ("u.json", "jsonl"), ("u.txt", None), ("-", None)])
def test_format_from_extension(name: str, fmt: str | None) -> None:
    assert format_for(name) == fmt
