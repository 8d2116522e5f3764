"""Lines of a user import file (`palomar cluster user import`) turned into records, or into the
reason a line is refused, with its line number. Pure: no GeoDB, no files.

Two formats, each with the columns ``username`` (required), ``site`` (the preferred site's
name) and ``group``:

* CSV: fields in that order, or in the order a first line naming them says
  (``username,group``); empty fields are absent; blank lines and lines starting with ``#`` are
  skipped.
* JSON lines: one object per line, ``{"username": "u", "site": "east", "group": "g"}``; a
  missing key or ``null`` is absent.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from palomar.cluster import validation

COLUMNS = ("username", "site", "group")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class ImportRecord:
    lineno: int
    username: str
    site: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class BadLine:
    lineno: int
    reason: str


def format_for(filename: str) -> str | None:
    """The format a file name's extension implies, or None."""
    dot = filename.rfind(".")
    return FORMATS.get(filename[dot:].lower()) if dot >= 0 else None


def parse(lines: Iterable[str], fmt: str) -> Iterator[ImportRecord | BadLine]:
    """Records in file order; ``lines`` decoded with ``errors="surrogateescape"``."""
    return csv_records(lines) if fmt == "csv" else jsonl_records(lines)


def csv_records(lines: Iterable[str]) -> Iterator[ImportRecord | BadLine]:
    reader = csv.reader(lines, strict=True)
    columns = COLUMNS
    while True:
        lineno = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield BadLine(lineno, f"not CSV: {exc}")
            continue
        fields = [f.strip() for f in row]
        if not any(fields) or fields[0].startswith("#"):
            continue
        if lineno == 1 and fields[0].lower() == "username":
            named = tuple(f.lower() for f in fields)
            unknown = [f for f in named if f not in COLUMNS]
            if unknown or len(set(named)) != len(named):
                yield BadLine(lineno, f"header must name distinct columns among {', '.join(COLUMNS)}")
                return
            columns = named
            continue
        if len(fields) > len(columns):
            yield BadLine(lineno, f"{len(fields)} fields, at most {len(columns)} expected ({','.join(columns)})")
            continue
        yield _record(lineno, dict(zip(columns, fields, strict=False)))


def jsonl_records(lines: Iterable[str]) -> Iterator[ImportRecord | BadLine]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            yield BadLine(lineno, f"not JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(obj, dict):
            yield BadLine(lineno, "not a JSON object")
            continue
        unknown = sorted(set(obj) - set(COLUMNS))
        if unknown:
            yield BadLine(lineno, f"unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(COLUMNS)}")
            continue
        wrong = [k for k, v in obj.items() if v is not None and not isinstance(v, str)]
        if wrong:
            yield BadLine(lineno, f"{wrong[0]} must be a string")
            continue
        yield _record(lineno, obj)


def _record(lineno: int, values: dict[str, str | None]) -> ImportRecord | BadLine:
    username, site, group = (values.get(c) or None for c in COLUMNS)
    if username is None:
        return BadLine(lineno, "no username")
    for value, what in ((username, "user name"), (site, "site name"), (group, "group name")):
        if value is None:
            continue
        if any("\udc80" <= c <= "\udcff" for c in value):
            return BadLine(lineno, f"{what} is not valid UTF-8")
        try:
            validation.entity_name(value, what)
        except validation.ValidationError as exc:
            return BadLine(lineno, str(exc))
    return ImportRecord(lineno, username, site, group)
