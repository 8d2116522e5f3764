"""Password guessing and idle floods against one proxy process (issue: connection caps and auth penalty).

    .venv/bin/python bench/login_limits_bench.py [--seconds 60] [--flood 20000] [--out docs/benchmarks.md]

1. Guesses per second from one address: 20 connections from 127.0.0.40 send wrong passwords as fast as
   the proxy answers (reconnecting when it closes them), first with the old behaviour (flat
   auth_failure_delay = 2 s, no penalty, no per-connection limit), then with the defaults.
2. An idle flood: `--flood` connections from 127.0.0.50, opened by helper processes (one process may hold
   only 20,000 descriptors here), then a login from 127.0.0.51: its time to the greeting and to the answer.

The proxy is the real IMAP front end in this process (passwd-file passdb, no backend: a wrong password is
answered by the proxy itself), listening on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

from palomar.auth.passdb import PassdbChain
from palomar.auth.penalty import AuthPenalty, PenaltyPolicy
from palomar.metrics.registry import Registry
from palomar.net.server import AcceptLoop, listen_socket
from palomar.proxy.imap_frontend import ImapAdapter
from palomar.proxy.limits import ConnectionLimits
from palomar.proxy.session import serve
from palomar.proxy.state import ProxyMetrics, ProxyState
from palomar.service_runtime import raise_fd_limit
from report import load_average, machine_rows, table, write_section

HEADING = "Password guessing and idle floods (login_limits_bench.py)"
GUESSER = "127.0.0.40"
FLOODER = "127.0.0.50"
CLIENT = "127.0.0.51"

FLOOD_HELPER = r"""
import socket, sys, time
port, count, source = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held = []
for _ in range(count):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()
"""


def make_state(passwd: Path, *, defaults: bool) -> ProxyState:
    passdb = PassdbChain.from_settings([SimpleNamespace(name="users", driver="passwd-file", args=str(passwd))])
    state = ProxyState(passdb=passdb, router=None, hops=None, metrics=ProxyMetrics(Registry()), site_id=None,
                       allow_cleartext=True, auth_failure_delay=2.0,
                       haproxy_trusted=(ipaddress.ip_network("127.0.0.1/32"),))
    if defaults:  # the registry's defaults
        state.limits = ConnectionLimits({"imap-login": 10000}, 100)
        state.penalty = AuthPenalty(PenaltyPolicy(15.0), max_entries=100000, per_user=True)
        state.max_auth_failures = 3
    return state


async def start(state: ProxyState) -> tuple[AcceptLoop, int]:
    sock = listen_socket("127.0.0.1", 0)
    loop = AcceptLoop(sock, partial(serve, state, service="imap-login", adapter=ImapAdapter(), haproxy=False,
                                    ssl=False), refusals=state.refusals)
    loop.start()
    return loop, sock.getsockname()[1]


async def guesser(port: int, deadline: float, counter: list[int], worker: int) -> None:
    n = 0
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(GUESSER, 0))
            await reader.readline()
            while time.monotonic() < deadline:
                n += 1
                writer.write(f'g LOGIN victim@example.test "guess-{worker}-{n}"\r\n'.encode())
                line = await asyncio.wait_for(reader.readline(), deadline - time.monotonic() + 1)
                if not line.startswith(b"g "):
                    break  # BYE: closed by the proxy; reconnect
                counter[0] += 1
            writer.close()
        except (OSError, TimeoutError):
            pass


async def guesses_per_second(passwd: Path, seconds: float, *, defaults: bool) -> tuple[float, int]:
    state = make_state(passwd, defaults=defaults)
    loop, port = await start(state)
    counter = [0]
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(guesser(port, deadline, counter, i) for i in range(20)))
    await loop.close()
    return counter[0] / seconds, counter[0]


async def flood(passwd: Path, size: int) -> dict[str, object]:
    state = make_state(passwd, defaults=True)
    loop, port = await start(state)
    per_helper = 5000
    helpers = []
    opened = 0
    started = time.monotonic()
    for i in range(0, size, per_helper):
        count = min(per_helper, size - i)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", FLOOD_HELPER, str(port), str(count),
                                                    FLOODER, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        helpers.append(proc)
        assert proc.stdout is not None
        opened += int((await proc.stdout.readline()).decode() or 0)
    flood_time = time.monotonic() - started
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(CLIENT, 0))
    greeting = await asyncio.wait_for(reader.readline(), 30)
    t1 = time.monotonic()
    writer.write(b'a LOGIN victim@example.test "wrong"\r\n')
    answer = await asyncio.wait_for(reader.readline(), 30)
    t2 = time.monotonic()
    writer.close()
    refused = state.metrics.connections_refused.value(reason="login_max_ip_connections")
    for proc in helpers:
        assert proc.stdin is not None
        proc.stdin.close()
        await proc.wait()
    await loop.close()
    return {"opened": opened, "flood_seconds": flood_time, "refused": int(refused),
            "greeting": greeting.decode().strip()[:40], "greeting_ms": (t1 - t0) * 1000,
            "answer": answer.decode().strip(), "answer_ms": (t2 - t1) * 1000}


def render(before: tuple[float, int], after: tuple[float, int], flooded: dict[str, object], args,
           load_before: str, load_after: str) -> str:
    rows = [("flat 2 s (old behaviour)", f"{before[0]:.2f}", before[1]),
            ("escalating penalty, 3 failures per connection (defaults)", f"{after[0]:.3f}", after[1])]
    return "\n".join([
        f"20 connections from one address guessing for {args.seconds:.0f} s; then an idle flood of "
        f"{args.flood} connections from one address and a login from another (one proxy process, "
        "`login_max_ip_connections = 100`). Load average before/after: "
        f"{load_before}/{load_after}.", "",
        table(["configuration", "guesses/s", "guesses"], rows), "",
        table(["flood", "value"], [(k, f"{v:.0f}" if isinstance(v, float) else v) for k, v in flooded.items()]),
        "", table(["machine", ""], machine_rows()), "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--flood", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "docs" / "benchmarks.md")
    args = parser.parse_args()
    raise_fd_limit()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        passwd = Path(tmp) / "users.passwd"
        passwd.write_text("victim@example.test:{PLAIN}the-password\n")
        before = asyncio.run(guesses_per_second(passwd, args.seconds, defaults=False))
        print(f"before: {before[0]:.2f} guesses/s ({before[1]})", flush=True)
        after = asyncio.run(guesses_per_second(passwd, args.seconds, defaults=True))
        print(f"after: {after[0]:.3f} guesses/s ({after[1]})", flush=True)
        flooded = asyncio.run(flood(passwd, args.flood))
        print(flooded, flush=True)
    write_section(args.out, HEADING, render(before, after, flooded, args, load_before, load_average()))


if __name__ == "__main__":
    main()
