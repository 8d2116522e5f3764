"""Two sites of `palomar demo --sites 2`, each in a network namespace of its own, seen from real clients.

Shared by the partition tests on SQLite (test_site_partition.py) and on a two-datacenter Cassandra
(cassandra_outage/test_two_dc_sites.py): logins and LMTP through each site's HAProxy from inside
that site's namespace, where they ended (the backends' logs), what each site's GeoDB says.
"""

from __future__ import annotations

import asyncio
import imaplib
import re
import smtplib
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from netns_tools import setns

from palomar.devcluster.cluster import LocalCluster
from palomar.geodb.repository import GeoDB


def run_in(namespace: str, fn: Callable[[], Any]) -> Any:
    """Run `fn` in a thread that has joined `namespace` (what it starts, processes too, lives there)."""
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            setns(f"/run/netns/{namespace}")
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def succeeds(fn: Callable[[], object]) -> bool:
    try:
        return fn() is not False
    except (OSError, EOFError, imaplib.IMAP4.error, smtplib.SMTPException):
        return False


def reaches(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def timed_value(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds `fn` took, what it returned)."""
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def timed(fn: Callable[[], object]) -> float:
    return timed_value(fn)[0]


@dataclass
class SitePair:
    namespaces: dict[str, str]
    """Site name -> the network namespace its processes run in."""
    dc1: LocalCluster
    dc2: LocalCluster
    domain: str = "partition.test"
    """Of the Message-IDs `deliver` makes (and `stored` counts)."""
    acked: list[str] = field(default_factory=list)
    """Message-IDs of every LMTP message acknowledged with 250 (`deliver_acked`), over the whole module."""

    def site(self, name: str) -> LocalCluster:
        return self.dc1 if name == "DC1" else self.dc2

    def namespace(self, name: str) -> str:
        return self.namespaces[name]

    def password(self, user: str) -> str:
        return next(u.password for u in self.dc1.users if u.name == user)

    def imap_login(self, entry: str, user: str) -> None:
        """LOGIN, SELECT, LOGOUT through `entry`'s HAProxy (an imaplib error if it fails)."""
        cluster = self.site(entry)

        def login() -> None:
            client = imaplib.IMAP4(cluster.lb_host, cluster.lb_imap, timeout=20)
            try:
                client.login(user, self.password(user))
                client.select("INBOX")
            finally:
                client.logout()
        run_in(self.namespace(entry), login)

    def deliver(self, entry: str, user: str) -> str | None:
        """One LMTP message with a new Message-ID through `entry`'s HAProxy; its Message-ID if accepted."""
        cluster = self.site(entry)
        message_id = f"<{uuid.uuid4().hex}@{self.domain}>"
        body = f"From: a@example.test\r\nTo: {user}\r\nMessage-ID: {message_id}\r\nSubject: p\r\n\r\nbody\r\n"

        def send() -> bool:
            with smtplib.LMTP(cluster.lb_host, cluster.lb_lmtp, timeout=20) as lmtp:
                try:
                    refused = lmtp.sendmail("a@example.test", [user], body)
                except smtplib.SMTPRecipientsRefused:
                    return False
                return not refused
        return message_id if run_in(self.namespace(entry), send) else None

    def deliver_acked(self, entry: str, user: str) -> None:
        """One message that must be accepted; remembered for the exactly-once check."""
        message_id = self.deliver(entry, user)
        assert message_id is not None, (entry, user)
        self.acked.append(message_id)

    def check_consistent(self, moves_before: int) -> None:
        """In each site one backend per user over the whole run; no group or user move since
        `moves_before`; every acknowledged message stored exactly once over both sites' stores."""
        for (site, user), backends in self.served().items():
            assert len(backends) == 1, (site, user, backends)
        assert self.moves() == moves_before
        stored = [mid for u in self.dc1.users for mid in self.stored(u.name)]  # both sites' stores each
        assert sorted(stored) == sorted(self.acked)

    def stored(self, user: str) -> list[str]:
        """Every Message-ID in `user`'s INBOX in both sites' stores."""
        return self.stored_in("DC1", user) + self.stored_in("DC2", user)

    def stored_in(self, site: str, user: str) -> list[str]:
        """The Message-IDs in `user`'s INBOX in `site`'s store (doveadm on one of its backends)."""
        result = self.site(site).backends[0].dovecot.doveadm("fetch", "-u", user, "hdr.message-id", "mailbox",
                                                             "INBOX", "ALL", check=False)
        return re.findall(rf"<[0-9a-f]+@{re.escape(self.domain)}>", result.stdout)

    def served(self) -> dict[tuple[str, str], set[str]]:
        """(site, user) -> the backends whose logs show a successful login of the user."""
        seen: dict[tuple[str, str], set[str]] = {}
        for cluster in (self.dc1, self.dc2):
            for node in cluster.backends:
                text = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
                for user in re.findall(r"user=(\S+) proto=\w+ client=\S+ login ok", text):
                    seen.setdefault((cluster.site, user), set()).add(node.host)
        return seen

    def logins_ok(self, site: str, user: str) -> int:
        """Successful IMAP logins of `user` in `site`'s backends' logs (written before the login answer)."""
        line = re.compile(rf"user={re.escape(user)} proto=imap client=\S+ login ok")
        return sum(len(line.findall(node.log_path.read_text(errors="replace")))
                   for node in self.site(site).backends if node.log_path.exists())

    def lands(self, entry: str, user: str, site: str) -> bool:
        """Whether an IMAP login of `user` through `entry`'s HAProxy succeeds on a backend of `site`."""
        before = self.logins_ok(site, user)
        return succeeds(lambda: self.imap_login(entry, user)) and self.logins_ok(site, user) > before

    def served_in(self, entry: str, user: str) -> str | None:
        """The site whose backend served an IMAP login of `user` through `entry`'s HAProxy (None: it failed)."""
        before = {site: self.logins_ok(site, user) for site in ("DC1", "DC2")}
        if not succeeds(lambda: self.imap_login(entry, user)):
            return None
        return next((site for site in before if self.logins_ok(site, user) > before[site]), None)

    def moves(self) -> int:
        return sum(len(re.findall(r"event=cluster_user(_group)?_move_started", node.log_path.read_text(errors="replace")))
                   for cluster in (self.dc1, self.dc2) for node in cluster.backends if node.log_path.exists())

    def on_geodb(self, read: Callable[[GeoDB, dict[uuid.UUID, str]], Awaitable[Any]], site: str = "DC1") -> Any:
        """`read(geodb, site names by id)` on the GeoDB as `site`'s servers see it (from its namespace)."""
        async def run() -> Any:
            engine = self.site(site).geodb_engine()
            await engine.open()
            db = GeoDB(engine)
            try:
                return await read(db, {s.id: s.name for s in await db.site_list()})
            finally:
                await db.close()
        return run_in(self.namespace(site), lambda: asyncio.run(run()))

    def reachability(self, site: str = "DC1") -> dict[tuple[str, str], bool]:
        async def read(db: GeoDB, sites: dict[uuid.UUID, str]) -> dict[tuple[str, str], bool]:
            return {(sites[r.src_site_id], sites[r.dest_site_id]): r.reachable
                    for src in sites for r in await db.reachability_list(src)}
        return self.on_geodb(read, site)

    def user_sites(self, user: str, site: str = "DC1") -> dict[str, str]:
        """Site -> the backend host `user` was last routed to there (the `user_sites` rows)."""
        async def read(db: GeoDB, sites: dict[uuid.UUID, str]) -> dict[str, str]:
            hosts = {b.id: b.host for site_id in sites for b in await db.backend_list(site_id)}
            return {sites[r.site_id]: hosts.get(r.backend_id, "") for r in await db.user_sites_list(user)}
        return self.on_geodb(read, site)
