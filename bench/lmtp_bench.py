"""LMTP delivery benchmark (issues 5 and 11): deliveries per second and CPU per delivery, Dovecot's LMTP
directly against the same delivery through a palomar proxy and the palomar backend services, and
through Dovecot CE's own LMTP proxy.

One LocalCluster (two Dovecot CE backends sharing one mail root, a `palomar backend` in front of
each, one `palomar proxy`) and a Dovecot CE LMTP proxy (`lmtp_proxy = yes`, a passdb answering
`proxy=y host= port=` with the backend palomar placed the user on). Load: `--concurrency` MTA
connections, each sending transactions back to back for `--seconds` (PIPELINING: MAIL, RCPTs and
DATA in one write), with one recipient or with ten (through a proxy: five on each backend, so every
transaction fans out). Measured: transactions and recipient deliveries per second, and CPU seconds
per delivered recipient of each proxy tier and of Dovecot. Results go to the `## LMTP delivery
(issue 5)` section of docs/benchmarks.md only; its summary figures are also embedded there as a
comment for the IMAP section's summary table (`bench/summary.py`).

    .venv/bin/python bench/lmtp_bench.py [--seconds 10] [--concurrency 8] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dovecot_proxy import DovecotProxy, Route
from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.net import free_port
from proctree import CpuMeter
from report import load_average, machine_rows, table, write_section
from summary import embed_figures, lmtp_figures

HEADING = "LMTP delivery (issue 5)"
BODY = b"".join(f"Line {i:03d} of the benchmark message, long enough to look like mail.\r\n".encode()
                for i in range(60))
"""About 4 kB: a typical small message."""
DOVECOT_PROXY_HOST = "127.0.0.22"
FAN_OUT = 10
"""Recipients per transaction in the fan-out rows, half on each backend."""
TIERS = {"direct": (), "palomar": ("proxy", "backends"), "dovecot-proxy": ("dovecot proxy",)}
"""The processes that make up each path's proxy tier (Dovecot itself is counted apart)."""
PATH_NAMES = {"direct": "Dovecot LMTP directly", "palomar": "palomar proxy + backend service",
              "dovecot-proxy": "Dovecot CE LMTP proxy"}


def log(text: str) -> None:
    print(f"[lmtp-bench] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Result:
    path: str
    recipients: int
    transactions: int
    deliveries: int
    failures: int
    seconds: float
    cpu: dict[str, float]

    @property
    def per_second(self) -> float:
        return self.deliveries / self.seconds

    def cpu_ms_per_delivery(self, name: str) -> float:
        return 1000 * self.cpu[name] / self.deliveries if self.deliveries else float("nan")

    def tier_ms_per_delivery(self) -> float:
        """CPU of the path's proxy tier per delivery (0 for the direct path, which has none)."""
        return sum(self.cpu_ms_per_delivery(name) for name in TIERS[self.path])


class LmtpError(Exception):
    pass


async def read_reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise LmtpError("connection closed")
        if line[3:4] != b"-":
            return int(line[:3])


async def mta(host: str, port: int, recipients: list[str], until: float, counts: list[int]) -> None:
    """One MTA connection: transactions back to back until `until`; counts = [transactions, ok, failed]."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await read_reply(reader)
        writer.write(b"LHLO bench.example.test\r\n")
        if await read_reply(reader) != 250:
            raise LmtpError("LHLO refused")
        envelope = b"MAIL FROM:<bench@example.org>\r\n" + b"".join(
            f"RCPT TO:<{rcpt}>\r\n".encode() for rcpt in recipients) + b"DATA\r\n"
        while time.monotonic() < until:
            message = (f"Subject: bench {counts[0]}\r\nFrom: bench@example.org\r\n\r\n").encode() + BODY + b".\r\n"
            writer.write(envelope)
            codes = [await read_reply(reader) for _ in range(len(recipients) + 2)]
            if codes[-1] != 354:
                raise LmtpError(f"envelope refused: {codes}")
            writer.write(message)
            replies = [await read_reply(reader) for _ in range(len(recipients))]
            counts[0] += 1
            counts[1] += sum(1 for code in replies if code == 250)
            counts[2] += sum(1 for code in replies if code != 250)
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()


async def load(host: str, port: int, recipients: list[list[str]], concurrency: int, seconds: float
               ) -> tuple[int, ...]:
    """`recipients[i % len(recipients)]` for connection i: connections write to different mailboxes
    (deliveries into one mailbox serialise on its lock, in Dovecot as in any delivery agent)."""
    until = time.monotonic() + seconds
    counts = [[0, 0, 0] for _ in range(concurrency)]
    await asyncio.gather(*(mta(host, port, recipients[i % len(recipients)], until, c) for i, c in enumerate(counts)))
    return tuple(sum(c[i] for c in counts) for i in range(3))


def placement(cluster: LocalCluster) -> dict[str, list[str]]:
    """backend host -> its users, as the GeoDB has them (two CLI calls, not one per user)."""
    groups = {g["name"]: g["backend"] for g in json.loads(cluster.cluster("--json", "group", "list").stdout)}
    placed: dict[str, list[str]] = {}
    for user in json.loads(cluster.cluster("--json", "user", "list").stdout):
        if groups.get(user["group"]):
            placed.setdefault(groups[user["group"]], []).append(user["username"])
    return placed


def fan_out(first: list[str], second: list[str], size: int) -> list[list[str]]:
    """Recipient lists of `size` users, half from each backend, alternating, no user twice in a list."""
    half = size // 2
    return [[user for pair in zip(first[i:i + half], second[i:i + half], strict=True) for user in pair]
            for i in range(0, min(len(first), len(second)) - half + 1, half)]


def run(cluster: LocalCluster, dproxy: DovecotProxy, path: str, recipients: list[list[str]], args) -> Result:
    proxy = cluster.proxies[0]
    if path == "direct":
        node = cluster.backends[0]
        host, port = node.dovecot.params.listen, node.dovecot.params.lmtp_port
    elif path == "dovecot-proxy":
        host, port = dproxy.listen, dproxy.port
    else:
        host, port = proxy.host, proxy.lmtp
    roots = {
        "proxy": [proxy.proc.pid],
        "backends": [node.proc.pid for node in cluster.backends],
        "dovecot proxy": [dproxy.pid],
        "dovecot": [node.dovecot.pid for node in cluster.backends],
    }
    asyncio.run(load(host, port, recipients, 2, 1.0))  # warm-up: connections, caches, Dovecot processes
    meter = CpuMeter(roots).start()
    started = time.monotonic()
    transactions, ok, failed = asyncio.run(load(host, port, recipients, args.concurrency, args.seconds))
    seconds = time.monotonic() - started
    result = Result(path, len(recipients[0]), transactions, ok, failed, seconds, meter.stop())
    log(f"{path} x{len(recipients[0])}: {result.per_second:.0f} deliveries/s, {failed} failed, "
        f"proxy tier {result.tier_ms_per_delivery():.2f} ms, dovecot {result.cpu_ms_per_delivery('dovecot'):.2f} ms "
        "per delivery")
    return result


def render(results: list[Result], args, load_before: str, load_after: str) -> str:
    rows = []
    for r in results:
        palomar = r.path == "palomar"
        rows.append([
            PATH_NAMES[r.path], r.recipients, f"{r.transactions / r.seconds:.0f}", f"{r.per_second:.0f}", r.failures,
            f"{r.cpu_ms_per_delivery('proxy'):.2f}" if palomar else "-",
            f"{r.cpu_ms_per_delivery('backends'):.2f}" if palomar else "-",
            f"{r.tier_ms_per_delivery():.2f}" if r.path != "direct" else "-",
            f"{r.cpu_ms_per_delivery('dovecot'):.2f}",
        ])
    figures = lmtp_figures([(r.path, r.recipients, r.tier_ms_per_delivery(), r.cpu_ms_per_delivery("dovecot"))
                            for r in results])
    figures["run"] = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "load": load_before}
    return f"""`bench/lmtp_bench.py --seconds {args.seconds:g} --concurrency {args.concurrency}`: {args.concurrency} MTA
connections deliver a ~4 kB message in back-to-back transactions (PIPELINING), for {args.seconds:g} s per
row, to one recipient or to {FAN_OUT}; connections write to different mailboxes ({args.users} users). Directly,
every transaction goes to backend1's Dovecot LMTP; through palomar, to the proxy's plain LMTP listener;
through Dovecot CE's LMTP proxy (`bench/dovecot_proxy.py`: `lmtp_proxy = yes`, its passwd-file passdb
answering `proxy=y host= port=` with the backend palomar placed the user on, Dovecot's default one
process per connection) to its listener. Through either proxy the {FAN_OUT} recipients are {FAN_OUT // 2} users
on each backend, so each transaction fans out over two backends. A delivery is one recipient that got
`250`. CPU is user+system time of the process trees during the run, divided by the deliveries; "proxy
tier" is the palomar proxy and both backend services for palomar, the whole Dovecot LMTP proxy tree for
Dovecot. The load generator runs on the same cores.

{table(["path", "recipients", "transactions/s", "deliveries/s", "failed", "palomar proxy CPU ms/delivery",
        "palomar backend services CPU ms/delivery", "proxy tier CPU ms/delivery", "Dovecot backends CPU ms/delivery"],
       rows)}

{embed_figures(figures)}

How it goes: the proxy keeps one hop per backend for the whole MTA connection (its LMTP session with the
backend service is reused across transactions), so a transaction costs a passdb lookup and a routing
decision per recipient (cached LocalDB reads), the envelope on each involved hop (pipelined RCPTs go to a
backend as one batch, in one write), and the message streamed once per backend. The backend service
checks ownership of a batch's recipients with one fresh read of the GeoDB (one job on the SQLite engine's
worker thread) and streams the message on to Dovecot over its own LMTP connection
(the batch's RCPTs again in one write). That is two more LMTP parsers in Python per delivery, and each
transaction still costs three writes and three wake-ups per hop in each direction: palomar's processes
together spend more CPU per delivery than Dovecot's own delivery, and on a machine with few cores,
shared with the load generator as here, that CPU bounds the rate through palomar. Where the CPU goes:
docs/design/login-path-cost.md, "LMTP CPU, profiled". Load average before/after: {load_before} / {load_after}.

Machine:

{table(["", ""], machine_rows())}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="LMTP delivery benchmark: direct Dovecot vs through palomar.")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per row (default 10)")
    parser.add_argument("--concurrency", type=int, default=8, help="MTA connections (default 8)")
    parser.add_argument("--users", type=int, default=60, help="users in the cluster (default 60)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1 or args.users < 2 * FAN_OUT:
        parser.error(f"--seconds must be positive, --concurrency at least 1, --users at least {2 * FAN_OUT}")
    if os.geteuid() != 0:
        print("lmtp_bench: needs root (Dovecot backends and proxy, loopback addresses)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="palomar-lmtp-bench-"))
    root.chmod(0o755)
    cluster = LocalCluster(root / "cluster", users_count=args.users, proxies_count=1, password_scheme="PLAIN",
                           proxy_settings={"*": ("cluster_lmtp_max_mail_size = 64M",)})
    dproxy = DovecotProxy(root / "dovecot-lmtp-proxy", DOVECOT_PROXY_HOST, free_port(DOVECOT_PROXY_HOST), [],
                          lmtp=True)
    results: list[Result] = []
    load_before = load_average()
    try:
        log("starting the cluster")
        cluster.start()
        everyone = [u.name for u in cluster.users]
        asyncio.run(load(cluster.proxies[0].host, cluster.proxies[0].lmtp, [everyone], 1, 0.1))  # place everyone
        placed = placement(cluster)
        if len(placed) < 2:
            raise SystemExit("the demo users all landed on one backend; rerun")
        first, second = (users for _, users in sorted(placed.items()))
        multi = fan_out(first, second, FAN_OUT)
        if not multi:
            raise SystemExit(f"fewer than {FAN_OUT // 2} users on one backend; rerun")
        lmtp_ports = {node.host: node.dovecot.params.lmtp_port for node in cluster.backends}
        dproxy.routes = [Route(user, "", host, lmtp_ports[host]) for host, users in placed.items() for user in users]
        log("starting the Dovecot CE LMTP proxy")
        dproxy.start()
        single = [[user] for user in everyone]
        for recipients in (single, multi):
            for path in ("direct", "palomar", "dovecot-proxy"):  # targets alternate
                results.append(run(cluster, dproxy, path, recipients, args))
    finally:
        dproxy.stop()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    write_section(args.out, HEADING, render(results, args, load_before, load_average()))
    log(f"wrote '## {HEADING}' in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
