"""One site as its own process: a real Dovecot, a proxy and a backend (tests/inprocess_cluster.py) on
the Cassandra GeoDB through the guarded engine the services use (`service_runtime.open_geodb`).

Started by the outage tests with `ip netns exec NAMESPACE python site_process.py CONFIG_JSON` so the
site lives in its datacenter's network namespace. Prints one JSON line with its listeners once it
serves, logs to `root/site.log`, and stops when its stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from functools import partial
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2])]  # tests/: inprocess_cluster

from inprocess_cluster import start_cluster  # noqa: E402
from palomar.cluster.breaker import Breaker  # noqa: E402
from palomar.devcluster.dovecot import DovecotInstance, backend_params  # noqa: E402
from palomar.devcluster.smtp_sink import SmtpSink  # noqa: E402
from palomar.geodb.cassandra_engine import CassandraGeoEngine, parse_replication  # noqa: E402
from palomar.geodb.engine import GeoDBError  # noqa: E402
from palomar.geodb.guarded import DEFAULT_CALL_TIMEOUT, GuardedEngine  # noqa: E402
from palomar.geodb.repository import GeoDB  # noqa: E402

OPEN_ATTEMPTS = 3
"""A node of a cluster that has just formed can still flap in the driver's view (seen once: the
first schema statement failed with "Host has been marked down or removed")."""
STALE_MAX = 3600
"""`cluster_geodb_stale_max` (its default, one hour)."""


async def serve(cfg: dict) -> None:
    root = Path(cfg["root"])
    sink = SmtpSink(cfg["dovecot"]).start()  # where Dovecot's submission service relays
    dovecot = DovecotInstance(backend_params(cfg["site"], cfg["dovecot"], root, Path(cfg["mail_root"]),
                                             relay=(sink.host, sink.port)))
    dovecot.start()
    make_engine = partial(CassandraGeoEngine, cfg["hosts"], keyspace=cfg["keyspace"], local_dc=cfg["local_dc"],
                          replication=parse_replication(cfg["replication"]))
    try:
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            try:
                c = await start_cluster(root / "site", backend_host=cfg["dovecot"], dovecot=dovecot,
                                        make_engine=make_engine, site_name=cfg["site"], listen=cfg["listen"],
                                        users=cfg["users"])
                break
            except GeoDBError as exc:  # as a supervisor restarts a service that could not start
                if attempt == OPEN_ATTEMPTS:
                    raise
                logging.warning("site %s could not start (%s); starting again", cfg["site"], exc)
        # What `palomar proxy` / `palomar backend` do with the default settings.
        c.proxy.router.geodb = GeoDB(GuardedEngine(c.proxy_engine, call_timeout=DEFAULT_CALL_TIMEOUT,
                                                   breaker=Breaker()))
        c.proxy.router.max_stale = c.proxy.router.cache.stale_keep_secs = STALE_MAX
        c.backend.geodb = GeoDB(GuardedEngine(c.backend_engine, call_timeout=DEFAULT_CALL_TIMEOUT,
                                              breaker=Breaker()))
        c.backend.stale_max = c.backend.localdb.stale_keep_secs = STALE_MAX
        print(json.dumps({"listeners": c.listeners}), flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the test closes our stdin
        await c.stop()
    finally:
        dovecot.stop()
        sink.stop()


def main() -> None:
    cfg = json.loads(sys.argv[1])
    logging.basicConfig(filename=str(Path(cfg["root"]) / "site.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("cassandra").setLevel(logging.WARNING)
    asyncio.run(serve(cfg))


if __name__ == "__main__":
    main()
