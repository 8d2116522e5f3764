"""schema.cql parsing, value rules and Cassandra's uuid order."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from palomar.geodb import GeoDBError
from palomar.geodb.schema import (
    load_schema,
    normalize_value,
    parse_schema,
    schema_text,
    serialize_value,
    uuid_from_order_key,
    uuid_order_key,
)


def test_packaged_schema_has_every_table_with_its_keys() -> None:
    schema = load_schema()
    keys = {name: (t.partition_key, t.clustering) for name, t in schema.items()}
    assert keys == {
        "tags": (("id",), ()),
        "sites": (("id",), ()),
        "site_reachability": (("src_site_id",), ("dest_site_id",)),
        "backends": (("site_id",), ("id",)),
        "backend_stats": (("site_id",), ("id", "key")),
        "proxy_dest_stats": (("proxy_site_id",), ("dest_host", "proxy_host", "key")),
        "users": (("username",), ()),
        "user_sites": (("username",), ("site_id",)),
        "user_groups": (("site_id",), ("name",)),
        "group_sites": (("group_name",), ("site_id",)),
        "cluster_settings": (("section",), ("site_id", "backend_id", "setting_name")),
    }
    sites = schema["sites"]
    assert sites.columns["force_move_percentage"] == "int"
    assert sites.value_columns[:4] == ("name", "tag", "load_balancer", "status")
    assert schema["backend_stats"].columns["value"] == "double"
    assert schema["users"].columns["last_update"] == "timestamp"
    assert "create table if not exists users" in schema_text()


def test_parser_accepts_the_short_primary_key_form_and_comments() -> None:
    tables = parse_schema(
        """
        -- a comment with (parentheses); and a semicolon
        CREATE TABLE IF NOT EXISTS t (a text, b int, -- trailing comment
            c double, PRIMARY KEY (a, b));
        """
    )
    t = tables["t"]
    assert (t.partition_key, t.clustering, t.value_columns) == (("a",), ("b",), ("c",))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("create table if not exists t (a text, b blob, primary key ((a)));", "unsupported type blob"),
        ("create table if not exists t (a text, b text);", "no primary key"),
        ("create table if not exists t (a text, primary key ((a), z));", "key column z is not declared"),
        ("create table if not exists t (a text not null, primary key ((a)));", "cannot parse"),
        ("create index foo on t (a);", "no 'create table"),
    ],
)
def test_parser_rejects_what_it_does_not_understand(text: str, message: str) -> None:
    with pytest.raises(GeoDBError, match=message):
        parse_schema(text)


def test_timestamps_are_utc_milliseconds() -> None:
    given = datetime(2024, 6, 1, 12, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=-5)))
    value = normalize_value("timestamp", given, "t.c")
    assert value == datetime(2024, 6, 1, 17, 0, 0, 999_000, tzinfo=UTC)
    assert value.tzinfo is UTC
    before_epoch = datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC)
    assert serialize_value("timestamp", normalize_value("timestamp", before_epoch, "t.c")) == (-1).to_bytes(
        8, "big", signed=True
    )


def test_serialized_bytes_are_cql_wire_format() -> None:
    assert serialize_value("int", -1) == b"\xff\xff\xff\xff"
    assert serialize_value("double", 1.0) == b"\x3f\xf0" + b"\x00" * 6
    assert serialize_value("text", "é") == b"\xc3\xa9"
    u = uuid.uuid4()
    assert serialize_value("uuid", u) == u.bytes


@pytest.mark.parametrize(
    "value",
    [
        uuid.UUID(int=0),
        uuid.UUID(int=2**128 - 1),
        uuid.uuid1(),
        uuid.uuid3(uuid.NAMESPACE_DNS, "a"),
        uuid.uuid4(),
    ],
)
def test_uuid_order_key_round_trips(value: uuid.UUID) -> None:
    key = uuid_order_key(value)
    assert len(key) == 16
    assert uuid_from_order_key(key) == value


def test_uuid_order_is_version_then_time_then_bits() -> None:
    def v1(time: int, clock_seq: int = 0x8000, node: int = 0) -> uuid.UUID:
        time_fields = (time & 0xFFFFFFFF, (time >> 32) & 0xFFFF, 0x1000 | (time >> 48))
        return uuid.UUID(fields=(*time_fields, clock_seq >> 8, clock_seq & 0xFF, node))

    # time_low is the most significant byte-wise but the least significant time-wise
    early, late = v1(0xFFFF_FFFF), v1(1 << 32)
    assert early.bytes > late.bytes
    assert uuid_order_key(early) < uuid_order_key(late)
    assert uuid_order_key(v1(5, node=1)) < uuid_order_key(v1(5, node=2))
    v4 = uuid.UUID("00000000-0000-4000-8000-000000000000")
    assert uuid_order_key(late) < uuid_order_key(v4)  # version 1 sorts before version 4
    assert uuid_order_key(uuid.UUID(int=0)) < uuid_order_key(early)
    # within one non-time version: unsigned bytes
    a = uuid.UUID("7fffffff-ffff-4fff-bfff-ffffffffffff")
    b = uuid.UUID("80000000-0000-4000-8000-000000000000")
    assert uuid_order_key(a) < uuid_order_key(b)


@pytest.mark.parametrize(
    ("ctype", "value", "message"),
    [
        ("uuid", "6f1c", "expected uuid, got str"),
        ("int", 1.0, "expected int, got float"),
        ("int", -(2**31) - 1, "32-bit"),
        ("double", False, "expected double, got bool"),
        ("text", b"x", "expected text, got bytes"),
        ("timestamp", 1700000000, "expected timestamp, got int"),
    ],
)
def test_wrong_python_types_are_named(ctype: str, value: object, message: str) -> None:
    with pytest.raises(GeoDBError, match=f"users.col: .*{message}"):
        normalize_value(ctype, value, "users.col")
