"""The Cassandra engine beyond the contract: options, configuration, errors, schema handling."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
from cassandra import ConsistencyLevel as CL
from cassandra.cluster import Cluster

from palomar.config import load
from palomar.geodb import GeoDBError, open_engine
from palomar.geodb.cassandra_engine import CassandraGeoEngine, cql_statements, parse_hosts, parse_replication
from palomar.geodb.guarded import GuardedEngine
from palomar.geodb.repository import GeoDB
from palomar.geodb.schema import load_schema, schema_text
from palomar.service_runtime import geodb_engine_options, open_geodb


def test_contact_points() -> None:
    assert parse_hosts(["127.0.0.1", "db2:9142", "[::1]:9043", "[::1]"], 9042) == [
        ("127.0.0.1", 9042), ("db2", 9142), ("::1", 9043), ("::1", 9042),
    ]
    assert parse_hosts("a, b:1", 7) == [("a", 7), ("b", 1)]
    for bad in ([], "", ["db:0"], ["db:70000"], ["db:x"], ["a b:c"]):
        with pytest.raises(GeoDBError, match="contact point"):
            parse_hosts(bad, 9042)


def test_replication_words() -> None:
    assert parse_replication("dc1:3 dc2:1") == {"dc1": 3, "dc2": 1}
    assert parse_replication(["eu-west.1:2"]) == {"eu-west.1": 2}
    assert parse_replication([]) == {}
    for bad in ("dc1", "dc1:x", ":3", "dc'1:3"):
        with pytest.raises(GeoDBError, match="bad replication"):
            parse_replication(bad)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"keyspace": "no-dashes"}, "bad keyspace name"),
        ({"keyspace": "x" * 49}, "bad keyspace name"),
        ({"local_dc": "dc'1"}, "bad datacenter name"),
        ({"replication": {"dc1": -1}}, "bad replication factor"),
        ({"replication": {"dc 1": 1}}, "bad datacenter name"),
        ({"write_consistency": "serial"}, "write consistency 'serial' is not one of"),
        ({"read_consistency": "most"}, "read consistency 'most'"),
        ({"serial_consistency": "local-quorum"}, "serial consistency 'local-quorum'"),
        ({"port": 0}, "bad port"),
        ({"colour": "red"}, "unknown option"),
    ],
)
def test_bad_options_are_clear_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(GeoDBError, match=message):
        open_engine("cassandra", hosts=["127.0.0.1"], **options)


def test_hosts_are_required() -> None:
    with pytest.raises(GeoDBError, match="'hosts' option"):
        open_engine("cassandra", keyspace="k")


def test_consistency_names_accept_both_spellings() -> None:
    engine = CassandraGeoEngine(["h"], write_consistency="EACH_QUORUM", read_consistency="local-quorum")
    assert (engine.write_cl, engine.read_cl) == (CL.EACH_QUORUM, CL.LOCAL_QUORUM)


def test_schema_file_splits_into_its_create_statements() -> None:
    statements = cql_statements(schema_text())
    assert len(statements) == len(load_schema())
    assert all(s.lower().startswith("create table if not exists") for s in statements)
    assert not any("--" in s for s in statements)


async def test_unreachable_cluster_is_one_clear_error() -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = open_engine("cassandra", hosts=[f"127.0.0.1:{port}"], connect_timeout=2)
    with pytest.raises(GeoDBError, match=r"cannot connect: no host available") as err:
        await engine.open()
    assert "\n" not in str(err.value) and f"127.0.0.1:{port}" in str(err.value)
    with pytest.raises(GeoDBError, match="is not open"):
        await engine.get("tags", {"id": uuid.uuid4()})


async def test_config_settings_reach_the_engine(cassandra: Any, tmp_path: Path) -> None:
    conf = tmp_path / "palomar.conf"
    conf.write_text(
        "cluster_geodb_driver = cassandra\n"
        "cassandra_hosts = 127.0.0.1\n"
        "cassandra_keyspace = from_config\n"
        "cassandra_local_dc = dc1\n"
        "cassandra_replication = dc1:1\n"
        "cassandra_read_consistency = local-quorum\n"
        "cassandra_serial_consistency = serial\n"
    )
    cfg = load(conf)
    driver, options = geodb_engine_options(cfg)
    assert (driver, options["replication"], options["local_dc"]) == ("cassandra", {"dc1": 1}, "dc1")
    geodb = await open_geodb(cfg)
    try:
        assert isinstance(geodb, GeoDB)
        assert isinstance(geodb.engine, GuardedEngine)  # a service's calls are bounded (geodb-outage.md)
        engine = geodb.engine.inner
        assert isinstance(engine, CassandraGeoEngine)
        assert (engine.keyspace, engine.read_cl, engine.serial_cl) == ("from_config", CL.LOCAL_QUORUM, CL.SERIAL)
        key = {"id": uuid.uuid4()}
        assert (await engine.insert_if_absent("tags", key, {"tag": "t"})).applied
        row = await engine.get("tags", key)
        assert row is not None and row["tag"] == "t"
    finally:
        await geodb.close()


async def test_reopening_adds_columns_missing_from_an_older_schema(cassandra: Any) -> None:
    keyspace = "evolving"
    first = CassandraGeoEngine(["127.0.0.1"], keyspace=keyspace, local_dc="dc1", replication={"dc1": 1})
    await first.open()
    await first.close()
    cluster = Cluster(["127.0.0.1"], protocol_version=5, max_schema_agreement_wait=0)  # see _run_ddl
    try:  # an older palomar's table: without a column that schema.cql declares today
        session = await asyncio.to_thread(cluster.connect)
        await asyncio.to_thread(session.execute, f'ALTER TABLE "{keyspace}"."tags" DROP "tag"')
    finally:
        await asyncio.to_thread(cluster.shutdown)
    second = CassandraGeoEngine(["127.0.0.1"], keyspace=keyspace, local_dc="dc1", replication={"dc1": 1})
    await second.open()
    try:
        key = {"id": uuid.uuid4()}
        await second.upsert("tags", key, {"tag": "back"})
        row = await second.get("tags", key)
        assert row is not None and row["tag"] == "back"
    finally:
        await second.close()


async def test_many_result_pages_are_all_read(cassandra: Any) -> None:
    engine = CassandraGeoEngine(["127.0.0.1"], keyspace="contract", local_dc="dc1", replication={"dc1": 1})
    await engine.open()
    try:
        section = "paging-" + uuid.uuid4().hex
        names = [f"n{i:05d}" for i in range(5300)]  # more than the driver's 5000-row page
        zero = uuid.UUID(int=0)
        for start in range(0, len(names), 500):
            await asyncio.gather(*(
                engine.upsert("cluster_settings",
                              {"section": section, "site_id": zero, "backend_id": zero, "setting_name": n},
                              {"setting_value": n})
                for n in names[start:start + 500]
            ))
        rows = await engine.select("cluster_settings", {"section": section})
        assert [r["setting_name"] for r in rows] == names
        assert all(r["setting_value"] == r["setting_name"] for r in rows)
    finally:
        await engine.close()
