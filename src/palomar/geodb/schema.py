"""The GeoDB schema as data: `schema.cql` parsed into `TableDef`s, plus per-type value rules.

Both engines derive everything from the one CQL file, so a column added there exists in
Cassandra and SQLite alike. The parser understands only the subset the file uses; anything
else is rejected loudly rather than half-understood.

Values are checked here, before any engine sees them, so a wrong call fails the same way
on every engine (a `GeoDBError` naming the table and column).
"""

from __future__ import annotations

import math
import re
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

from palomar.geodb.engine import GeoDBError

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CQL_TYPES = ("uuid", "int", "double", "text", "timestamp")


@dataclass(frozen=True)
class TableDef:
    """One CQL table: its columns in declaration order and its primary key split."""

    name: str
    columns: dict[str, str]
    partition_key: tuple[str, ...]
    clustering: tuple[str, ...]

    @property
    def key_columns(self) -> tuple[str, ...]:
        return self.partition_key + self.clustering

    @property
    def value_columns(self) -> tuple[str, ...]:
        keys = set(self.key_columns)
        return tuple(c for c in self.columns if c not in keys)


# ---------------------------------------------------------------- parsing

_CREATE = re.compile(
    r"create\s+table\s+if\s+not\s+exists\s+(\w+)\s*\((.*?)\)\s*;", re.IGNORECASE | re.DOTALL
)
_PRIMARY = re.compile(r"primary\s+key\s*\((.*)\)\s*$", re.IGNORECASE | re.DOTALL)


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    tail = "".join(cur).strip()
    if tail:
        parts.append(tail)
    return parts


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    for n in names:
        if not re.fullmatch(r"\w+", n):
            raise GeoDBError(f"schema: bad key column name {n!r}")
    return names


def _parse_primary_key(spec: str, table: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    spec = spec.strip()
    if spec.startswith("("):
        close = spec.find(")")
        if close < 0:
            raise GeoDBError(f"schema: table {table}: unbalanced primary key")
        partition = _names(spec[1:close])
        rest = spec[close + 1 :].strip().lstrip(",")
        return partition, _names(rest)
    names = _names(spec)
    return names[:1], names[1:]


def parse_schema(text: str) -> dict[str, TableDef]:
    """Parse the CQL subset of `schema.cql` into table definitions, by table name."""
    text = _strip_comments(text)
    tables: dict[str, TableDef] = {}
    for match in _CREATE.finditer(text + "\n"):
        name = match.group(1).lower()
        body = match.group(2)
        # the non-greedy body stops at the first ")" followed by ";": the closing one
        columns: dict[str, str] = {}
        partition: tuple[str, ...] = ()
        clustering: tuple[str, ...] = ()
        for item in _split_top(body):
            pk = _PRIMARY.match(item)
            if pk:
                partition, clustering = _parse_primary_key(pk.group(1), name)
                continue
            words = item.split()
            if len(words) != 2 or not re.fullmatch(r"\w+", words[0]):
                raise GeoDBError(f"schema: table {name}: cannot parse column definition {item!r}")
            col, ctype = words[0].lower(), words[1].lower()
            if ctype not in CQL_TYPES:
                raise GeoDBError(f"schema: table {name}: column {col} has unsupported type {ctype}")
            columns[col] = ctype
        if not partition:
            raise GeoDBError(f"schema: table {name} has no primary key")
        for col in partition + clustering:
            if col not in columns:
                raise GeoDBError(f"schema: table {name}: key column {col} is not declared")
        if name in tables:
            raise GeoDBError(f"schema: table {name} is declared twice")
        tables[name] = TableDef(name, columns, partition, clustering)
    if not tables:
        raise GeoDBError("schema: no 'create table if not exists' statement found")
    return tables


def schema_text() -> str:
    """The packaged `schema.cql`, as the Cassandra engine executes it."""
    return resources.files("palomar.geodb").joinpath("schema.cql").read_text(encoding="utf-8")


@cache
def _load() -> dict[str, TableDef]:
    return parse_schema(schema_text())


def load_schema() -> dict[str, TableDef]:
    """The GeoDB tables of the packaged `schema.cql` (parsed once per process)."""
    return dict(_load())


# ---------------------------------------------------------------- values per CQL type


def _type_name(value: Any) -> str:
    return type(value).__name__


def normalize_value(ctype: str, value: Any, where: str) -> Any:
    """Check a Python value against a CQL type and return it in canonical form.

    Canonical forms: uuid.UUID, int (32-bit), float, str, and a UTC-aware datetime truncated to
    milliseconds (CQL timestamps have millisecond precision, so this is what reads return).
    None passes through (a deleted or absent column). `where` names the column in errors.
    """
    if value is None:
        return None
    if ctype == "uuid":
        if isinstance(value, uuid.UUID):
            return value
    elif ctype == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT32_MIN <= value <= INT32_MAX:
                raise GeoDBError(f"{where}: int value {value} is out of the 32-bit range")
            return value
    elif ctype == "double":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif ctype == "text":
        if isinstance(value, str):
            return value
    elif ctype == "timestamp":
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise GeoDBError(f"{where}: timestamp must be timezone-aware (got a naive datetime)")
            return millis_to_datetime(datetime_to_millis(value))
    else:
        raise GeoDBError(f"{where}: unsupported CQL type {ctype}")
    raise GeoDBError(f"{where}: expected {ctype}, got {_type_name(value)}")


def datetime_to_millis(value: datetime) -> int:
    """Milliseconds since the epoch, as CQL stores a timestamp (floored, like Cassandra)."""
    delta = value - EPOCH
    return (delta.days * 86_400_000) + (delta.seconds * 1000) + (delta.microseconds // 1000)


def millis_to_datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def serialize_value(ctype: str, value: Any) -> bytes:
    """The CQL wire bytes of a canonical value.

    Cassandra breaks write-time ties between two live cells by comparing these bytes
    (unsigned); engines that emulate Cassandra use them for the same purpose.
    """
    if ctype == "uuid":
        return value.bytes
    if ctype == "int":
        return struct.pack(">i", value)
    if ctype == "double":
        return struct.pack(">d", value)
    if ctype == "text":
        return value.encode("utf-8")
    if ctype == "timestamp":
        return struct.pack(">q", datetime_to_millis(value))
    raise GeoDBError(f"unsupported CQL type {ctype}")


_MASK64 = (1 << 64) - 1


def uuid_order_key(value: uuid.UUID) -> bytes:
    """16 bytes whose unsigned byte order is Cassandra's clustering order for `uuid` columns.

    Cassandra orders uuids by version first, time-based (v1) ones by their timestamp, and
    then by the remaining bits unsigned. The SQLite engine stores uuids in this form so that
    `ORDER BY` gives the same order; `uuid_from_order_key` reverses it.
    """
    msb, lsb = value.int >> 64, value.int & _MASK64
    version = (msb >> 12) & 0xF
    if version == 1:
        hi = ((msb << 48) & _MASK64) | ((msb << 16) & 0xFFFF_0000_0000) | (msb >> 32)
    else:
        hi = (version << 60) | ((msb >> 4) & 0x0FFF_FFFF_FFFF_F000) | (msb & 0xFFF)
    return hi.to_bytes(8, "big") + lsb.to_bytes(8, "big")


def uuid_from_order_key(data: bytes) -> uuid.UUID:
    if len(data) != 16:
        raise GeoDBError(f"stored uuid has {len(data)} bytes, expected 16")
    hi, lsb = int.from_bytes(data[:8], "big"), int.from_bytes(data[8:], "big")
    version = hi >> 60
    if version == 1:
        msb = ((hi & 0xFFFF_FFFF) << 32) | (((hi >> 32) & 0xFFFF) << 16) | (hi >> 48)
    else:
        msb = ((hi << 4) & 0xFFFF_FFFF_FFFF_0000) | (version << 12) | (hi & 0xFFF)
    return uuid.UUID(int=(msb << 64) | lsb)


def clustering_order_key(ctype: str, value: Any) -> Any:
    """A sort key giving Cassandra's ascending clustering order for a canonical value."""
    if ctype == "uuid":
        return uuid_order_key(value)
    if ctype == "text":
        return value.encode("utf-8")
    return value


def values_equal(ctype: str, a: Any, b: Any) -> bool:
    """Equality as a CQL condition sees it (NaN equals itself: same bytes)."""
    if a is None or b is None:
        return a is None and b is None
    if ctype == "double" and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


# ---------------------------------------------------------------- call validation


def table_def(schema: Mapping[str, TableDef], table: str) -> TableDef:
    try:
        return schema[table]
    except (KeyError, TypeError):
        raise GeoDBError(f"unknown GeoDB table {table!r}") from None


def _check_mapping(obj: Any, what: str, table: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise GeoDBError(f"{table}: {what} must be a mapping of column names, got {_type_name(obj)}")
    return obj


def _check_known(tdef: TableDef, names: Any) -> None:
    for name in names:
        if name not in tdef.columns:
            raise GeoDBError(f"{tdef.name}: unknown column {name!r}")


def _key_values(tdef: TableDef, given: Mapping[str, Any], cols: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for col in cols:
        if col not in given:
            raise GeoDBError(f"{tdef.name}: missing key column {col!r}")
        value = given[col]
        if value is None:
            raise GeoDBError(f"{tdef.name}: key column {col!r} cannot be None")
        out[col] = normalize_value(tdef.columns[col], value, f"{tdef.name}.{col}")
    return out


def validate_key(tdef: TableDef, key: Any) -> dict[str, Any]:
    """A full primary key: every key column, nothing else."""
    key = _check_mapping(key, "key", tdef.name)
    _check_known(tdef, key)
    extra = [c for c in key if c not in tdef.key_columns]
    if extra:
        raise GeoDBError(f"{tdef.name}: {extra[0]!r} is not a key column")
    return _key_values(tdef, key, tdef.key_columns)


def validate_partition(tdef: TableDef, partition: Any) -> dict[str, Any]:
    """Exactly the partition key columns (what every non-scan read must name)."""
    partition = _check_mapping(partition, "partition key", tdef.name)
    _check_known(tdef, partition)
    extra = [c for c in partition if c not in tdef.partition_key]
    if extra:
        raise GeoDBError(
            f"{tdef.name}: {extra[0]!r} is not a partition key column "
            f"(partition key is {', '.join(tdef.partition_key)})"
        )
    missing = [c for c in tdef.partition_key if c not in partition]
    if missing:
        raise GeoDBError(
            f"{tdef.name}: the full partition key is required, missing {', '.join(repr(c) for c in missing)}"
        )
    return _key_values(tdef, partition, tdef.partition_key)


def validate_page_after(tdef: TableDef, after: Any) -> tuple[str, Any]:
    """The key column of a table that can be scanned in pages (one key column, no clustering) and
    the normalised `after` value (None: the first page)."""
    if len(tdef.key_columns) != 1:
        raise GeoDBError(f"{tdef.name}: paged scans need a table keyed by one column")
    col = tdef.key_columns[0]
    if after is None:
        return col, None
    return col, normalize_value(tdef.columns[col], after, f"{tdef.name}.{col}")


def validate_delete_key(tdef: TableDef, key: Any) -> tuple[dict[str, Any], bool]:
    """A full primary key (row delete) or exactly the partition key (partition delete).

    Returns the normalised key and whether it names a whole partition.
    """
    key = _check_mapping(key, "key", tdef.name)
    if tdef.clustering and set(key) == set(tdef.partition_key):
        return validate_partition(tdef, key), True
    _check_known(tdef, key)
    if tdef.clustering and not all(c in key for c in tdef.clustering):
        raise GeoDBError(
            f"{tdef.name}: delete needs the full primary key ({', '.join(tdef.key_columns)}) "
            f"or only the partition key ({', '.join(tdef.partition_key)})"
        )
    return validate_key(tdef, key), not tdef.clustering


def validate_clustering(tdef: TableDef, prefix: Any) -> tuple[Any, ...]:
    """A prefix of the clustering columns' values, in clustering order."""
    if isinstance(prefix, (str, bytes)) or not isinstance(prefix, Sequence):
        raise GeoDBError(f"{tdef.name}: clustering prefix must be a sequence, got {_type_name(prefix)}")
    if len(prefix) > len(tdef.clustering):
        raise GeoDBError(
            f"{tdef.name}: clustering prefix has {len(prefix)} values, the table has "
            f"{len(tdef.clustering)} clustering columns"
        )
    out = []
    for col, value in zip(tdef.clustering, prefix, strict=False):
        if value is None:
            raise GeoDBError(f"{tdef.name}: clustering value for {col!r} cannot be None")
        out.append(normalize_value(tdef.columns[col], value, f"{tdef.name}.{col}"))
    return tuple(out)


def validate_values(tdef: TableDef, values: Any, what: str = "values") -> dict[str, Any]:
    """Value columns only (key columns are addressed by the key); None means "delete/absent"."""
    values = _check_mapping(values, what, tdef.name)
    _check_known(tdef, values)
    out = {}
    for col, value in values.items():
        if col in tdef.key_columns:
            raise GeoDBError(f"{tdef.name}: {col!r} is a key column and cannot be in {what}")
        out[col] = normalize_value(tdef.columns[col], value, f"{tdef.name}.{col}")
    return out


def validate_timestamp(timestamp: Any) -> int:
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise GeoDBError(f"write timestamp must be an int (microseconds), got {_type_name(timestamp)}")
    if timestamp < 0 or timestamp >= 2**63:
        raise GeoDBError(f"write timestamp {timestamp} is out of range")
    return timestamp
