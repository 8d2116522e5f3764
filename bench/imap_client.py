"""A small asyncio IMAP client for load: login loops, idle sessions and large fetches.

It speaks just enough IMAP for the benchmark (tagged commands, literals in responses,
IDLE) and times each step with `time.perf_counter`. It runs on the same cores as the
servers, so it is kept lean: streams, no parsing beyond finding the tagged line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from dataclasses import dataclass, field

READ_LIMIT = 1 << 20
LITERAL_SUFFIX = b"}\r\n"


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_UNVERIFIED = _unverified_context()


class ImapError(Exception):
    """The server answered NO/BAD/BYE, or closed the connection, where OK was expected."""


@dataclass(frozen=True)
class Target:
    """Where sessions go and how they log in.

    `master_user`/`master_password` set: SASL PLAIN with authzid=user, authcid=master (what
    palomar's Dovecot backends accept); otherwise LOGIN with the user's own password.
    """

    name: str
    host: str
    port: int
    master_user: str | None = None
    master_password: str | None = field(default=None, repr=False)
    tls: bool = False
    """Implicit TLS (IMAPS); the certificate is not verified (loopback, self-signed)."""
    proxy_header: bytes = b""
    """Sent in clear first (a PROXY v2 header for Dovecot's `haproxy = yes` listeners); TLS, if any,
    starts after it, as HAProxy's `send-proxy-v2` with `ssl` does."""

    def login_command(self, user: str, password: str) -> bytes:
        if self.master_user is not None:
            assert self.master_password is not None
            token = f"{user}\0{self.master_user}\0{self.master_password}".encode()
            return b"AUTHENTICATE PLAIN " + base64.b64encode(token)
        return f'LOGIN "{user}" "{password}"'.encode()


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)


class Connection:
    """One IMAP connection: tagged commands, responses read up to their tagged line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._tag = 0

    @classmethod
    async def open(cls, target: Target) -> Connection:
        if target.proxy_header:
            reader, writer = await asyncio.open_connection(target.host, target.port, limit=READ_LIMIT)
            writer.write(target.proxy_header)
            await writer.drain()
            if target.tls:
                await writer.start_tls(_UNVERIFIED)
        else:
            reader, writer = await asyncio.open_connection(target.host, target.port, limit=READ_LIMIT,
                                                           ssl=_UNVERIFIED if target.tls else None)
        conn = cls(reader, writer)
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            conn.abort()
            raise ImapError(f"greeting: {greeting[:80]!r}")
        return conn

    def next_tag(self) -> bytes:
        self._tag += 1
        return b"a%d" % self._tag

    async def command(self, line: bytes, sink: list[bytes] | None = None) -> bytes:
        """Send `line`, read to the tagged reply (literals included), return it; raise unless OK."""
        tag = self.next_tag()
        self.writer.write(tag + b" " + line + b"\r\n")
        return await self.read_tagged(tag, sink)

    async def read_tagged(self, tag: bytes, sink: list[bytes] | None = None) -> bytes:
        prefix = tag + b" "
        while True:
            line = await self.reader.readline()
            if not line:
                raise ImapError("connection closed")
            if line.endswith(LITERAL_SUFFIX):
                size = int(line[line.rindex(b"{") + 1:-len(LITERAL_SUFFIX)].rstrip(b"+"))
                literal = await self.reader.readexactly(size)
                if sink is not None:
                    sink.append(literal)
                continue
            if line.startswith(prefix):
                if not line.startswith(prefix + b"OK"):
                    raise ImapError(line.decode(errors="replace").strip())
                return line
            if line.startswith(b"* BYE"):
                raise ImapError(line.decode(errors="replace").strip())

    async def login(self, target: Target, creds: Credentials) -> None:
        await self.command(target.login_command(creds.user, creds.password))

    async def append(self, mailbox: str, message: bytes) -> None:
        """APPEND with a synchronizing literal (every server here accepts it)."""
        tag = self.next_tag()
        self.writer.write(tag + f' APPEND "{mailbox}" {{{len(message)}}}\r\n'.encode())
        line = await self.reader.readline()
        if not line.startswith(b"+"):
            raise ImapError(f"APPEND: {line[:80]!r}")
        self.writer.write(message)
        self.writer.write(b"\r\n")
        await self.read_tagged(tag)

    async def idle_start(self) -> bytes:
        tag = self.next_tag()
        self.writer.write(tag + b" IDLE\r\n")
        line = await self.reader.readline()
        if not line.startswith(b"+"):
            raise ImapError(f"IDLE: {line[:80]!r}")
        return tag

    async def idle_done(self, tag: bytes) -> None:
        self.writer.write(b"DONE\r\n")
        await self.read_tagged(tag)

    async def logout(self) -> None:
        tag = self.next_tag()
        self.writer.write(tag + b" LOGOUT\r\n")
        with contextlib.suppress(ImapError):
            await self.read_tagged(tag)
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    def abort(self) -> None:
        self.writer.transport.abort()


# --- login loop ---------------------------------------------------------------------------------


@dataclass
class LoginLoopResult:
    sessions: int = 0
    errors: int = 0
    wall: float = 0.0
    session_ms: list[float] = field(default_factory=list)
    login_ms: list[float] = field(default_factory=list)
    first_errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sessions / self.wall if self.wall else 0.0


async def one_session(target: Target, creds: Credentials) -> tuple[float, float]:
    """connect, greeting, login, SELECT INBOX, LOGOUT, close: (session seconds, login seconds)."""
    started = time.perf_counter()
    conn = await Connection.open(target)
    try:
        login_started = time.perf_counter()
        await conn.login(target, creds)
        login_s = time.perf_counter() - login_started
        await conn.command(b"SELECT INBOX")
        await conn.logout()
    except BaseException:
        conn.abort()
        raise
    return time.perf_counter() - started, login_s


async def login_loop(target: Target, users: list[Credentials], *, concurrency: int, duration: float,
                     max_sessions: int, timeout: float = 30.0) -> LoginLoopResult:
    """`concurrency` workers run sessions back to back until `duration` or `max_sessions` is reached."""
    result = LoginLoopResult()
    started = time.perf_counter()
    deadline = started + duration
    counter = 0

    async def worker(offset: int) -> None:
        nonlocal counter
        index = offset
        while time.perf_counter() < deadline and counter < max_sessions:
            counter += 1
            creds = users[index % len(users)]
            index += concurrency
            try:
                async with asyncio.timeout(timeout):
                    session_s, login_s = await one_session(target, creds)
            except (OSError, ImapError, TimeoutError, asyncio.IncompleteReadError) as exc:
                result.errors += 1
                if len(result.first_errors) < 5:
                    result.first_errors.append(f"{type(exc).__name__}: {exc}")
                continue
            result.sessions += 1
            result.session_ms.append(session_s * 1000)
            result.login_ms.append(login_s * 1000)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    result.wall = time.perf_counter() - started
    return result


# --- idle sessions ------------------------------------------------------------------------------


@dataclass
class IdleSession:
    conn: Connection
    idle_tag: bytes


@dataclass
class IdleHold:
    sessions: list[IdleSession] = field(default_factory=list)
    errors: int = 0
    setup_seconds: float = 0.0
    first_errors: list[str] = field(default_factory=list)


async def open_idle(target: Target, users: list[Credentials], count: int, *,
                    concurrency: int = 50, timeout: float = 60.0) -> IdleHold:
    """Open `count` sessions, each logged in, INBOX selected and in IDLE, users round-robin."""
    hold = IdleHold()
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def one(index: int) -> None:
        async with gate:
            conn = None
            try:
                async with asyncio.timeout(timeout):
                    conn = await Connection.open(target)
                    await conn.login(target, users[index % len(users)])
                    await conn.command(b"SELECT INBOX")
                    tag = await conn.idle_start()
                hold.sessions.append(IdleSession(conn, tag))
            except (OSError, ImapError, TimeoutError, asyncio.IncompleteReadError) as exc:
                hold.errors += 1
                if len(hold.first_errors) < 5:
                    hold.first_errors.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.abort()

    await asyncio.gather(*(one(i) for i in range(count)))
    hold.setup_seconds = time.perf_counter() - started
    return hold


async def close_idle(hold: IdleHold, *, concurrency: int = 100, timeout: float = 60.0) -> int:
    """End IDLE and log out of every held session; returns how many were still alive (answered OK)."""
    gate = asyncio.Semaphore(concurrency)
    alive = 0

    async def one(session: IdleSession) -> None:
        nonlocal alive
        async with gate:
            try:
                async with asyncio.timeout(timeout):
                    await session.conn.idle_done(session.idle_tag)
                    alive += 1
                    await session.conn.logout()
            except (OSError, ImapError, TimeoutError, asyncio.IncompleteReadError):
                session.conn.abort()

    await asyncio.gather(*(one(s) for s in hold.sessions))
    return alive


# --- large fetch ----------------------------------------------------------------------------------


def large_message(size: int) -> bytes:
    """A plain-text message of about `size` bytes: headers and 76-character CRLF lines."""
    header = (b"From: bench@example.test\r\nTo: bench@example.test\r\nSubject: large fetch benchmark\r\n"
              b"Message-ID: <large-fetch@example.test>\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: text/plain; charset=us-ascii\r\n\r\n")
    line = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 2)[:76] + b"\r\n"
    return header + line * max(1, (size - len(header)) // len(line))


async def open_examined(target: Target, creds: Credentials, mailbox: str) -> Connection:
    """A logged-in connection with `mailbox` open read-only."""
    conn = await Connection.open(target)
    try:
        await conn.login(target, creds)
        await conn.command(f'EXAMINE "{mailbox}"'.encode())
    except BaseException:
        conn.abort()
        raise
    return conn


async def timed_fetch(conn: Connection) -> tuple[int, float]:
    """FETCH 1 BODY.PEEK[]: (message bytes, seconds)."""
    sink: list[bytes] = []
    started = time.perf_counter()
    await conn.command(b"FETCH 1 BODY.PEEK[]", sink)
    elapsed = time.perf_counter() - started
    if not sink:
        raise ImapError("FETCH returned no literal")
    return len(sink[0]), elapsed


async def fetch_times(target: Target, creds: Credentials, mailbox: str, repeats: int) -> tuple[int, list[float]]:
    """EXAMINE `mailbox`, FETCH 1 BODY.PEEK[] once to warm caches, then `repeats` timed fetches."""
    conn = await open_examined(target, creds, mailbox)
    try:
        size, _ = await timed_fetch(conn)
        times = [(await timed_fetch(conn))[1] for _ in range(repeats)]
        await conn.logout()
    except BaseException:
        conn.abort()
        raise
    return size, times


# --- small commands -------------------------------------------------------------------------------


def small_message(index: int) -> bytes:
    """A short message (a few hundred bytes) for the small-command run."""
    return (f"From: bench@example.test\r\nTo: bench@example.test\r\nSubject: small command {index}\r\n"
            f"Message-ID: <small-{index}@example.test>\r\n\r\nA short body, line {index}.\r\n").encode()


def small_command_lines(count: int, messages: int) -> list[bytes]:
    """`count` commands alternating FETCH FLAGS and FETCH HEADER, walking over `messages` messages."""
    return [(b"FETCH %d FLAGS" if i % 2 == 0 else b"FETCH %d BODY.PEEK[HEADER]") % (i // 2 % messages + 1)
            for i in range(count)]


async def timed_commands(conn: Connection, lines: list[bytes]) -> list[float]:
    """Send each line after the previous one's tagged OK (no pipelining); seconds per command."""
    times = []
    for line in lines:
        started = time.perf_counter()
        await conn.command(line, [])
        times.append(time.perf_counter() - started)
    return times
