"""Mixed client load for the chaos suite, with real stdlib clients through HAProxy: IMAP (login,
SELECT, FETCH, APPEND, IDLE), POP3, Submission and LMTP. Every message carries a unique
Message-ID; every answer the servers give (or the error instead of one) is recorded.

LMTP and Submission behave as an MTA does: a message that got no 2xx is retried later with the
same Message-ID, until it is accepted or the run's drain ends. APPEND is not retried. Nothing is
ever deleted, so the store can be counted afterwards.
"""

from __future__ import annotations

import imaplib
import poplib
import random
import select
import smtplib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chaos_rules import ACKED, REFUSED, UNCERTAIN, Message, Session

TIMEOUT = 30.0
"""Client socket timeout: longer than a fenced stall, so a cut is seen as the server's doing."""
MSGID_DOMAIN = "chaos.palomar.test"


@dataclass
class Ledger:
    """Everything the clients saw, shared by the load threads."""

    run_id: str
    messages: list[Message] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: int = 0

    def new_message(self, user: str, protocol: str) -> Message:
        with self.lock:
            self._counter += 1
            message = Message(f"<{self.run_id}.{self._counter}@{MSGID_DOMAIN}>", user, protocol)
            self.messages.append(message)
            return message

    def session(self, session: Session) -> None:
        with self.lock:
            self.sessions.append(session)


def message_bytes(message: Message, sender: str) -> bytes:
    return (f"From: <{sender}>\r\nTo: <{message.user}>\r\nSubject: chaos {message.protocol}\r\n"
            f"Message-ID: {message.msgid}\r\n\r\nchaos suite message {message.msgid}\r\n").encode()


class SessionFailed(Exception):
    def __init__(self, step: str, error: str) -> None:
        super().__init__(f"{step}: {error}")
        self.step = step
        self.error = error


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


# --- one SMTP-family transaction (LMTP and Submission) ---------------------------------------------
def smtp_attempt(client: smtplib.SMTP, sender: str, message: Message) -> tuple[str, str]:
    """Send one message with one recipient on an open, greeted connection: (outcome, answer).

    A drop or a refusal before the final dot is sent means nothing was stored; after it, the
    outcome is uncertain unless the answer is 2xx.
    """
    data_sent = False
    try:
        code, text = client.mail(f"<{sender}>")
        if code != 250:
            return REFUSED, f"MAIL {code} {text.decode(errors='replace')}"
        code, text = client.rcpt(f"<{message.user}>")
        if code not in (250, 251):
            client.rset()
            return REFUSED, f"RCPT {code} {text.decode(errors='replace')}"
        code, text = client.docmd("DATA")
        if code != 354:
            return REFUSED, f"DATA {code} {text.decode(errors='replace')}"
        body = smtplib.quotedata(message_bytes(message, sender).decode()).encode()
        data_sent = True
        client.send(body + b"\r\n.\r\n")
        code, text = client.getreply()
    except (smtplib.SMTPException, OSError) as exc:
        return (UNCERTAIN if data_sent else REFUSED), _describe(exc)
    answer = f"{code} {text.decode(errors='replace')}"
    return (ACKED if 200 <= code < 300 else UNCERTAIN), answer


@dataclass
class RetryQueue:
    """Messages an MTA would keep in its queue: retried after a growing delay."""

    items: list[tuple[float, int, Message]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, message: Message, now: float) -> None:
        delay = min(10.0, 1.0 * 2 ** min(len(message.outcomes) - 1, 4))
        with self.lock:
            self.items.append((now + delay, len(message.outcomes), message))

    def due(self, now: float) -> Message | None:
        with self.lock:
            for index, (when, _, message) in enumerate(self.items):
                if when <= now:
                    del self.items[index]
                    return message
        return None

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)


# --- the load ------------------------------------------------------------------------------------
@dataclass
class Target:
    host: str
    imap: int
    pop3: int
    submission: int
    lmtp: int
    users: list[tuple[str, str]]


class Load:
    """Client threads; `stop` ends new work, `drain` then retries queued messages until `drain_until`."""

    def __init__(self, target: Target, ledger: Ledger, seed: int, *, imap_workers: int = 3) -> None:
        self.target = target
        self.ledger = ledger
        self.seed = seed
        self.imap_workers = imap_workers
        self.stopping = threading.Event()
        self.drain_until = 0.0
        self.queues = {"lmtp": RetryQueue(), "submission": RetryQueue()}
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        workers: list[tuple[str, Callable[[random.Random], None]]] = [
            *((f"imap{i}", self._imap_session) for i in range(self.imap_workers)),
            ("pop3", self._pop3_session), ("lmtp", self._lmtp_session), ("submission", self._submission_session)]
        for index, (name, work) in enumerate(workers):
            rng = random.Random(f"{self.seed}-{index}")
            thread = threading.Thread(target=self._loop, args=(work, rng), name=f"chaos-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, drain: float) -> None:
        """Stop starting sessions, retry what is queued for at most `drain` seconds, wait for the threads."""
        self.drain_until = time.monotonic() + drain
        self.stopping.set()
        for thread in self.threads:
            thread.join(drain + 2 * TIMEOUT + 10)

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def _loop(self, work: Callable[[random.Random], None], rng: random.Random) -> None:
        while True:
            if self.stopping.is_set() and (work in (self._imap_session, self._pop3_session)
                                           or time.monotonic() > self.drain_until
                                           or not self._queue_of(work)):
                return
            work(rng)
            self.stopping.wait(rng.uniform(0.05, 0.3))  # the clients' think time

    def _queue_of(self, work: Callable[[random.Random], None]) -> RetryQueue:
        return self.queues["lmtp" if work == self._lmtp_session else "submission"]

    def _user(self, rng: random.Random) -> tuple[str, str]:
        return rng.choice(self.target.users)

    def _record(self, protocol: str, start: float, step: str, error: str) -> None:
        self.ledger.session(Session(protocol, start, time.time(), not error, step, error))

    # IMAP: login, SELECT, FETCH, sometimes APPEND and IDLE, LOGOUT
    def _imap_session(self, rng: random.Random) -> None:
        user, password = self._user(rng)
        start, step = time.time(), "connect"
        try:
            imap = imaplib.IMAP4(self.target.host, self.target.imap, timeout=TIMEOUT)
            logged_out = False
            try:
                step = "login"
                _ok(imap.login(user, password), step)
                step = "select"
                typ, data = imap.select("INBOX")
                _ok((typ, data), step)
                exists = int(data[0] or 0)
                if exists:
                    step = "fetch"
                    first = max(1, exists - 4)
                    _ok(imap.fetch(f"{first}:*", "(FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"), step)
                if rng.random() < 0.5:
                    step = "append"
                    self._append(imap, user)
                if rng.random() < 0.3:
                    step = "idle"
                    _idle(imap, rng.uniform(1.0, 4.0))
                step = "logout"
                imap.logout()
                logged_out = True
            finally:
                if not logged_out:
                    imap.shutdown()
        except SessionFailed as exc:
            self._record("imap", start, exc.step, exc.error)
            return
        except (imaplib.IMAP4.error, OSError, EOFError) as exc:
            self._record("imap", start, step, _describe(exc))
            return
        self._record("imap", start, "", "")

    def _append(self, imap: imaplib.IMAP4, user: str) -> None:
        message = self.ledger.new_message(user, "imap-append")
        try:
            typ, data = imap.append("INBOX", None, None, message_bytes(message, user))
        except (imaplib.IMAP4.error, OSError, EOFError) as exc:
            message.outcomes.append(UNCERTAIN)
            message.answers.append(_describe(exc))
            raise
        message.outcomes.append(ACKED if typ == "OK" else UNCERTAIN)
        message.answers.append(f"{typ} {data[0]!r}")
        _ok((typ, data), "append")

    def _pop3_session(self, rng: random.Random) -> None:
        user, password = self._user(rng)
        start, step = time.time(), "connect"
        try:
            pop = poplib.POP3(self.target.host, self.target.pop3, timeout=TIMEOUT)
            try:
                step = "login"
                pop.user(user)
                pop.pass_(password)
                step = "stat"
                count, _ = pop.stat()
                if count:
                    step = "retr"
                    pop.retr(count)
                step = "quit"
                pop.quit()
            finally:
                pop.close()
        except (poplib.error_proto, OSError, EOFError) as exc:
            self._record("pop3", start, step, _describe(exc))
            return
        self._record("pop3", start, "", "")

    def _lmtp_session(self, rng: random.Random) -> None:
        def connect() -> smtplib.SMTP:
            return smtplib.LMTP(self.target.host, self.target.lmtp, local_hostname="mta.chaos.test", timeout=TIMEOUT)

        self._smtp_session(rng, "lmtp", "mta@example.org", connect)

    def _submission_session(self, rng: random.Random) -> None:
        user, password = self._user(rng)

        def connect() -> smtplib.SMTP:
            client = smtplib.SMTP(self.target.host, self.target.submission, local_hostname="client.chaos.test",
                                  timeout=TIMEOUT)
            try:
                client.login(user, password)
            except BaseException:
                client.close()
                raise
            return client

        self._smtp_session(rng, "submission", user, connect)

    def _smtp_session(self, rng: random.Random, protocol: str, sender: str,
                      connect: Callable[[], smtplib.SMTP]) -> None:
        """One connection, up to five messages (queued retries first). A message that got no 2xx is
        queued again; after a failed transaction the rest of the batch is queued untried."""
        queue = self.queues[protocol]
        batch: list[Message] = []
        for _ in range(5):
            message = queue.due(time.monotonic())
            if message is None and not self.stopping.is_set():
                message = self.ledger.new_message(self._user(rng)[0], protocol)
            if message is not None:
                batch.append(message)
        if not batch:
            return
        start, step, error = time.time(), "connect", ""
        client: smtplib.SMTP | None = None
        try:
            client = connect()
            step = "hello"
            client.ehlo_or_helo_if_needed()
        except (smtplib.SMTPException, OSError) as exc:
            error = _describe(exc)
            batch[0].outcomes.append(REFUSED)
            batch[0].answers.append(f"{step}: {error}")
            if client is not None:
                client.close()
                client = None
        for message in batch:
            if client is not None and not error:
                step = "transaction"
                outcome, answer = smtp_attempt(client, sender, message)
                message.outcomes.append(outcome)
                message.answers.append(answer)
                if outcome != ACKED:
                    error = answer
            if _retry(message):
                queue.put(message, time.monotonic())
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
        self._record(protocol, start, step if error else "", error)


def _retry(message: Message) -> bool:
    """An MTA keeps a message without a 2xx in its queue, unless the recipient was refused for good."""
    if message.outcomes and message.outcomes[-1] == ACKED:
        return False
    return not (message.answers and message.answers[-1].startswith("RCPT 5"))


def _ok(response: tuple[str, list[object]], step: str) -> None:
    typ, data = response
    if typ != "OK":
        raise SessionFailed(step, f"{typ} {data!r}"[:200])


def _idle(imap: imaplib.IMAP4, seconds: float) -> None:
    """IDLE for `seconds` (imaplib in Python 3.11 has no idle()), then DONE and the tagged OK."""
    tag = imap._new_tag().decode()  # type: ignore[attr-defined]
    imap.send(f"{tag} IDLE\r\n".encode())
    line = imap.readline()
    if not line.startswith(b"+"):
        raise SessionFailed("idle", f"no continuation: {line[:100]!r}")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        # untagged EXISTS/RECENT while mail arrives
        if select.select([imap.socket()], [], [], left)[0] and not imap.readline():
            raise SessionFailed("idle", "connection closed during IDLE")
    imap.send(b"DONE\r\n")
    while True:
        line = imap.readline()
        if not line:
            raise SessionFailed("idle", "connection closed after DONE")
        if line.startswith(tag.encode() + b" "):
            if not line.startswith(f"{tag} OK".encode()):
                raise SessionFailed("idle", line[:100].decode(errors="replace"))
            return
