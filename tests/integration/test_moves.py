"""Moving users through a real cluster: group move with referrals, stale proxies and the straggler
window, timeout expiry, a source going offline, --direct, user move, evacuate, force-move, kick,
and a move executor killed mid-move. Real clients → palomar proxies → palomar backends → Dovecot.

The group move also runs under LMTP deliveries through HAProxy (smtplib.LMTP): every delivery
acknowledged with a 2xx is stored exactly once, 4xx ones are retried until they are. An LMTP
delivery alone starts a pending move, an open LMTP transaction holds its recipient's move, and
one held past `cluster_user_move_timeout` is aborted with a 4xx and nothing stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import json
import os
import re
import smtplib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from palomar.backend.doveadm_client import DoveadmClient, DoveadmError
from palomar.cluster import codec
from palomar.cluster.model import Group
from palomar.cluster.moves import force_move_selected
from palomar.devcluster.cluster import BackendNode, LocalCluster
from palomar.devcluster.net import wait_until
from palomar.geodb.repository import GeoDB
from palomar.localdb import LocalDB

SAMPLE_INTERVAL = 0.1


# --- cluster and GeoDB helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(harness_root / "moves-cluster", proxies_count=2, users_count=120, allow_cleartext=True,
                     password_scheme="PLAIN", auth_failure_delay="100 ms", stats_interval="1 secs")
    c.start()
    yield c
    c.stop()


def geo(cluster: LocalCluster, action: Callable[[GeoDB], Any]) -> Any:
    async def main() -> Any:
        engine = cluster.geodb_engine()
        await engine.open()
        try:
            return await action(GeoDB(engine))
        finally:
            await engine.close()

    return asyncio.run(main())


def site_id(cluster: LocalCluster) -> UUID:
    async def action(db: GeoDB) -> UUID:
        site = await db.site_get_by_name("DC1")
        assert site is not None
        return site.id

    return geo(cluster, action)


def backend_id(cluster: LocalCluster, host: str) -> UUID:
    async def action(db: GeoDB) -> UUID:
        found = await db.backend_find_by_host(host)
        assert found is not None
        return found.id

    return geo(cluster, action)


def make_group(cluster: LocalCluster, name: str, host: str, alt: str, users: list[str]) -> None:
    """Test setup: a group on `host` holding `users` (written directly, as `site init` + `user move
    --direct` would, without 50 CLI round trips)."""
    sid, owner, other = site_id(cluster), backend_id(cluster, host), backend_id(cluster, alt)

    async def action(db: GeoDB) -> None:
        await db.group_create_if_absent(Group(site_id=sid, name=name, backend_id=owner, alt_backend_id=other))
        for user in users:
            await db.user_put(user, group_name=name, preferred_site_id=sid)

    geo(cluster, action)


def group_status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return json.loads(cluster.cluster("--json", "group", "status", "DC1", name).stdout)


def backend_status(cluster: LocalCluster, host: str) -> dict[str, Any]:
    return json.loads(cluster.cluster("--json", "backend", "status", host).stdout)


def node(cluster: LocalCluster, host: str) -> BackendNode:
    return next(b for b in cluster.backends if b.host == host)


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def who(cluster: LocalCluster, host: str) -> set[str]:
    """Users Dovecot on `host` has sessions for (robust against Dovecot 2.3's who JSON)."""
    p = node(cluster, host).dovecot.params
    client = DoveadmClient(p.listen, p.doveadm_http_port, p.doveadm_password)
    try:
        return {r["username"] for r in client.call("who", {}) if "username" in r}
    finally:
        client.close()


def refresh_proxies(cluster: LocalCluster) -> None:
    """`geodb refresh` on every proxy: no proxy routes from a status this test changed."""
    for proxy in cluster.proxies:
        cluster.palomar("cluster", "-c", str(proxy.config), "geodb", "refresh")


def password(user: str) -> str:
    return "password" + re.sub(r"\D", "", user.split("@")[0])


def user(i: int) -> str:
    return f"user{i}@example.test"


# --- a raw IMAP client that can IDLE and notices when it is disconnected ---------------------------


class ImapSession:
    """One IMAP session through a proxy: LOGIN, SELECT, IDLE, then wait to be closed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int, name: str, *, idle: bool = True) -> ImapSession | None:
        reader, writer = await asyncio.open_connection(host, port)
        session = cls(reader, writer)
        await reader.readline()
        if not (await session.command(f"a LOGIN {name} {password(name)}", "a")).startswith(b"a OK"):
            writer.close()
            return None
        await session.command("b SELECT INBOX", "b")
        if idle:
            writer.write(b"c IDLE\r\n")
            line = await reader.readline()
            assert line.startswith(b"+"), line
        return session

    async def command(self, text: str, tag: str) -> bytes:
        self.writer.write(text.encode() + b"\r\n")
        while True:
            line = await self.reader.readline()
            if not line or line.startswith(tag.encode() + b" "):
                return line

    async def closed(self) -> None:
        """Return when the server side closes the connection."""
        while await self.reader.read(4096):
            pass

    async def logout(self) -> None:
        self.writer.write(b"DONE\r\nz LOGOUT\r\n")
        try:
            async with asyncio.timeout(5):
                await self.closed()
        finally:
            self.writer.close()


async def login_once(host: str, port: int, name: str) -> bool:
    session = await ImapSession.open(host, port, name, idle=False)
    if session is None:
        return False
    session.writer.write(b"z LOGOUT\r\n")
    await session.closed()
    session.writer.close()
    return True


class WhoSampler(threading.Thread):
    """Samples `doveadm who` on every backend every 100 ms."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.clients = {b.host: DoveadmClient(b.dovecot.params.listen, b.dovecot.params.doveadm_http_port,
                                              b.dovecot.params.doveadm_password) for b in cluster.backends}
        self.samples: list[tuple[float, dict[str, set[str]]]] = []
        self.errors: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                sample = {h: {r["username"] for r in c.call("who", {}) if "username" in r}
                          for h, c in self.clients.items()}
            except DoveadmError as exc:
                self.errors.append(str(exc))
            else:
                self.samples.append((started, sample))
            self.stop_event.wait(max(0.0, SAMPLE_INTERVAL - (time.monotonic() - started)))

    def stop(self) -> None:
        self.stop_event.set()
        self.join()
        for client in self.clients.values():
            client.close()

    def worst_overlap(self, users: set[str]) -> tuple[int, str | None]:
        """Longest run of consecutive samples in which one user was on two backends."""
        worst, worst_user = 0, None
        runs: dict[str, int] = {}
        for _t, sample in self.samples:
            hosts = list(sample.values())
            for name in users:
                on = sum(1 for s in hosts if name in s)
                runs[name] = runs.get(name, 0) + 1 if on > 1 else 0
                if runs[name] > worst:
                    worst, worst_user = runs[name], name
        return worst, worst_user


# --- LMTP deliveries and what the mailboxes hold ------------------------------------------------------------


def lmtp_connection(cluster: LocalCluster) -> smtplib.LMTP:
    """An MTA's connection: HAProxy → a palomar proxy's `haproxy = yes` LMTP listener."""
    conn = smtplib.LMTP(cluster.lb_host, cluster.lb_lmtp, local_hostname="mta.example.test", timeout=60)
    code, _ = conn.ehlo()
    assert code == 250
    return conn


def mail(subject: str) -> bytes:
    return f"From: mta@example.org\r\nTo: someone@example.test\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def deliver_one(conn: smtplib.LMTP, rcpt: str, subject: str) -> tuple[int, str]:
    """One transaction with one recipient: the RCPT's reply if refused, else the reply after DATA."""
    code, text = conn.mail("mta@example.org")
    assert code == 250, text
    code, text = conn.rcpt(rcpt)
    if code != 250:
        conn.rset()
        return code, text.decode()
    code, text = conn.data(mail(subject))
    return code, text.decode()


def subjects(cluster: LocalCluster, name: str) -> list[str]:
    """The subjects of the messages in `name`'s INBOX, read over IMAP through a palomar proxy."""
    proxy = cluster.proxies[0]
    with imaplib.IMAP4(proxy.host, proxy.imap, timeout=30) as imap:
        imap.login(name, password(name))
        typ, data = imap.select("INBOX", readonly=True)
        assert typ == "OK", data
        if int(data[0] or 0) == 0:
            return []
        typ, fetched = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK", fetched
    found = []
    for item in fetched:
        if isinstance(item, tuple):
            header = re.search(rb"Subject: ([^\r\n]*)", item[1])
            found.append(header[1].decode() if header else "")
    return found


class LmtpLoad(threading.Thread):
    """An MTA delivering to `rcpts` in turn, one message per transaction, each with a unique subject.

    A 4xx (a RCPT or the message refused for now, a connection closed) is retried as an MTA would,
    until a 2xx; a 5xx is an error. `acked` records which subject each recipient acknowledged.
    """

    RETRY_INTERVAL = 0.05
    """An MTA's (very short) retry interval after a 4xx; it orders nothing."""
    MAX_ATTEMPTS = 200

    def __init__(self, cluster: LocalCluster, rcpts: list[str], tag: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.rcpts, self.tag = cluster, rcpts, tag
        self.acked: dict[str, list[str]] = {}
        self.tempfails: list[str] = []
        self.errors: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        conn: smtplib.LMTP | None = None
        i = 0
        try:
            while not self.stop_event.is_set() and not self.errors:
                rcpt, subject = self.rcpts[i % len(self.rcpts)], f"{self.tag} {i}"
                for _attempt in range(self.MAX_ATTEMPTS):
                    try:
                        conn = conn or lmtp_connection(self.cluster)
                        code, text = deliver_one(conn, rcpt, subject)
                    except (smtplib.SMTPServerDisconnected, OSError) as exc:
                        conn, code, text = None, 421, f"connection lost: {exc}"
                    if code // 100 == 2:
                        self.acked.setdefault(rcpt, []).append(subject)
                        break
                    if code // 100 != 4:
                        self.errors.append(f"{rcpt} {subject}: {code} {text}")
                        return
                    self.tempfails.append(f"{rcpt}: {code} {text}")
                    time.sleep(self.RETRY_INTERVAL)  # a retry interval (also after stop: finish this message)
                else:
                    self.errors.append(f"{rcpt} {subject}: no 2xx after {self.MAX_ATTEMPTS} attempts")
                    return
                i += 1
        finally:
            if conn is not None:
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    conn.quit()

    def stop(self) -> None:
        self.stop_event.set()
        self.join()

    @property
    def delivered(self) -> int:
        return sum(len(v) for v in self.acked.values())

    def check_mailboxes(self) -> None:
        """Each acknowledged message is in its mailbox exactly once; no other message of this load is."""
        for rcpt in self.rcpts:
            stored = [s for s in subjects(self.cluster, rcpt) if s.startswith(self.tag + " ")]
            acked = self.acked.get(rcpt, [])
            assert sorted(stored) == sorted(acked), (rcpt, sorted(set(stored) ^ set(acked)),
                                                      len(stored), len(acked))


# --- the group move under load ---------------------------------------------------------------------------


async def test_group_move_with_idle_sessions_logins_and_deliveries_keeps_every_user_on_one_backend(
        cluster: LocalCluster) -> None:
    src, dst = cluster.backends[0].host, cluster.backends[1].host
    members = [user(i) for i in range(1, 51)]
    await asyncio.to_thread(make_group, cluster, "mv", src, dst, members)
    proxies = cluster.proxies
    stop = asyncio.Event()
    connected: dict[str, int] = {}
    reconnects: dict[str, int] = {}
    login_failures: list[str] = []

    async def idle_client(i: int, name: str) -> None:
        proxy = proxies[i % len(proxies)]
        while not stop.is_set():
            session = await ImapSession.open(proxy.host, proxy.imap, name)
            if session is None:
                login_failures.append(name)
                await asyncio.sleep(0.2)
                continue
            connected[name] = connected.get(name, 0) + 1
            closed = asyncio.ensure_future(session.closed())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                closed.cancel()
                await asyncio.gather(closed, return_exceptions=True)
                await session.logout()
                return
            stopping.cancel()
            reconnects[name] = reconnects.get(name, 0) + 1

    logins = {"ok": 0, "failed": 0}

    async def load_generator() -> None:
        i = 0
        while not stop.is_set():
            proxy = proxies[i % len(proxies)]
            ok = await login_once(proxy.host, proxy.imap, members[i % len(members)])
            logins["ok" if ok else "failed"] += 1
            i += 1

    clients = [asyncio.ensure_future(idle_client(i, name)) for i, name in enumerate(members)]
    await asyncio.to_thread(wait_until, lambda: len(connected) == len(members), 60, "50 IDLE sessions")
    on_src, on_dst = await asyncio.to_thread(who, cluster, src), await asyncio.to_thread(who, cluster, dst)
    assert on_src >= set(members) and not (on_dst & set(members))
    loader = asyncio.ensure_future(load_generator())
    deliveries = LmtpLoad(cluster, members, "lmtp-move-mv")
    deliveries.start()
    await asyncio.to_thread(wait_until, lambda: deliveries.delivered >= 10 or deliveries.errors, 30,
                            "deliveries flowing")
    delivered_before = deliveries.delivered
    sampler = WhoSampler(cluster)
    sampler.start()
    before = await asyncio.to_thread(group_status, cluster, "mv")
    await asyncio.to_thread(cluster.cluster, "group", "move", "DC1", "mv", dst)
    moved_at = time.monotonic()
    # the load generator's logins are accesses too; `group access` may find the move running or done
    accessed = await asyncio.to_thread(cluster.cluster, "group", "access", "mv")
    assert accessed.stdout.strip() in ("mv: started", "mv: running", "mv: not moving")

    def finished() -> bool:
        return group_status(cluster, "mv")["backend"] == dst

    await asyncio.to_thread(wait_until, finished, 90, "the group move to finish")
    took = time.monotonic() - moved_at
    await asyncio.to_thread(wait_until, lambda: set(members) <= who(cluster, dst) and not (who(cluster, src)
                                                                                          & set(members)),
                            30, "every IDLE session back, on the destination")
    delivered_after = deliveries.delivered
    await asyncio.sleep(1.0)  # a second of steady state under load after the move
    stop.set()
    await asyncio.gather(*clients, loader)
    await asyncio.to_thread(deliveries.stop)
    sampler.stop()

    worst, worst_user = sampler.worst_overlap(set(members))
    print(f"\ngroup move of 50 IDLE users took {took:.2f}s; {logins['ok']} logins during the test; "
          f"worst overlap {worst} consecutive sample(s) (~{worst * SAMPLE_INTERVAL * 1000:.0f} ms) "
          f"for {worst_user}; {deliveries.delivered} LMTP deliveries "
          f"({delivered_after - delivered_before} during the move), {len(deliveries.tempfails)} 4xx retried")
    assert not deliveries.errors, deliveries.errors
    assert delivered_after > delivered_before  # deliveries went on while the group moved
    await asyncio.to_thread(deliveries.check_mailboxes)  # every 2xx stored exactly once, nothing else
    assert not sampler.errors and len(sampler.samples) > 10
    assert worst <= 1, f"{worst_user} was on both backends in {worst} consecutive samples"
    assert all(reconnects.get(name, 0) >= 1 for name in members)  # every session was moved
    assert logins["failed"] == 0 and not login_failures
    assert logins["ok"] > 20

    after = group_status(cluster, "mv")
    assert before["backend"] == src and before["moving"] is None
    assert after["backend"] == dst and after["moving"] is None and after["alt_backend"] == src
    assert backend_status(cluster, src)["last_moved_to"] == dst
    assert backend_status(cluster, dst)["last_moved_from"] == src
    src_log = log_text(node(cluster, src).log_path)
    finished_line = re.search(r"event=cluster_user_group_move_finished group=mv .*moved_users=(\d+) "
                              r"failed_users=(\d+)", src_log)
    assert finished_line and int(finished_line[1]) >= 50 and finished_line[2] == "0"
    assert "event=cluster_user_group_move_started group=mv" in src_log
    assert f"event=cluster_user_move_finished user={members[0]} dest_host={dst} error=" in src_log
    lmtp_referred = len(re.findall(rf"rcpt=\S+ referred to {re.escape(dst)}", src_log))
    print(f"the source referred {lmtp_referred} LMTP recipient(s) to the destination")


def test_stale_proxy_is_referred_and_the_source_forgets_after_one_hour(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = cluster.backends[0].host, cluster.backends[1].host
    if group_status(cluster, "mv")["backend"] != dst:
        pytest.fail("needs the group moved by the previous test")
    sid = site_id(cluster)
    stale = Group(site_id=sid, name="mv", backend_id=backend_id(cluster, src),
                  alt_backend_id=backend_id(cluster, dst))
    proxy = cluster.proxies[0]
    proxy_localdb = proxy.config.parent / "localdb.sqlite"

    def make_stale() -> None:
        with LocalDB(str(proxy_localdb)) as db:
            db.cache_put(f"group/{sid}/mv", codec.dumps(stale), 3600)

    make_stale()
    name = user(3)
    assert asyncio.run(login_once(proxy.host, proxy.imap, name))
    src_node, dst_node = node(cluster, src), node(cluster, dst)
    wait_until(lambda: f"user={name} referred to {dst}: group moved" in log_text(src_node.log_path), 10,
               "the straggler referral")
    assert re.search(rf"user={re.escape(name)} proto=imap .* login ok", log_text(dst_node.log_path))
    src_cfg = ["-c", str(src_node.config)]
    shown = cluster.palomar("cluster", *src_cfg, "--json", "localdb", "group", "status", "mv")
    status = json.loads(shown.stdout)
    assert status["redirect_host"] == dst

    # `geodb refresh` on the proxy drops the stale copy: no referral any more.
    cluster.cluster("geodb", "refresh")
    with LocalDB(str(proxy_localdb)) as db:
        assert db.cache_get(f"group/{sid}/mv") is None

    # One hour later (the backend's clock moved, not the test sleeping), the source has forgotten.
    monkeypatch.setenv("PALOMAR_BACKEND_CLOCK_OFFSET", "3601")
    cluster.restart_backend(src_node)
    monkeypatch.delenv("PALOMAR_BACKEND_CLOCK_OFFSET")

    def forgotten() -> bool:
        shown = cluster.palomar("cluster", *src_cfg, "localdb", "group", "status", "mv", check=False)
        return shown.returncode == 1

    wait_until(forgotten, 15, "the straggler redirect to expire")
    make_stale()
    other = user(4)
    assert asyncio.run(login_once(proxy.host, proxy.imap, other))
    wait_until(lambda: f"user={other} referred to {dst}: group is on another backend" in
               log_text(src_node.log_path), 10, "the plain referral")
    cluster.cluster("geodb", "refresh")
    cluster.restart_backend(src_node)


# --- the other ways a group leaves its backend ---------------------------------------------------------


def hold(cluster: LocalCluster, names: list[str]) -> tuple[asyncio.AbstractEventLoop, list[ImapSession]]:
    loop = asyncio.new_event_loop()
    proxy = cluster.proxies[1]
    sessions = [loop.run_until_complete(ImapSession.open(proxy.host, proxy.imap, n)) for n in names]
    assert all(sessions)
    return loop, sessions  # type: ignore[return-value]


def closed_within(loop: asyncio.AbstractEventLoop, sessions: list[ImapSession], timeout: float) -> bool:
    async def all_closed() -> None:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(s.closed() for s in sessions))

    try:
        loop.run_until_complete(all_closed())
        return True
    except TimeoutError:
        return False


def test_source_going_offline_mid_move_finishes_the_move_at_once(cluster: LocalCluster) -> None:
    src, dst = cluster.backends[0].host, cluster.backends[1].host
    members = [user(i) for i in range(51, 54)]
    make_group(cluster, "off", src, dst, members)
    loop, sessions = hold(cluster, members)
    cluster.cluster("group", "move", "DC1", "off", dst)
    assert group_status(cluster, "off")["moving"]
    cluster.cluster("backend", "update", "--status", "offline", src)
    try:
        assert asyncio.run(login_once(cluster.proxies[0].host, cluster.proxies[0].imap, members[0]))
        status = group_status(cluster, "off")
        assert status["backend"] == dst and status["moving"] is None
        # the source closes what it still held of the group: one backend per user
        assert closed_within(loop, sessions, 10)
        wait_until(lambda: not (who(cluster, src) & set(members)), 10, "sessions gone from the source")
        assert members[0] in who(cluster, dst) or asyncio.run(
            login_once(cluster.proxies[0].host, cluster.proxies[0].imap, members[0]))
    finally:
        cluster.cluster("backend", "update", "--status", "online", src)
        refresh_proxies(cluster)
        loop.close()


def test_direct_group_move_rewrites_the_backend_only(cluster: LocalCluster) -> None:
    src, dst = cluster.backends[0].host, cluster.backends[1].host
    members = [user(i) for i in range(54, 56)]
    make_group(cluster, "direct", src, dst, members)
    loop, sessions = hold(cluster, members)
    try:
        cluster.cluster("group", "move", "--direct", "DC1", "direct", dst)
        status = group_status(cluster, "direct")
        assert status["backend"] == dst and status["moving"] is None and status["alt_backend"] == dst
        assert closed_within(loop, sessions, 10)  # the old backend drops sessions it no longer owns
        assert asyncio.run(login_once(cluster.proxies[0].host, cluster.proxies[0].imap, members[0]))
        assert re.search(rf"user={re.escape(members[0])} proto=imap .* login ok",
                         log_text(node(cluster, dst).log_path))
        src_log = log_text(node(cluster, src).log_path)
        assert "event=cluster_user_group_move_started group=direct" not in src_log
    finally:
        loop.close()


# --- timeout, restart ------------------------------------------------------------------------------------


def reconfigure(cluster: LocalCluster, backend: BackendNode, **settings: str) -> str:
    """Rewrite settings of a backend's config and restart it; returns the original text."""
    original = backend.config.read_text()
    lines = [ln for ln in original.splitlines() if ln.split(" = ")[0] not in settings]
    lines[1:1] = [f"{k} = {v}" for k, v in settings.items()]
    backend.config.write_text("\n".join(lines) + "\n")
    cluster.restart_backend(backend)
    return original


def restore(cluster: LocalCluster, backend: BackendNode, original: str) -> None:
    backend.config.write_text(original)
    cluster.restart_backend(backend)


def test_a_user_not_moved_within_the_timeout_counts_as_moved(cluster: LocalCluster) -> None:
    src_node, dst = cluster.backends[0], cluster.backends[1].host
    members = [user(60)]
    make_group(cluster, "slow", src_node.host, dst, members)
    assert asyncio.run(login_once(cluster.proxies[0].host, cluster.proxies[0].imap, members[0]))
    # doveadm refuses this backend now, so it can never confirm the user's sessions are gone
    original = reconfigure(cluster, src_node, doveadm_password="not-the-password",
                           cluster_user_move_timeout="2 secs")
    try:
        cluster.cluster("group", "move", "DC1", "slow", dst)
        started = time.monotonic()
        assert cluster.cluster("group", "access", "slow").stdout.strip() == "slow: started"
        wait_until(lambda: group_status(cluster, "slow")["backend"] == dst, 30, "the move to finish")
        assert time.monotonic() - started >= 2.0
        text = log_text(src_node.log_path)
        assert re.search(rf"event=cluster_user_move_finished user={re.escape(members[0])} dest_host={dst} "
                         r"error=doveadm who: HTTP 401", text)
        assert re.search(r"event=cluster_user_group_move_finished group=slow .*moved_users=0 failed_users=1",
                         text)
    finally:
        restore(cluster, src_node, original)


# --- LMTP deliveries as accesses ---------------------------------------------------------------------------


def test_an_lmtp_delivery_alone_starts_a_pending_group_move(cluster: LocalCluster) -> None:
    src_node, dst = cluster.backends[0], cluster.backends[1].host
    name = user(56)
    make_group(cluster, "lm-start", src_node.host, dst, [name])
    cluster.cluster("group", "move", "DC1", "lm-start", dst)
    assert group_status(cluster, "lm-start")["moving"]
    conn = lmtp_connection(cluster)
    try:
        code, text = deliver_one(conn, name, "lm-start 1")
    finally:
        conn.quit()
    assert code == 250, text
    # no login and no `group access`: the RCPT at the source started the move
    wait_until(lambda: group_status(cluster, "lm-start")["backend"] == dst, 30, "the move to finish")
    status = group_status(cluster, "lm-start")
    assert status["moving"] is None and status["alt_backend"] == src_node.host
    text = log_text(src_node.log_path)
    assert re.search(rf"rcpt={re.escape(name)} client=\S+ dovecot: 250", text)
    assert "event=cluster_user_group_move_started group=lm-start" in text
    assert re.search(rf"event=cluster_user_move_finished user={re.escape(name)} dest_host={re.escape(dst)} error=\n",
                     text)
    assert subjects(cluster, name) == ["lm-start 1"]


def test_an_open_lmtp_transaction_holds_its_recipients_move(cluster: LocalCluster) -> None:
    src_node, dst = cluster.backends[0], cluster.backends[1].host
    name = user(57)
    make_group(cluster, "lm-hold", src_node.host, dst, [name])
    conn = lmtp_connection(cluster)
    try:
        assert conn.mail("mta@example.org")[0] == 250
        assert conn.rcpt(name)[0] == 250  # accepted by the source's Dovecot, the message not sent yet
        cluster.cluster("group", "move", "DC1", "lm-hold", dst)
        assert cluster.cluster("group", "access", "lm-hold").stdout.strip() == "lm-hold: started"
        started = f"event=cluster_user_move_started user={name} "
        wait_until(lambda: started in log_text(src_node.log_path), 20, "the user's move to start")
        # the executor waits for the transaction (up to cluster_user_move_timeout, 31 s here)
        assert f"event=cluster_user_move_finished user={name} " not in log_text(src_node.log_path)
        assert group_status(cluster, "lm-hold")["moving"]
        code, text = conn.data(mail("lm-hold 1"))
        assert code == 250, text
        wait_until(lambda: group_status(cluster, "lm-hold")["backend"] == dst, 30, "the move to finish")
        # a later delivery goes to the destination
        assert deliver_one(conn, name, "lm-hold 2")[0] == 250
    finally:
        conn.quit()
    src_log, dst_log = log_text(src_node.log_path), log_text(node(cluster, dst).log_path)
    assert re.search(rf"event=cluster_user_move_finished user={re.escape(name)} dest_host={re.escape(dst)} error=\n",
                     src_log)
    assert "aborted" not in src_log.split(started, 1)[1].split("event=cluster_user_move_finished", 1)[0]
    assert re.search(rf"rcpt={re.escape(name)} client=\S+ dovecot: 250", dst_log)
    assert sorted(subjects(cluster, name)) == ["lm-hold 1", "lm-hold 2"]


def test_an_lmtp_transaction_held_past_the_move_timeout_is_refused_and_retried_once(
        cluster: LocalCluster) -> None:
    src_node, dst = cluster.backends[0], cluster.backends[1].host
    name = user(58)
    make_group(cluster, "lm-abort", src_node.host, dst, [name])
    original = reconfigure(cluster, src_node, cluster_user_move_timeout="2 secs")
    try:
        conn = lmtp_connection(cluster)
        try:
            assert conn.mail("mta@example.org")[0] == 250
            assert conn.rcpt(name)[0] == 250
            cluster.cluster("group", "move", "DC1", "lm-abort", dst)
            cluster.cluster("group", "access", "lm-abort")
            wait_until(lambda: "lmtp transaction aborted: recipient moved" in log_text(src_node.log_path), 20,
                       "the transaction to be aborted")
            code, reply = conn.data(mail("lm-abort 1"))
            assert code == 451 and re.match(rb"4\.4\.0 <[^>]+> Proxy failed \(.*recipient moved", reply), reply
            wait_until(lambda: group_status(cluster, "lm-abort")["backend"] == dst, 30, "the move to finish")
            assert subjects(cluster, name) == []  # the 4xx left no copy
            # the MTA retries: now at the destination
            assert deliver_one(conn, name, "lm-abort 1")[0] == 250
        finally:
            conn.quit()
        assert re.search(rf"rcpt={re.escape(name)} client=\S+ dovecot: 250",
                         log_text(node(cluster, dst).log_path))
        assert subjects(cluster, name) == ["lm-abort 1"]
    finally:
        restore(cluster, src_node, original)


def test_move_back_within_the_hour(cluster: LocalCluster) -> None:
    """A→B, then B→A while A still keeps its one-hour redirect to B: the users B migrates are owned
    by A (the destination of the running move), not referred back to B. An LMTP transaction at B
    holds the last user, so the move back stays open while the others log in again and again."""
    a_node, b_node = cluster.backends
    a, b = a_node.host, b_node.host
    members = [user(i) for i in range(66, 70)]  # migrated in this order; the last one is held
    held = members[-1]
    make_group(cluster, "back", a, b, members)
    cluster.cluster("group", "move", "DC1", "back", b)
    cluster.cluster("group", "access", "back")
    wait_until(lambda: group_status(cluster, "back")["backend"] == b, 30, "the move to B to finish")
    assert log_text(a_node.log_path).count("event=cluster_user_group_move_finished group=back ") == 1
    # everyone is served at B once, so B has all of them to migrate back
    assert all(asyncio.run(login_once(cluster.proxies[0].host, cluster.proxies[0].imap, n)) for n in members)
    conn = lmtp_connection(cluster)
    try:
        assert conn.mail("mta@example.org")[0] == 250
        assert conn.rcpt(held)[0] == 250  # at B, the group's backend now
        cluster.cluster("group", "move", "DC1", "back", a)
        assert cluster.cluster("group", "access", "back").stdout.strip() == "back: started"
        wait_until(lambda: f"event=cluster_user_move_started user={held} " in log_text(b_node.log_path), 30,
                   "B to migrate every user up to the held one")
        results = [asyncio.run(login_once(proxy.host, proxy.imap, name))
                   for _round in range(3) for proxy in cluster.proxies for name in members]
        status = group_status(cluster, "back")
        assert status["moving"] and status["backend"] == b, "the move back was not open during the logins"
        assert all(results), f"{results.count(False)} of {len(results)} logins failed during the move back"
        assert conn.data(mail("back 1"))[0] == 250
    finally:
        conn.quit()
    wait_until(lambda: group_status(cluster, "back")["backend"] == a, 30, "the move back to finish")
    assert all(asyncio.run(login_once(proxy.host, proxy.imap, name)) for proxy in cluster.proxies
               for name in members)
    a_log = log_text(a_node.log_path)
    for name in members:
        assert f"user={name} referred to {b}" not in a_log.split("event=cluster_user_group_move_finished "
                                                                 "group=back ", 1)[1]
    assert subjects(cluster, held) == ["back 1"]


def test_executor_killed_mid_move_resumes_after_restart(cluster: LocalCluster) -> None:
    src_node, dst = cluster.backends[0], cluster.backends[1].host
    members = [user(i) for i in range(61, 65)]
    make_group(cluster, "crash", src_node.host, dst, members)
    for name in members:
        assert asyncio.run(login_once(cluster.proxies[0].host, cluster.proxies[0].imap, name))
    original = reconfigure(cluster, src_node, doveadm_password="not-the-password",
                           cluster_user_move_timeout="3 secs")
    try:
        cluster.cluster("group", "move", "DC1", "crash", dst)
        cluster.cluster("group", "access", "crash")
        first_done = "event=cluster_user_move_finished user=" + members[0]
        wait_until(lambda: first_done in log_text(src_node.log_path), 20, "the first user moved")
        assert src_node.proc is not None
        src_node.proc.kill()  # no chance to clean up
        src_node.proc.wait()
        assert group_status(cluster, "crash")["moving"]  # the GeoDB still says: moving, on the source
        offset = len(log_text(src_node.log_path))
        restore(cluster, src_node, original)
        wait_until(lambda: group_status(cluster, "crash")["backend"] == dst, 60, "the resumed move to finish")
        after = log_text(src_node.log_path)[offset:]
        assert "resuming the move of group crash" in after
        assert f"event=cluster_user_move_started user={members[0]} " not in after  # done users stay done
        finished = re.search(r"event=cluster_user_group_move_finished group=crash .*moved_users=(\d+) "
                             r"failed_users=(\d+)", after)
        assert finished and int(finished[1]) + int(finished[2]) <= len(members) - 1
        assert group_status(cluster, "crash")["moving"] is None
    finally:
        if src_node.config.read_text() != original:
            restore(cluster, src_node, original)


# --- user move, kick ------------------------------------------------------------------------------------


def test_user_move_on_next_login_and_by_user_access(cluster: LocalCluster) -> None:
    b1, b2 = cluster.backends[0].host, cluster.backends[1].host
    first, second = user(70), user(71)
    make_group(cluster, "um-a", b1, b2, [first, second])
    make_group(cluster, "um-b", b2, b1, [])
    loop, sessions = hold(cluster, [first, second])
    try:
        cluster.cluster("user", "move", first, "um-b")
        cluster.cluster("user", "move", second, "um-b")
        assert json.loads(cluster.cluster("--json", "user", "status", first).stdout)["moving_group"] == "um-b"
        # the first user's next login performs its move at its current backend
        assert asyncio.run(login_once(cluster.proxies[0].host, cluster.proxies[0].imap, first))
        status = json.loads(cluster.cluster("--json", "user", "status", first).stdout)
        assert status["group"] == "um-b" and status["moving_group"] is None
        assert closed_within(loop, sessions[:1], 10)
        b2_log = log_text(node(cluster, b2).log_path)
        assert re.search(rf"user={re.escape(first)} proto=imap .* login ok", b2_log)
        # the second by `user access`, an access without logging in
        record = json.loads(cluster.cluster("--json", "user", "access", "-u", second).stdout)[0]
        assert (record["group"], record["backend"]) == ("um-b", b2)
        assert closed_within(loop, sessions[1:], 10)
        status = json.loads(cluster.cluster("--json", "user", "status", second).stdout)
        assert status["group"] == "um-b" and status["moving_group"] is None
        assert not (who(cluster, b1) & {first, second})
    finally:
        loop.close()


def test_kick_closes_every_session_of_the_user(cluster: LocalCluster) -> None:
    b1, b2 = cluster.backends[0].host, cluster.backends[1].host
    name, bystander = user(75), user(76)
    make_group(cluster, "kick", b1, b2, [name, bystander])
    loop, sessions = hold(cluster, [name, name, bystander])
    try:
        wait_until(lambda: {name, bystander} <= who(cluster, b1), 10, "sessions on the backend")
        result = json.loads(cluster.cluster("--json", "kick", name).stdout)
        assert [r["backend"] for r in result] == [b1] and result[0]["closed_sessions"] == 2
        assert closed_within(loop, sessions[:2], 10)
        assert name not in who(cluster, b1) and bystander in who(cluster, b1)
        assert not closed_within(loop, sessions[2:], 0.5)  # the other user keeps its session
        failed = cluster.cluster("kick", "nobody@example.test", check=False)
        assert failed.returncode == 1 and failed.stderr.startswith("palomar cluster: ")
    finally:
        loop.close()


# --- force-move ---------------------------------------------------------------------------------------------


def test_backend_force_move_start_update_stop(cluster: LocalCluster) -> None:
    b1, b2 = cluster.backends[0].host, cluster.backends[1].host
    names = [user(i) for i in range(80, 120)]
    make_group(cluster, "fm", b1, b2, names)
    move_id = UUID("5f0b7c1e-0000-4000-8000-000000000001")
    at30 = force_move_selected(move_id, names, 30)
    at60 = force_move_selected(move_id, names, 60)
    assert at30 and at30 < at60 < set(names)
    proxy = cluster.proxies[0]

    def landed(name: str) -> str:
        offset = {b.host: len(log_text(b.log_path)) for b in cluster.backends}
        assert asyncio.run(login_once(proxy.host, proxy.imap, name))
        pattern = re.compile(rf"user={re.escape(name)} proto=imap .* login ok")
        hits = [b.host for b in cluster.backends if pattern.search(log_text(b.log_path)[offset[b.host]:])]
        assert len(hits) == 1, hits
        return hits[0]

    sample = sorted(at30)[:3] + sorted(at60 - at30)[:3] + sorted(set(names) - at60)[:3]
    loop, sessions = hold(cluster, [sorted(at30)[0], sorted(set(names) - at60)[0]])
    try:
        cluster.cluster("backend", "force-move", "start", "--id", str(move_id), b1, "30", b2)
        assert {n: landed(n) for n in sample} == {n: (b2 if n in at30 else b1) for n in sample}
        assert closed_within(loop, sessions[:1], 10)  # a selected user's old session leaves b1
        assert not closed_within(loop, sessions[1:], 0.5)
        cluster.cluster("backend", "force-move", "update", b1, "60")
        assert {n: landed(n) for n in sample} == {n: (b2 if n in at60 else b1) for n in sample}
        assert group_status(cluster, "fm")["backend"] == b1  # force-move never touches the group
        cluster.cluster("backend", "force-move", "stop", b1)
        refresh_proxies(cluster)
        assert {n: landed(n) for n in sample} == dict.fromkeys(sample, b1)
    finally:
        loop.close()


# --- evacuate (last: it empties a backend) ------------------------------------------------------------------


def test_evacuate_moves_every_group_off_the_backend(cluster: LocalCluster) -> None:
    b1, b2 = cluster.backends[0].host, cluster.backends[1].host
    make_group(cluster, "ev-1", b2, b1, [user(100)])
    make_group(cluster, "ev-2", b2, b1, [user(101)])
    loop, sessions = hold(cluster, [user(100)])
    try:
        assert backend_status(cluster, b2)["groups"] >= 2
        result = json.loads(cluster.cluster("--json", "backend", "evacuate", b2).stdout)
        assert result["groups_moving"] >= 2 and result["stuck"] == []
        assert set(result["destinations"].values()) == {b1}
        status = backend_status(cluster, b2)
        assert status["status"] == "standby" and status["load_factor"] == 0
        wait_until(lambda: backend_status(cluster, b2)["groups"] == 0, 20, "the evacuation to finish")
        moved = group_status(cluster, "ev-1")
        assert moved["backend"] == b1 and moved["moving"] is None
        assert closed_within(loop, sessions, 10)
        assert asyncio.run(login_once(cluster.proxies[0].host, cluster.proxies[0].imap, user(100)))
        assert user(100) not in who(cluster, b2)
    finally:
        cluster.cluster("backend", "update", "--status", "online", "--load-factor", "100", b2)
        refresh_proxies(cluster)
        loop.close()


def test_admin_channel_refuses_a_wrong_secret(cluster: LocalCluster, tmp_path: Path) -> None:
    config = tmp_path / "admin.conf"
    text = cluster.admin_config.read_text().replace(f"cluster_hop_secret = {cluster.hop_secret}",
                                                     "cluster_hop_secret = wrong-secret")
    config.write_text(text)
    os.chmod(config, 0o600)
    run = cluster.palomar("cluster", "-c", str(config), "kick", user(1), check=False)
    assert run.returncode == 1
    assert "hop refused" in run.stderr and "Traceback" not in run.stderr
