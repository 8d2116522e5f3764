"""LMTP delivery benchmark (issue 5): deliveries per second and CPU per delivery, Dovecot's LMTP
directly against the same delivery through a palomar proxy and the palomar backend services.

One LocalCluster (two Dovecot CE backends sharing one mail root, a `palomar backend` in front of
each, one `palomar proxy`). Load: `--concurrency` MTA connections, each sending transactions back
to back for `--seconds` (PIPELINING: MAIL, RCPTs and DATA in one write), with one recipient or with
four (through palomar: two on each backend, so every transaction fans out). Measured: transactions
and recipient deliveries per second, and CPU seconds per delivered recipient of the proxy, of the
two backend services and of Dovecot. Results go to the `## LMTP delivery (issue 5)` section of
docs/benchmarks.md only.

    .venv/bin/python bench/lmtp_bench.py [--seconds 10] [--concurrency 8] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from palomar.devcluster.cluster import LocalCluster
from proctree import CpuMeter
from report import load_average, machine_rows, table, write_section

HEADING = "LMTP delivery (issue 5)"
BODY = b"".join(f"Line {i:03d} of the benchmark message, long enough to look like mail.\r\n".encode()
                for i in range(60))
"""About 4 kB: a typical small message."""


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
    groups = {g["name"]: g["backend"] for g in json.loads(cluster.cluster("--json", "group", "list").stdout)}
    placed: dict[str, list[str]] = {}
    for user in cluster.users:
        group = json.loads(cluster.cluster("--json", "user", "status", user.name).stdout)["group"]
        placed.setdefault(groups[group], []).append(user.name)
    return placed


def run(cluster: LocalCluster, path: str, recipients: list[list[str]], args) -> Result:
    proxy = cluster.proxies[0]
    if path == "direct":
        node = cluster.backends[0]
        host, port = node.dovecot.params.listen, node.dovecot.params.lmtp_port
    else:
        host, port = proxy.host, proxy.lmtp
    roots = {
        "proxy": [proxy.proc.pid],
        "backends": [node.proc.pid for node in cluster.backends],
        "dovecot": [node.dovecot.pid for node in cluster.backends],
    }
    asyncio.run(load(host, port, recipients, 2, 1.0))  # warm-up: connections, caches, Dovecot processes
    meter = CpuMeter(roots).start()
    started = time.monotonic()
    transactions, ok, failed = asyncio.run(load(host, port, recipients, args.concurrency, args.seconds))
    seconds = time.monotonic() - started
    result = Result(path, len(recipients[0]), transactions, ok, failed, seconds, meter.stop())
    log(f"{path} x{len(recipients[0])}: {result.per_second:.0f} deliveries/s, {failed} failed, "
        f"proxy {result.cpu_ms_per_delivery('proxy'):.2f} ms, backends {result.cpu_ms_per_delivery('backends'):.2f} ms"
        f", dovecot {result.cpu_ms_per_delivery('dovecot'):.2f} ms per delivery")
    return result


def render(results: list[Result], args, load_before: str, load_after: str) -> str:
    rows = []
    for r in results:
        palomar = r.path != "direct"
        rows.append([
            "Dovecot LMTP directly" if not palomar else "palomar proxy + backend service",
            r.recipients, f"{r.transactions / r.seconds:.0f}", f"{r.per_second:.0f}", r.failures,
            f"{r.cpu_ms_per_delivery('proxy'):.2f}" if palomar else "-",
            f"{r.cpu_ms_per_delivery('backends'):.2f}" if palomar else "-",
            f"{r.cpu_ms_per_delivery('proxy') + r.cpu_ms_per_delivery('backends'):.2f}" if palomar else "-",
            f"{r.cpu_ms_per_delivery('dovecot'):.2f}",
        ])
    return f"""`bench/lmtp_bench.py --seconds {args.seconds:g} --concurrency {args.concurrency}`: {args.concurrency} MTA
connections deliver a ~4 kB message in back-to-back transactions (PIPELINING), for {args.seconds:g} s per
row, to one recipient or to four; each connection writes to its own mailboxes (16 users). Directly, every transaction goes to backend1's Dovecot LMTP; through
palomar, to the proxy's plain LMTP listener, and the four recipients are two users on each backend, so
each transaction fans out over two hops. A delivery is one recipient that got `250`. CPU is user+system
time of the process trees during the run, divided by the deliveries; the load generator runs on the
same cores.

{table(["path", "recipients", "transactions/s", "deliveries/s", "failed", "proxy CPU ms/delivery",
        "backend services CPU ms/delivery", "palomar CPU ms/delivery", "Dovecot CPU ms/delivery"], rows)}

How it goes: the proxy keeps one hop per backend for the whole MTA connection (its LMTP session with the
backend service is reused across transactions), so a transaction costs a passdb lookup and a routing
decision per recipient (cached LocalDB reads), the envelope on each involved hop, and the message
streamed once per backend. The backend service checks ownership per recipient (GeoDB reads) and streams
the message on to Dovecot over its own LMTP connection. That is two more LMTP parsers in Python per
delivery: palomar's processes together spend more CPU per delivery than Dovecot's own delivery, and on a
machine with few cores, shared with the load generator as here, that CPU bounds the rate through palomar
(proxy, backend services and Dovecot together use most of the cores in the palomar rows). Reads of the
GeoDB for the ownership check go through the SQLite engine's single worker thread of each backend service.
Load average before/after: {load_before} / {load_after}.

Machine:

{table(["", ""], machine_rows())}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="LMTP delivery benchmark: direct Dovecot vs through palomar.")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per row (default 10)")
    parser.add_argument("--concurrency", type=int, default=8, help="MTA connections (default 8)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1:
        parser.error("--seconds must be positive and --concurrency at least 1")
    root = Path(tempfile.mkdtemp(prefix="palomar-lmtp-bench-"))
    root.chmod(0o755)
    cluster = LocalCluster(root / "cluster", users_count=16, proxies_count=1, password_scheme="PLAIN",
                           proxy_settings={"*": ("cluster_lmtp_max_mail_size = 64M",)})
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
        pairs = min(len(first), len(second)) // 2
        if pairs < 1:
            raise SystemExit("too few demo users on one backend; rerun")
        single = [[user] for user in everyone]
        multi = [[first[2 * i], second[2 * i], first[2 * i + 1], second[2 * i + 1]] for i in range(pairs)]
        for path in ("direct", "palomar"):
            for recipients in (single, multi):
                results.append(run(cluster, path, recipients, args))
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    write_section(args.out, HEADING, render(results, args, load_before, load_average()))
    log(f"wrote '## {HEADING}' in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
