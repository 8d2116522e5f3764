"""Rendering admin command results: aligned tables for people, JSON for scripts.

Commands build plain records (dicts of str/int/bool/None/UUID/list) once and hand them here,
so the table and the JSON always show the same fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

Record = Mapping[str, Any]


def _json_default(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def to_json(data: Any) -> str:
    return json.dumps(data, default=_json_default, indent=2, sort_keys=False)


def cell(value: Any) -> str:
    """One table cell: empty for None, yes/no for booleans, comma lists for sequences."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def table(records: Sequence[Record], columns: Sequence[str]) -> str:
    """Left-aligned columns under an upper-case header; no trailing spaces."""
    header = [c.upper() for c in columns]
    rows = [[cell(r.get(c)) for c in columns] for r in records]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def fields(record: Record) -> str:
    """`key: value` lines with the values aligned, for status verbs."""
    if not record:
        return ""
    width = max(len(k) for k in record)
    return "\n".join(f"{(k + ':').ljust(width + 1)} {cell(v)}" for k, v in record.items())


def micros_to_iso(micros: int | None) -> str | None:
    """A GeoDB write time as an ISO-8601 UTC timestamp (seconds precision)."""
    if micros is None:
        return None
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC).isoformat(timespec="seconds")
