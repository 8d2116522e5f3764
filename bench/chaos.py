"""The chaos suite: a LocalCluster under mixed client load while a seeded schedule of faults
hits every process kind, then an accounting of the mail store against every answer the clients got.

One LocalCluster (HAProxy, two `palomar proxy`, two `palomar backend`, two Dovecot CE, the site's
controller with health on), with the demo's Supervisor restarting whatever dies. Faults run one
after the other: inject, hold (a stop or a lock), end, wait until the cluster is whole again
without any admin action (every process serving, every backend online in the GeoDB), a quiet
gap, the next one. Meanwhile `doveadm who` on every backend is
sampled each second. Afterwards: every message counted by Message-ID in the store (doveadm fetch
on every backend; Submission: the relay sink), tracebacks searched in every log.

    sudo .venv/bin/python bench/chaos.py                 # full run, 10 minutes of faults
    .venv/bin/python bench/chaos.py --rounds 1 --out /tmp/r.md   # one fault of each kind
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chaos_faults import HOP_RATE, LOSS_PERCENT, inject
from chaos_load import Ledger, Load, Target
from chaos_rules import (
    KINDS,
    SETTLE,
    VIOLATIONS,
    Fault,
    Message,
    Stall,
    Window,
    double_service,
    failure_rates,
    plan,
    stalled,
    strays,
    tally,
)
from palomar.backend.doveadm_client import DoveadmClient, DoveadmError
from palomar.devcluster.cluster import SITE, LocalCluster
from palomar.devcluster.net import port_accepts
from palomar.devcluster.supervisor import RestartPolicy, Supervisor
from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB
from private_network import private_network
from report import exit_status, invocation, load_average, log, machine_rows, median, table

RECOVERY_BOUND = 120.0
"""Seconds after a fault ends within which the cluster must be whole again on its own."""
DRAIN = 90.0
"""Seconds the MTA-like clients keep retrying their queued messages after the load stops."""
RESTARTS = RestartPolicy(first_delay=0.5, max_delay=5.0, burst=20, window=300.0)
"""Like systemd's Restart=always with a short RestartSec; no giving up during a run."""
GAP = (3.0, 8.0)
"""Quiet seconds after a recovery before the next fault (drawn from this range)."""
HEADING_DOC = "docs/reliability.md"
MSGID = re.compile(r"<[^<>@\s]+@chaos\.palomar\.test>")


@dataclass
class Executed:
    fault: Fault
    target: str
    at: float
    """Seconds from the start of the load."""
    recovered_after: float | None
    """Seconds from the end of the fault (SIGCONT, release, or the kill) to a whole cluster; None: never."""


@dataclass
class Outcome:
    seed: int
    seconds: float
    started: float = 0.0
    """Wall-clock time the load started."""
    executed: list[Executed] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    ledger: Ledger | None = None
    copies: dict[str, int] = field(default_factory=dict)
    backends_disagree: list[str] = field(default_factory=list)
    overlaps: list[tuple[float, set[str]]] = field(default_factory=list)
    """(time, users) of each sample listing users on two running backends: double service."""
    leftovers: list[tuple[float, set[str], float]] = field(default_factory=list)
    """(time, users, seconds since its backend resumed, negative while stalled) of each sample listing
    users on a stalled backend and on another one: sessions no client can reach (chaos_rules.double_service)."""
    samples: int = 0
    tracebacks: dict[str, int] = field(default_factory=dict)
    supervisor_lines: list[str] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    queued_at_end: int = 0
    gap: tuple[float, float] = GAP

    def verdicts(self) -> dict[str, list[Message]]:
        assert self.ledger is not None
        return tally(self.ledger.messages, self.copies)

    def failures(self) -> list[str]:
        """Every broken promise: the test fails on any of them."""
        assert self.ledger is not None
        found = []
        for name, messages in self.verdicts().items():
            if name in VIOLATIONS:
                found += [f"{name}: {m.protocol} {m.msgid} to {m.user}: {m.outcomes} {m.answers}"
                          for m in messages]
        found += [f"stored but never sent: {msgid}" for msgid in strays(self.ledger.messages, self.copies)]
        found += [f"backends disagree on {text}" for text in self.backends_disagree]
        found += [f"served by two backends at t={t - self.started:.1f}s: {sorted(users)}"
                  for t, users in self.overlaps]
        found += [f"not whole again {RECOVERY_BOUND:.0f}s after {e.fault.kind} of {e.target}"
                  for e in self.executed if e.recovered_after is None]
        found += [f"{count} traceback(s) in {path}" for path, count in self.tracebacks.items()]
        return found


class Chaos:
    def __init__(self, root: Path, seed: int, *, users: int = 12) -> None:
        self.cluster = LocalCluster(
            root, backends_count=2, proxies_count=2, users_count=users, controller=True, allow_cleartext=True,
            password_scheme="PLAIN", auth_failure_delay="100 ms", stats_interval="2 secs",
            proxy_settings={"*": ("auth_penalty_max_delay = 0",)})
        self.seed = seed
        self.supervisor_lines: list[str] = []
        self.stalls: list[Stall] = []
        """SIGSTOPs of a palomar backend or a Dovecot, by backend name (the current one without an end)."""
        self.done = threading.Event()

    # --- helpers on the running cluster -------------------------------------------------------------
    def target_name(self, fault: Fault) -> str:
        process = fault.kind.split("-", 1)[1]
        if process in ("dovecot", "backend", "hop"):
            return self.cluster.backends[fault.target].name
        if process == "proxy":
            return self.cluster.proxies[fault.target].name
        return "GeoDB" if process == "write-lock" else process

    def backend_statuses(self) -> dict[str, str]:
        async def read() -> dict[str, str]:
            engine = open_engine("sqlite", path=str(self.cluster.geodb_path))
            await engine.open()
            try:
                db = GeoDB(engine)
                site = await db.site_get_by_name(SITE)
                return {b.host: b.status for b in await db.backend_list(site.id)}
            finally:
                await engine.close()
        return asyncio.run(read())

    def whole(self) -> bool:
        """Every process running and serving (an IMAP login through each proxy, the backends' hop and
        Dovecot ports, the controller's metrics port), every backend online in the GeoDB."""
        c = self.cluster
        if any(child.returncode() is not None for child in c.children()):
            return False
        ports = [(b.host, c.hop_port) for b in c.backends] + [(b.dovecot.host, b.dovecot.params.imap_port)
                                                              for b in c.backends]
        ports.append((c.lb_host, c.controller_metrics))
        if not all(port_accepts(host, port) for host, port in ports):
            return False
        if set(self.backend_statuses().values()) != {"online"}:
            return False
        return all(self._logs_in(proxy.host, proxy.imap) for proxy in c.proxies)

    def _logs_in(self, host: str, port: int) -> bool:
        user = self.cluster.users[0]
        try:
            imap = imaplib.IMAP4(host, port, timeout=10)
            try:
                return imap.login(user.name, user.password)[0] == "OK"
            finally:
                imap.logout()
        except (imaplib.IMAP4.error, OSError, EOFError):
            return False

    def wait_whole(self, bound: float) -> float | None:
        start = time.monotonic()
        while time.monotonic() - start < bound:
            if self.whole():
                return time.monotonic() - start
            self.done.wait(0.5)
        return None

    def who(self) -> dict[str, set[str] | None]:
        found: dict[str, set[str] | None] = {}
        for node in self.cluster.backends:
            p = node.dovecot.params
            client = DoveadmClient(p.listen, p.doveadm_http_port, p.doveadm_password, timeout=2)
            try:
                found[node.name] = {r["username"] for r in client.call("who", {}) if "username" in r}
            except (DoveadmError, OSError, ValueError):
                found[node.name] = None
            finally:
                client.close()
        return found

    # --- background threads ---------------------------------------------------------------------------
    def _supervise(self, supervisor: Supervisor) -> None:
        while not self.done.wait(0.5):
            supervisor.tick()

    def _sample(self, outcome: Outcome) -> None:
        while not self.done.wait(1.0):
            began = time.time()
            sample = self.who()
            ended = time.time()
            outcome.samples += 1
            frozen = stalled(self.stalls, began, ended)
            served = double_service(sample, frozen)
            if served:
                outcome.overlaps.append((began, served))
            left = double_service(sample) - served
            if left:
                since = max(began - s.end for s in self.stalls if s.backend in frozen
                            and s.start <= ended and began <= s.end + SETTLE)
                outcome.leftovers.append((began, left, since))

    # --- the run ----------------------------------------------------------------------------------------
    def run(self, seconds: float, rounds: int | None, gap: tuple[float, float] = GAP) -> Outcome:
        c = self.cluster
        outcome = Outcome(self.seed, seconds, load_before=load_average(), gap=gap)
        log(f"starting the cluster in {c.root}")
        c.start()
        supervisor = Supervisor(c.children(), self._supervised, RESTARTS)
        ledger = Ledger(run_id=f"s{self.seed}t{int(time.time())}")
        outcome.ledger = ledger
        load = Load(Target(c.lb_host, c.lb_imap, c.lb_pop3, c.lb_submission, c.lb_lmtp,
                           [(u.name, u.password) for u in c.users]), ledger, self.seed)
        threads = [threading.Thread(target=self._supervise, args=(supervisor,), daemon=True),
                   threading.Thread(target=self._sample, args=(outcome,), daemon=True)]
        for thread in threads:
            thread.start()
        faults = plan(self.seed, 1000 if rounds is None else rounds, backends=len(c.backends),
                      proxies=len(c.proxies), gap=gap)
        outcome.started = start = time.time()
        load.start()
        self.done.wait(5.0)  # undisturbed load first: every user gets placed
        for fault in faults:
            if rounds is None and time.time() - start >= seconds:
                break
            self._one(fault, outcome, start)
        log("load stops; queued messages are retried")
        load.stop(DRAIN)
        outcome.queued_at_end = load.queued()
        outcome.seconds = time.time() - start
        self.done.set()
        for thread in threads:
            thread.join(10)
        outcome.load_after = load_average()
        log("counting the store")
        self.count(outcome)
        outcome.tracebacks = tracebacks(c)
        outcome.supervisor_lines = self.supervisor_lines
        return outcome

    def _supervised(self, line: str) -> None:
        log(f"supervisor: {line}")
        self.supervisor_lines.append(line)

    def _one(self, fault: Fault, outcome: Outcome, start: float) -> None:
        name = self.target_name(fault)
        injected = time.time()
        log(f"fault {fault.kind} of {name} (hold {fault.hold}s)")
        frozen = fault.kind in ("stop-backend", "stop-dovecot")
        if frozen:
            self.stalls.append(Stall(name, injected))
        reported = len(self.supervisor_lines)
        end = inject(self.cluster, fault)
        try:
            self.done.wait(fault.hold)
        finally:
            end()
            if frozen:
                self.stalls[-1] = Stall(name, injected, time.time())
        ended = time.monotonic()
        if fault.kind.startswith("kill-"):  # recovery begins with the supervisor seeing the death
            noticed = self._noticed(reported)
            if not noticed:
                log("  the supervisor did not see the process die")
        recovered = self.wait_whole(RECOVERY_BOUND)
        if recovered is not None:
            recovered = time.monotonic() - ended
        log(f"  whole again after {recovered:.1f}s" if recovered is not None else "  NOT whole again")
        outcome.executed.append(Executed(fault, name, injected - start, recovered))
        outcome.windows.append(Window(fault.kind, injected, time.time()))
        self.done.wait(fault.gap)

    def _noticed(self, reported: int, bound: float = 15.0) -> bool:
        """Whether the supervisor reports a death after its first `reported` lines, within `bound`."""
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if any(" exited with " in line for line in self.supervisor_lines[reported:]):
                return True
            self.done.wait(0.1)
        return False

    def count(self, outcome: Outcome) -> None:
        """Copies of every Message-ID: IMAP INBOX of every user on every backend, and the relay sink."""
        c = self.cluster
        per_backend: list[dict[str, int]] = []
        for node in c.backends:
            copies: dict[str, int] = {}
            for user in c.users:
                out = node.dovecot.doveadm("fetch", "-u", user.name, "hdr.message-id", "mailbox", "INBOX", "all",
                                           timeout=120).stdout
                for msgid in MSGID.findall(out):
                    copies[msgid] = copies.get(msgid, 0) + 1
            per_backend.append(copies)
        first = per_backend[0]
        for node, other in zip(c.backends[1:], per_backend[1:], strict=True):
            outcome.backends_disagree += [f"{m} ({first.get(m, 0)} vs {other.get(m, 0)} on {node.name})"
                                          for m in set(first) | set(other) if first.get(m, 0) != other.get(m, 0)]
        copies = dict(first)
        assert c.sink is not None
        for received in c.sink.messages:
            for msgid in set(MSGID.findall(received.data.decode(errors="replace"))):
                copies[msgid] = copies.get(msgid, 0) + 1
        outcome.copies = copies


def tracebacks(cluster: LocalCluster) -> dict[str, int]:
    """Tracebacks per log file of the cluster (palomar's logs and stderr, Dovecot's, HAProxy's)."""
    found: dict[str, int] = {}
    roots = [cluster.root, *([cluster.shared_dir] if cluster.shared_dir else [])]
    for root in roots:
        for path in root.rglob("*.log"):
            count = path.read_text(errors="replace").count("Traceback (most recent call last)")
            if count:
                found[str(path.relative_to(root))] = count
    return found


# --- the report ----------------------------------------------------------------------------------------
WHY = {
    "none": "sessions that overlapped no fault: nothing may fail.",
    "kill-dovecot": "the sessions open on the killed Dovecot lose their server process; its `palomar backend` "
                    "closes their hops and the proxy closes the clients (IDLE cut: \"connection closed during "
                    "IDLE\"). A new login there is refused at once, the confirmation probe fails at once, the "
                    "proxy sets the backend offline and routes the login to the alternate: new logins do not fail.",
    "stop-dovecot": "sessions on the stalled Dovecot wait. A new login there fails over within "
                    "`cluster_hop_answer_timeout + cluster_proxy_probe_timeout` (9 s), and the proxies then cut "
                    "the stalled backend's sessions (fencing); a stall that ends before that leaves them waiting "
                    "but whole. The clients' 30 s timeout outlasts both, so failures are the cut sessions.",
    "kill-backend": "every session relayed by the killed `palomar backend` loses its hop and is closed; new "
                    "logins there are refused, confirmed by a probe at once and routed to the alternate.",
    "stop-backend": "as stop-dovecot, with the hop itself stalled (a new hop's TLS handshake or answer times "
                    "out): open sessions wait, and are cut when the backend goes offline.",
    "kill-proxy": "the clients of the killed proxy lose their connections (HAProxy passes on the close); new "
                  "connections go to the other proxy: HAProxy's greeting check marks the dead one down and "
                  "`option redispatch` retries a refused connect there.",
    "stop-proxy": "connections on the stalled proxy wait and go on after SIGCONT (HAProxy keeps a marked-down "
                  "server's sessions); new ones go to the other proxy once two greeting checks (1 s apart, "
                  "2 s timeout) failed; a connection HAProxy sent there before that waits out the stall.",
    "kill-controller": "the controller is not on any client's path (it only sets offline backends online "
                       "again): nothing should fail.",
    "stop-controller": "as kill-controller.",
    "geodb-write-lock": "IMAP logins of placed users only read the GeoDB and go on; what needs a write (a first "
                        "placement, a failover, the stats flush) waits and fails with a temporary error "
                        "(LMTP: \"Temporary routing failure\").",
    "lossy-hop": "TCP retransmits and the slow class stretch the hop to one backend; a login whose hop misses "
                 "the 2 s connect or 4 s answer timeout fails over to the alternate if the failure is confirmed "
                 "(three in 10 s, or a failed probe), and the sessions open on the backend are cut then.",
}
"""What each fault does to IMAP sessions (the closing note of the rate table)."""



VERDICT_ORDER = ("exactly-once", "duplicate-after-uncertain", "stored-after-uncertain", "absent-after-uncertain",
                 "never-accepted", "lost", "duplicated", "stored-after-refusal")


def render(outcome: Outcome, command: str) -> str:
    assert outcome.ledger is not None
    ledger = outcome.ledger
    verdicts = outcome.verdicts()
    protocols = sorted({m.protocol for m in ledger.messages})
    message_rows = []
    for protocol in protocols:
        mine = [m for m in ledger.messages if m.protocol == protocol]
        counts = {name: sum(1 for m in msgs if m.protocol == protocol) for name, msgs in verdicts.items()}
        message_rows.append([protocol, len(mine), sum(1 for m in mine if m.acked),
                             sum(len(m.outcomes) - 1 for m in mine if m.outcomes),
                             *(counts.get(name, 0) for name in VERDICT_ORDER)])
    rates = {p: failure_rates([s for s in ledger.sessions if s.protocol == p], outcome.windows)
             for p in ("imap", "pop3", "lmtp", "submission")}
    rate_rows = []
    for kind in ("none", *KINDS):
        cells = []
        for protocol in ("imap", "pop3", "lmtp", "submission"):
            failed, total = rates[protocol].get(kind, (0, 0))
            cells.append(f"{failed}/{total} ({100 * failed / total:.0f}%)" if total else "-")
        rate_rows.append([kind, *cells])
    schedule_rows = [[f"{e.at:.0f}", e.fault.kind, e.target, f"{e.fault.hold:g}",
                      f"{e.recovered_after:.1f}" if e.recovered_after is not None else "never"]
                     for e in outcome.executed]
    recoveries = [e.recovered_after for e in outcome.executed if e.recovered_after is not None]
    steps: dict[str, int] = {}
    for session in ledger.sessions:
        if not session.ok:
            key = f"{session.protocol} {session.step}: {_short(session.error)}"
            steps[key] = steps.get(key, 0) + 1
    error_rows = sorted(steps.items(), key=lambda item: -item[1])[:15]
    lingering = [since for _, _, since in outcome.leftovers if since > 0]
    failures = outcome.failures()
    return f"""# Reliability

Written by {command}; `make chaos` reruns it. The same seed gives the same
schedule of faults (their order, targets and hold times); what the load meets in each fault
depends on timing.
The soak (10,000 idle IMAP and IMAPS sessions and a login churn, memory and descriptors of
every server over time) is `make soak`; its figures are in docs/benchmarks.md, "Soak (issue 16)".

## Method

One `LocalCluster` on loopback: HAProxy (greeting health checks, see docs/deployment.md), two
`palomar proxy`, two `palomar backend`, two Dovecot CE sharing one mail directory, the site's
`palomar controller` (health feature on), a SQLite GeoDB. The demo's supervisor
(`palomar.devcluster.supervisor`) restarts any process that dies (backoff {RESTARTS.first_delay:g}s
doubling to {RESTARTS.max_delay:g}s). The proxies run with `auth_penalty_max_delay = 0`.

Load, all through HAProxy with Python's stdlib clients, {len(ledger.sessions)} sessions in {outcome.seconds:.0f}s:
three IMAP workers (LOGIN, SELECT, FETCH of the last messages, APPEND half the time, IDLE for 1-4s
a third of the time, LOGOUT), one POP3 worker (USER/PASS, STAT, RETR, QUIT; nothing is deleted),
one LMTP and one Submission worker (up to five messages per connection, one recipient each). Every
message has a unique Message-ID. LMTP and Submission behave as an MTA: a message without a 2xx
answer is retried with the same Message-ID (1s doubling to 10s), also for {DRAIN:.0f}s after the
load stops. Every answer is recorded.

Faults, one at a time: SIGKILL of the whole process tree, or SIGSTOP then SIGCONT, of a Dovecot,
a `palomar backend`, a `palomar proxy` and the controller; a GeoDB whose write lock is held
(reads go on, writes wait and fail: what a read-only or locked SQLite file does to the services);
and `lossy-hop`: the hop to one backend loses {LOSS_PERCENT} % of its packets at random and the rest
go through a {HOP_RATE} HTB class, both ways (nftables and tc; this kernel has no sch_netem, see
`bench/chaos_faults.py`). The whole run lives in a network namespace of its own (its loopback
carries the cluster), so these rules touch no other traffic on the machine.
After each fault the run waits until the cluster is whole again with no admin action (every
process running, an IMAP login through each proxy, the backends' hop and Dovecot ports and the
controller's accepting, every backend `online` in the GeoDB), at most
{RECOVERY_BOUND:.0f}s, then a quiet gap of {outcome.gap[0]:g}-{outcome.gap[1]:g}s.

Accounting, from the store: `doveadm fetch hdr.message-id` of every user's INBOX on every backend
(they must agree), and the relay sink for Submission. Verdicts (`bench/chaos_rules.py`): a 2xx answer
must mean exactly one copy (`lost` and `duplicated` are failures); an attempt refused before the
whole message was sent must have stored nothing (`stored-after-refusal` is a failure); an attempt
that sent the whole message and got no 2xx (connection cut, timeout, or a 4xx after the final dot)
is uncertain, SMTP's at-least-once window: the message may be absent, or stored, and a retry may
add one copy (`duplicate-after-uncertain`, counted, not a failure). `doveadm who` is sampled on
every backend each second: a user listed on two backends is a failure, unless one of the listings is
on a backend that is stalled or resumed less than {SETTLE:g}s ago (its relay or its Dovecot stopped:
the proxies cut its sessions when it went offline and no byte of them reaches a client; the resumed
backend ends them, see docs/design/health.md, "Fencing").

## Result

Seed {outcome.seed}. **{"No broken promise." if not failures else f"{len(failures)} broken promise(s):"}**
{"".join(f"{chr(10)}- {line}" for line in failures[:30])}

Messages ({sum(len(m) for m in verdicts.values())}; "retries" counts attempts after the first):

{table(["protocol", "sent", "acked", "retries", *VERDICT_ORDER], message_rows)}

Messages with an uncertain attempt (the answers each attempt got):

{_uncertain(ledger.messages, verdicts)}

Session failures by the fault their lifetime overlapped (from injection to whole again;
`none`: no fault):

{table(["fault", "IMAP", "POP3", "LMTP", "Submission"], rate_rows)}

Why IMAP sessions fail under each fault (a session counts as failed if any step did: the connect,
LOGIN, SELECT, FETCH, APPEND, IDLE or LOGOUT):

{"".join(f"- `{kind}`: {WHY[kind]}{chr(10)}" for kind in ("none", *KINDS))}
Most frequent failures:

{table(["protocol, step: error", "sessions"], [[k, v] for k, v in error_rows]) if error_rows else "none"}

Schedule as executed (seconds from the start of the load; "whole after" counts from the end of
the fault):

{table(["at s", "fault", "target", "hold s", "whole after s"], schedule_rows)}

- Whole again after every fault: {"yes" if len(recoveries) == len(outcome.executed) else "NO"}; slowest
  {max(recoveries, default=0):.1f}s (bound {RECOVERY_BOUND:.0f}s), median {median(recoveries):.1f}s.
- `doveadm who` samples: {outcome.samples}; users on two running backends (double service):
  {len(outcome.overlaps)}; samples listing a user on a stalled backend as well:
  {len(outcome.leftovers)}, {len(lingering)} of them after the backend resumed (at most
  {max(lingering, default=0):.1f}s after, bound {SETTLE:g}s).
- Supervisor restarts: {sum(1 for line in outcome.supervisor_lines if line.endswith(" restarted"))};
  messages still queued when the drain ended: {outcome.queued_at_end}.
- Tracebacks in logs: {sum(outcome.tracebacks.values())}.
- Load average (1 min) before / after: {outcome.load_before} / {outcome.load_after}.

Machine:

{table(["", ""], machine_rows())}
"""


def _uncertain(messages: list[Message], verdicts: dict[str, list[Message]]) -> str:
    by_id = {m.msgid: name for name, found in verdicts.items() for m in found}
    rows = [[m.protocol, by_id[m.msgid], " / ".join(_short(a, 70) for a in m.answers)]
            for m in messages if m.uncertain][:20]
    return table(["protocol", "verdict", "answers"], rows) if rows else "none"


def _short(error: str, width: int = 90) -> str:
    return re.sub(r"\d+", "N", error)[:width].replace("|", "/")


def run_chaos(seed: int, seconds: float, rounds: int | None, keep: bool = False,
              on_root: Callable[[Path], None] | None = None, gap: tuple[float, float] = GAP) -> Outcome:
    base = Path(tempfile.mkdtemp(prefix="palomar-chaos-"))
    base.chmod(0o755)
    chaos = Chaos(base / "cluster", seed)
    if on_root:
        on_root(base)
    with private_network():  # netem on its loopback touches nobody else
        try:
            return chaos.run(seconds, rounds, gap)
        finally:
            chaos.done.set()
            chaos.cluster.stop()
            if not keep:
                shutil.rmtree(base, ignore_errors=True)
            else:
                log(f"kept {base}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=600.0, help="inject faults for this long")
    parser.add_argument("--rounds", type=int, default=None, help="instead: this many rounds of every kind once")
    parser.add_argument("--out", default=HEADING_DOC)
    parser.add_argument("--keep", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    outcome = run_chaos(args.seed, args.seconds, args.rounds, args.keep)
    text = render(outcome, invocation("bench/chaos.py", argv))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    log(f"wrote {args.out}")
    return exit_status(outcome.failures())


if __name__ == "__main__":
    sys.exit(main())
