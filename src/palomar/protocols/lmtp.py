"""LMTP (RFC 2033), sans-IO: the server side palomar's proxy shows to MTAs, with every
recipient handed to the caller for routing, and the client side palomar's backend uses to
deliver to its Dovecot LMTP.

LMTP differs from SMTP where it matters to a proxy: after the message, the server answers
once per accepted recipient, in RCPT order. The server core therefore asks the caller for
each RCPT reply (routing happens outside, asynchronously) and for the list of per-recipient
DATA replies, and holds back later pipelined commands meanwhile, so replies stay in order.
RCPTs pipelined behind a RCPT are handed out at once (one RcptRequest each, answered in order),
so the caller can route and forward them as a batch instead of one round trip each.
Reply texts follow Dovecot's LMTP server.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from palomar.protocols.smtp_syntax import (
    DotStuffer,
    DotUnstuffer,
    LineReader,
    LineTooLong,
    Reply,
    ReplyReader,
    SmtpSyntaxError,
    ehlo_keywords,
    format_reply,
    format_xclient,
    greeting_reply,
    hello_name_error,
    parse_command,
    parse_mail_from,
    parse_path,
    parse_rcpt_to,
    reply_line,
)

__all__ = [
    "OPTIONAL_CAPABILITIES",
    "RCPT_OK",
    "ClientEvent",
    "Close",
    "CommandReply",
    "DataAborted",
    "DataChunk",
    "DataEnd",
    "DataStart",
    "DeliveryReply",
    "Event",
    "LmtpClient",
    "LmtpFailure",
    "LmtpServer",
    "MailFrom",
    "RcptRequest",
    "Ready",
    "ServerState",
    "TransactionReset",
]

#: Extensions offered only when configured; the core implements each of them.
OPTIONAL_CAPABILITIES = frozenset({"CHUNKING", "SMTPUTF8", "DSN"})
RCPT_OK = "250 2.1.5 OK"
TOO_BIG = "Message size exceeds fixed maximum message size"
OK = "250 2.0.0 OK"
_MAIL_PARAMS = {"SIZE", "BODY"}
_DSN_MAIL_PARAMS = {"RET", "ENVID"}
_DSN_RCPT_PARAMS = {"NOTIFY", "ORCPT"}


def _out(reply: str) -> bytes:
    return reply_line(reply)


# --------------------------------------------------------------------------- server events


@dataclass(frozen=True)
class MailFrom:
    """MAIL FROM was accepted (the core answered `250 2.1.0 OK`); a new transaction began.
    `address` is "" for the null reverse path `<>`."""

    address: str
    params: dict[str, str | None]


@dataclass(frozen=True)
class RcptRequest:
    """Route this recipient, then answer with rcpt_reply(); the session waits until then. Several
    may be pending (pipelined RCPTs): rcpt_reply() answers the oldest."""

    address: str
    params: dict[str, str | None]


@dataclass(frozen=True)
class DataStart:
    """The message begins (`354` sent, or the first BDAT chunk); DataChunk events follow."""


@dataclass(frozen=True)
class DataChunk:
    """Message bytes, dot transparency already undone."""

    data: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"DataChunk(<{len(self.data)} bytes>)"


@dataclass(frozen=True)
class DataEnd:
    """The message is complete; answer with data_replies(), one reply per recipient listed."""

    size: int
    recipients: tuple[str, ...]


@dataclass(frozen=True)
class DataAborted:
    """The message was refused while it streamed in (the core answered every recipient):
    drop what DataChunk delivered."""

    reason: str


@dataclass(frozen=True)
class TransactionReset:
    """The transaction ended without a message (RSET, LHLO, QUIT, close): release whatever
    was set up for its recipients."""

    reason: str


@dataclass(frozen=True)
class Close:
    """Close the connection after sending data_to_send()."""

    reason: str


Event = MailFrom | RcptRequest | DataStart | DataChunk | DataEnd | DataAborted | TransactionReset | Close


def rcpt_batch(first: RcptRequest, pending: deque[Event]) -> list[RcptRequest]:
    """`first` and the RcptRequests right behind it, taken off `pending`: pipelined RCPTs the caller
    can route and forward together, answering them in order."""
    batch = [first]
    while pending and isinstance(pending[0], RcptRequest):
        batch.append(pending.popleft())  # type: ignore[arg-type]
    return batch


def ends_message(pending: Sequence[Event]) -> bool:
    """The message's end is the next event (it arrived with the last chunk): a caller streaming the
    message on can send that chunk together with the final dot instead of on its own."""
    return bool(pending) and isinstance(pending[0], DataEnd)


class ServerState(enum.Enum):
    COMMAND = "command"
    AWAIT_RCPT = "await-rcpt"
    DATA = "data"
    BDAT = "bdat"
    AWAIT_REPLIES = "await-replies"
    CLOSED = "closed"


@dataclass
class _Transaction:
    sender: str
    params: dict[str, str | None]
    smtputf8: bool
    recipients: list[str] = field(default_factory=list)
    pending: deque[str] = field(default_factory=deque)
    """Recipients handed out in RcptRequests and not answered yet, oldest first."""
    chunking: bool = False  # BDAT was used: DATA is no longer allowed
    size: int = 0
    too_big: bool = False


# --------------------------------------------------------------------------- server


class LmtpServer:
    """LMTP server core for the proxy side: validates the envelope, streams the message,
    and leaves every routing decision (RCPT and DATA replies) to the caller."""

    def __init__(
        self,
        *,
        hostname: str,
        capabilities: Iterable[str] = (),
        max_size: int | None = None,
        greeting: str = "LMTP Palomar ready.",
        max_line: int = 4096,
        max_recipients: int = 1000,
        max_bad_commands: int = 10,
        max_buffer: int = 4 << 20,
    ) -> None:
        self.extensions = frozenset(cap.upper() for cap in capabilities)
        unknown = self.extensions - OPTIONAL_CAPABILITIES
        if unknown:
            raise ValueError(f"unsupported LMTP capabilities: {', '.join(sorted(unknown))}")
        greeting_reply(hostname, greeting)  # refuses a bad host name or greeting before anything is sent
        if max_size is not None and max_size <= 0:
            raise ValueError("max_size must be positive")
        self.hostname = hostname
        self.max_size = max_size
        self.greeting_text = greeting
        self.max_recipients = max_recipients
        self.max_bad_commands = max_bad_commands
        self.max_buffer = max_buffer
        self.state = ServerState.COMMAND
        self.lhlo_name: str | None = None
        self.bad_commands = 0
        self._lines = LineReader(max_line)
        self._out = bytearray()
        self._tx: _Transaction | None = None
        self._unstuffer: DotUnstuffer | None = None
        self._chunk_left = 0
        self._chunk_size = 0
        self._chunk_last = False
        self._chunk_keep = False  # False: a refused BDAT chunk that is only skipped

    def __repr__(self) -> str:
        return f"<LmtpServer state={self.state.value}>"

    # ---- what the caller asks

    def lhlo_capabilities(self) -> list[str]:
        caps = ["8BITMIME", "ENHANCEDSTATUSCODES", "PIPELINING", *self.extensions]
        caps.append(f"SIZE {self.max_size}" if self.max_size else "SIZE")
        return sorted(caps)

    def greeting(self) -> bytes:
        return greeting_reply(self.hostname, self.greeting_text)

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def paused(self) -> bool:
        """Waiting for the caller's rcpt_reply() or data_replies(): stop reading the peer
        for now (pipelined input is buffered, up to `max_buffer`)."""
        return self.state in (ServerState.AWAIT_RCPT, ServerState.AWAIT_REPLIES)

    @property
    def in_transaction(self) -> bool:
        """Between MAIL FROM and the end of its DATA (or RSET): a stop lets it finish."""
        return self._tx is not None

    @property
    def recipients(self) -> tuple[str, ...]:
        """The accepted recipients of the current transaction, in RCPT order."""
        return tuple(self._tx.recipients) if self._tx else ()

    def receive(self, data: bytes) -> list[Event]:
        if self.state is ServerState.CLOSED:
            return []
        self._lines.feed(data)
        if self.paused:
            events: list[Event] = []
            if self._lines.buffered > self.max_buffer:
                self._close(f"421 4.7.0 {self.hostname} Input buffer full", "Input buffer full", events)
            return events
        return self._process()

    def rcpt_reply(self, reply: str | bytes) -> list[Event]:
        """Answer the oldest pending RcptRequest: a 2xx reply accepts the recipient (RCPT_OK is the
        usual one), 4xx/5xx refuse it. Once none is pending, processing of pipelined commands resumes."""
        if self.state is not ServerState.AWAIT_RCPT or self._tx is None or not self._tx.pending:
            raise RuntimeError("no RCPT is waiting for a reply")
        line = _final_reply(reply)
        self._out += line
        address = self._tx.pending.popleft()
        if line.startswith(b"2"):
            self._tx.recipients.append(address)
        if not self._tx.pending:
            self.state = ServerState.COMMAND
        return self._process()

    def data_replies(self, replies: Sequence[str | bytes]) -> list[Event]:
        """One reply per recipient of the DataEnd event, in RCPT order (RFC 2033 4.2)."""
        if self.state is not ServerState.AWAIT_REPLIES or self._tx is None:
            raise RuntimeError("no message is waiting for replies")
        if len(replies) != len(self._tx.recipients):
            raise ValueError(f"{len(self._tx.recipients)} replies needed, {len(replies)} given")
        lines = [_final_reply(reply) for reply in replies]
        for line in lines:
            self._out += line
        self._tx = None
        self.state = ServerState.COMMAND
        return self._process()

    # ---- input loop

    def _process(self) -> list[Event]:
        events: list[Event] = []
        while True:
            if self.state is ServerState.DATA:
                if not self._on_data(events):
                    break
            elif self.state is ServerState.BDAT:
                if not self._on_chunk(events):
                    break
            elif self.state is ServerState.COMMAND:
                try:
                    line = self._lines.next_line()
                except LineTooLong:
                    self._bad_command("500 5.5.2 Line too long", events)
                    continue
                if line is None:
                    break
                self._on_command(line, events)
            elif self.state is ServerState.AWAIT_RCPT:
                if not self._rcpt_ahead(events):
                    break
            else:
                break
        return events

    def _rcpt_ahead(self, events: list[Event]) -> bool:
        """While RCPTs wait for replies, hand out the next pipelined line too if it is a RCPT that
        becomes a RcptRequest. Anything else (another command, a RCPT the core itself refuses,
        an incomplete line) waits until every pending RCPT is answered, so replies stay in order."""
        line = self._lines.peek_line()
        tx = self._tx
        if line is None or tx is None or line[:5].upper() != b"RCPT ":
            return False
        try:
            command = parse_command(line)
        except SmtpSyntaxError:
            return False
        if command.verb != "RCPT":
            return False
        request = self._rcpt_request(tx, command.args, len(tx.pending))
        if not isinstance(request, RcptRequest):
            return False
        self._lines.next_line()
        tx.pending.append(request.address)
        events.append(request)
        return True

    def _close(self, reply: str, reason: str, events: list[Event]) -> None:
        self._reset(reason, events)
        self._out += _out(reply)
        self.state = ServerState.CLOSED
        self._lines.reset()
        events.append(Close(reason))

    def _reset(self, reason: str, events: list[Event]) -> None:
        if self._tx is not None:
            events.append(TransactionReset(reason))
            self._tx = None

    def _bad_command(self, reply: str, events: list[Event]) -> None:
        self.bad_commands += 1
        if self.bad_commands >= self.max_bad_commands:
            self._close(f"421 4.7.0 {self.hostname} Too many invalid commands.", "Too many invalid commands",
                        events)
        else:
            self._out += _out(reply)

    def _on_command(self, line: bytes, events: list[Event]) -> None:
        try:
            command = parse_command(line)
        except SmtpSyntaxError:
            self._bad_command("500 5.5.2 Invalid command syntax", events)
            return
        handler = _COMMANDS.get(command.verb)
        if command.verb == "BDAT" and "CHUNKING" in self.extensions:
            handler = LmtpServer._cmd_bdat
        if handler is None:
            if command.verb == "BDAT":  # CHUNKING not offered: still stay in step with the peer
                self._skip_chunk(command.args)
            self._bad_command("500 5.5.1 Unknown command", events)
            return
        handler(self, command.args, events)

    # ---- commands

    def _cmd_lhlo(self, args: str, events: list[Event]) -> None:
        name = args.strip(" ")
        error = hello_name_error(name)
        if error is not None:
            self._out += _out(error)
            return
        self._reset("LHLO", events)
        self.lhlo_name = name
        self._out += format_reply(250, None, [self.hostname, *self.lhlo_capabilities()])

    def _cmd_mail(self, args: str, events: list[Event]) -> None:
        if self.lhlo_name is None:
            self._out += _out("503 5.5.1 LHLO needed first")
            return
        if self._tx is not None:
            self._out += _out("503 5.5.0 MAIL already given")
            return
        try:
            address, params = parse_mail_from(args)
        except SmtpSyntaxError as exc:
            self._out += _out(f"501 5.5.4 {exc}")
            return
        allowed = _MAIL_PARAMS | ({"SMTPUTF8"} if "SMTPUTF8" in self.extensions else set())
        allowed |= _DSN_MAIL_PARAMS if "DSN" in self.extensions else set()
        if set(params) - allowed:
            self._out += _out("555 5.5.4 Unsupported parameters")
            return
        error = self._check_mail_params(params)
        if error:
            self._out += _out(error)
            return
        smtputf8 = "SMTPUTF8" in params
        if not smtputf8 and not address.isascii():
            self._out += _out("553 5.6.7 Non-ASCII address requires SMTPUTF8")
            return
        self._tx = _Transaction(address, params, smtputf8)
        self._out += _out("250 2.1.0 OK")
        events.append(MailFrom(address, dict(params)))

    def _check_mail_params(self, params: dict[str, str | None]) -> str | None:
        size = params.get("SIZE")
        if "SIZE" in params:
            if size is None or not size.isdigit() or len(size) > 20:
                return "501 5.5.4 Invalid SIZE parameter"
            if self.max_size is not None and int(size) > self.max_size:
                return f"552 5.3.4 {TOO_BIG}"
        if "BODY" in params and (params["BODY"] or "").upper() not in ("7BIT", "8BITMIME"):
            return "555 5.5.4 Unsupported BODY parameter value"
        if "SMTPUTF8" in params and params["SMTPUTF8"] is not None:
            return "501 5.5.4 SMTPUTF8 takes no value"
        if "RET" in params and (params["RET"] or "").upper() not in ("FULL", "HDRS"):
            return "501 5.5.4 Invalid RET parameter"
        if "ENVID" in params and not params["ENVID"]:
            return "501 5.5.4 Invalid ENVID parameter"
        return None

    def _cmd_rcpt(self, args: str, events: list[Event]) -> None:
        tx = self._tx
        if tx is None:
            self._out += _out("503 5.5.0 MAIL needed first")
            return
        request = self._rcpt_request(tx, args, 0)
        if isinstance(request, str):
            self._out += _out(request)
            return
        tx.pending.append(request.address)
        self.state = ServerState.AWAIT_RCPT
        events.append(request)

    def _rcpt_request(self, tx: _Transaction, args: str, pending: int) -> RcptRequest | str:
        """The RcptRequest for RCPT `args`, or the core's own refusal; `pending`: RCPTs of `tx`
        not answered yet (they may still be accepted, so they count against max_recipients)."""
        try:
            address, params = parse_rcpt_to(args)
        except SmtpSyntaxError as exc:
            return f"501 5.5.4 {exc}"
        allowed = _DSN_RCPT_PARAMS if "DSN" in self.extensions else set()
        if set(params) - allowed:
            return "555 5.5.4 Unsupported parameters"
        notify = params.get("NOTIFY")
        if "NOTIFY" in params and not _valid_notify(notify):
            return "501 5.5.4 Invalid NOTIFY parameter"
        if "ORCPT" in params and ";" not in (params["ORCPT"] or ""):
            return "501 5.5.4 Invalid ORCPT parameter"
        if not tx.smtputf8 and not address.isascii():
            return "553 5.6.7 Non-ASCII address requires SMTPUTF8"
        if tx.chunking:
            return "503 5.5.0 RCPT not allowed after BDAT"
        if len(tx.recipients) + pending >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        return RcptRequest(address, dict(params))

    def _cmd_data(self, args: str, events: list[Event]) -> None:
        error = self._data_refusal()
        if error is None and args:
            error = "501 5.5.4 Invalid parameters"
        if error is None and self._tx is not None and self._tx.chunking:
            error = "503 5.5.0 DATA cannot be used with BDAT"
        if error is not None:
            self._out += _out(error)
            return
        self._out += _out("354 OK")
        self._unstuffer = DotUnstuffer()
        self.state = ServerState.DATA
        events.append(DataStart())

    def _data_refusal(self) -> str | None:
        if self._tx is None:
            return "503 5.5.0 MAIL needed first"
        if not self._tx.recipients:
            return "503 5.5.0 No valid recipients"
        return None

    def _cmd_bdat(self, args: str, events: list[Event]) -> None:
        words = args.split(" ")
        if not 1 <= len(words) <= 2 or not words[0].isdigit() or len(words[0]) > 18 or (
            len(words) == 2 and words[1].upper() != "LAST"
        ):
            self._bad_command("501 5.5.4 Invalid BDAT parameters", events)
            return
        self._chunk_left = self._chunk_size = int(words[0])
        self._chunk_last = len(words) == 2
        error = self._data_refusal()
        if error is not None:
            self._chunk_keep = False
            self._out += _out(error)
        else:
            assert self._tx is not None
            self._chunk_keep = True
            if not self._tx.chunking:
                self._tx.chunking = True
                events.append(DataStart())
        self.state = ServerState.BDAT

    def _skip_chunk(self, args: str) -> None:
        size = args.split(" ", 1)[0]
        if size.isdigit() and len(size) <= 18:
            self._chunk_left, self._chunk_last, self._chunk_keep = int(size), False, False
            self.state = ServerState.BDAT

    def _cmd_rset(self, args: str, events: list[Event]) -> None:
        if args:
            self._out += _out("501 5.5.4 Invalid parameters")
            return
        self._reset("RSET", events)
        self._out += _out(OK)

    def _cmd_noop(self, args: str, events: list[Event]) -> None:
        self._out += _out(OK)

    def _cmd_vrfy(self, args: str, events: list[Event]) -> None:
        self._out += _out("252 2.3.3 Try RCPT instead")

    def _cmd_quit(self, args: str, events: list[Event]) -> None:
        self._close("221 2.0.0 Bye", "QUIT", events)

    # ---- message data

    def _on_data(self, events: list[Event]) -> bool:
        """Stream buffered DATA bytes; False when more input is needed."""
        unstuffer, tx = self._unstuffer, self._tx
        assert unstuffer is not None and tx is not None
        if not self._lines.buffered:
            return False
        content, rest = unstuffer.feed(self._lines.take_buffer())
        self._add_content(content, events)
        if not unstuffer.done:
            return False
        self._lines.unread(rest)
        self._unstuffer = None
        self._message_complete(events)
        return True

    def _on_chunk(self, events: list[Event]) -> bool:
        if self._chunk_left:
            data = self._lines.take(self._chunk_left)
            self._chunk_left -= len(data)
            if self._chunk_keep:
                self._add_content(data, events)
            if self._chunk_left:
                return False
        self.state = ServerState.COMMAND
        if not self._chunk_keep:
            return True
        tx = self._tx
        assert tx is not None
        if self._chunk_last:
            self._message_complete(events)
        elif tx.too_big:
            self._out += _out(f"552 5.3.4 {TOO_BIG}")
            self._tx = None
            events.append(DataAborted("size"))
        else:
            self._out += _out(f"250 2.0.0 Added {self._chunk_size} octets")
        return True

    def _add_content(self, data: bytes, events: list[Event]) -> None:
        tx = self._tx
        assert tx is not None
        tx.size += len(data)
        if self.max_size is not None and tx.size > self.max_size:
            tx.too_big = True
        if data and not tx.too_big:
            events.append(DataChunk(data))

    def _message_complete(self, events: list[Event]) -> None:
        tx = self._tx
        assert tx is not None
        self.state = ServerState.COMMAND
        if tx.too_big:
            for rcpt in tx.recipients:
                self._out += _out(f"552 5.3.4 <{rcpt}> {TOO_BIG}")
            self._tx = None
            events.append(DataAborted("size"))
            return
        self.state = ServerState.AWAIT_REPLIES
        events.append(DataEnd(tx.size, tuple(tx.recipients)))


def _final_reply(reply: str | bytes) -> bytes:
    line = reply_line(reply)
    if line[:1] not in (b"2", b"4", b"5"):
        raise ValueError("a final reply needs a 2xx, 4xx or 5xx code")
    return line


def _valid_notify(value: str | None) -> bool:
    if not value:
        return False
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return True
    return all(word in ("SUCCESS", "FAILURE", "DELAY") for word in words)


_COMMANDS = {
    "LHLO": LmtpServer._cmd_lhlo,
    "MAIL": LmtpServer._cmd_mail,
    "RCPT": LmtpServer._cmd_rcpt,
    "DATA": LmtpServer._cmd_data,
    "RSET": LmtpServer._cmd_rset,
    "NOOP": LmtpServer._cmd_noop,
    "VRFY": LmtpServer._cmd_vrfy,
    "QUIT": LmtpServer._cmd_quit,
}


# --------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class Ready:
    """The greeting, LHLO and any XCLIENT are done: transactions may start."""

    capabilities: list[str]
    xclient_sent: bool


@dataclass(frozen=True)
class CommandReply:
    """The reply to MAIL, RCPT (`recipient` set), DATA (354 or a refusal), RSET, NOOP or QUIT."""

    command: str
    reply: Reply
    recipient: str | None = None


@dataclass(frozen=True)
class DeliveryReply:
    """One per-recipient reply after the message, in RCPT order of the accepted recipients."""

    recipient: str
    reply: Reply


@dataclass(frozen=True)
class LmtpFailure:
    """The session cannot go on: `temp` (refused greeting with 4xx, 421, disconnect) or
    `protocol` (the server did not speak LMTP as expected)."""

    kind: str
    text: str
    reply: Reply | None = None


ClientEvent = Ready | CommandReply | DeliveryReply | LmtpFailure


class _ClientState(enum.Enum):
    HANDSHAKE = "handshake"
    READY = "ready"
    FAILED = "failed"


class LmtpClient:
    """LMTP client core: greeting, LHLO, XCLIENT (the attributes the server advertised,
    answered by a new greeting) and LHLO again, then transactions driven by method calls.
    Commands may be pipelined; replies come back from receive() in the order sent."""

    def __init__(self, *, lhlo_name: str, xclient: Mapping[str, str] | None = None,
                 max_line: int = 65536) -> None:
        if not lhlo_name or any(ord(ch) <= 0x20 for ch in lhlo_name):
            raise ValueError("lhlo_name must be one word")
        self.lhlo_name = lhlo_name
        self.xclient = dict(xclient or {})
        self.capabilities: list[str] = []
        self.xclient_sent = False
        self._state = _ClientState.HANDSHAKE
        self._replies = ReplyReader(max_line)
        self._out = bytearray()
        self._expect: list[tuple[str, str | None]] = [("GREETING", None)]
        self._in_transaction = False
        self._rcpts_sent = 0
        self._accepted: list[str] = []
        self._data_open = False
        self._data_requested = False
        self._stuffer: DotStuffer | None = None

    def __repr__(self) -> str:
        return f"<LmtpClient state={self._state.value} pending={len(self._expect)}>"

    @property
    def ready(self) -> bool:
        return self._state is _ClientState.READY

    @property
    def accepted_recipients(self) -> tuple[str, ...]:
        """Recipients of the current transaction the server accepted so far, in RCPT order."""
        return tuple(self._accepted)

    @property
    def data_open(self) -> bool:
        """354 was received: data_chunk() and data_end() may be called."""
        return self._data_open

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    # ---- transaction API

    def mail_from(self, address: str, params: Mapping[str, str | None] | None = None) -> None:
        self._require_ready()
        if self._in_transaction:
            raise RuntimeError("a transaction is already open: rset() first")
        self._send("MAIL FROM:" + _path(address, allow_empty=True) + _params(params), ("MAIL", None))
        self._in_transaction = True
        self._rcpts_sent = 0
        self._accepted = []

    def rcpt(self, address: str, params: Mapping[str, str | None] | None = None) -> None:
        self._require_ready()
        if not self._in_transaction or self._data_requested:
            raise RuntimeError("RCPT needs an open transaction before DATA")
        self._send("RCPT TO:" + _path(address, allow_empty=False) + _params(params), ("RCPT", address))
        self._rcpts_sent += 1

    def data_start(self) -> None:
        """Send DATA; wait for CommandReply("DATA") with 354 before data_chunk()."""
        self._require_ready()
        if not self._in_transaction or not self._rcpts_sent or self._data_requested:
            raise RuntimeError("DATA needs MAIL and at least one RCPT")
        self._send("DATA", ("DATA", None))
        self._data_requested = True

    def data_chunk(self, data: bytes) -> None:
        """Message bytes, dot-stuffed here (and bare LF sent as CRLF)."""
        if not self._data_open or self._stuffer is None:
            raise RuntimeError("data_chunk() before the 354 reply")
        self._out += self._stuffer.stuff(data)

    def data_end(self) -> None:
        """End the message; one DeliveryReply per accepted recipient follows."""
        if not self._data_open or self._stuffer is None:
            raise RuntimeError("data_end() before the 354 reply")
        self._out += self._stuffer.finish()
        self._expect.extend(("DELIVERY", rcpt) for rcpt in self._accepted)
        self._data_open = False
        self._stuffer = None
        self._end_transaction()

    def rset(self) -> None:
        self._require_ready()
        if self._data_open:
            raise RuntimeError("RSET cannot interrupt a message; finish it with data_end()")
        self._send("RSET", ("RSET", None))
        self._end_transaction()

    def noop(self) -> None:
        self._require_ready()
        if self._data_open:
            raise RuntimeError("no commands inside a message")
        self._send("NOOP", ("NOOP", None))

    def quit(self) -> None:
        self._require_ready()
        if self._data_open:
            raise RuntimeError("no commands inside a message")
        self._send("QUIT", ("QUIT", None))

    # ---- input

    def receive(self, data: bytes) -> list[ClientEvent]:
        """Feed the server's bytes; the replies they complete, as events, in order."""
        events: list[ClientEvent] = []
        if self._state is _ClientState.FAILED:
            return events
        self._replies.feed(data)
        while self._state is not _ClientState.FAILED:
            try:
                reply = self._replies.next_reply()
            except LineTooLong:
                self._fail("protocol", "Server sent a too long line", None, events)
                break
            except SmtpSyntaxError as exc:
                self._fail("protocol", f"Invalid reply from server: {exc}", None, events)
                break
            if reply is None:
                break
            self._on_reply(reply, events)
        return events

    def connection_lost(self) -> list[ClientEvent]:
        """The server closed the connection: a failure if anything was still expected."""
        events: list[ClientEvent] = []
        if self._state is not _ClientState.FAILED and (self._expect or self._state is _ClientState.HANDSHAKE):
            self._fail("temp", "Server disconnected", None, events)
        self._state = _ClientState.FAILED
        return events

    # ---- internals

    def _require_ready(self) -> None:
        if self._state is not _ClientState.READY:
            raise RuntimeError(f"LMTP session is not ready ({self._state.value})")

    def _send(self, line: str, expect: tuple[str, str | None]) -> None:
        self._out += line.encode("utf-8", "surrogateescape") + b"\r\n"
        self._expect.append(expect)

    def _end_transaction(self) -> None:
        self._in_transaction = False
        self._data_requested = False
        self._rcpts_sent = 0

    def _fail(self, kind: str, text: str, reply: Reply | None, events: list[ClientEvent]) -> None:
        self._state = _ClientState.FAILED
        self._expect.clear()
        events.append(LmtpFailure(kind, text, reply))

    def _on_reply(self, reply: Reply, events: list[ClientEvent]) -> None:
        if not self._expect:
            kind = "temp" if reply.code == 421 else "protocol"
            self._fail(kind, f"Unexpected reply from server: {reply.first_line()}", reply, events)
            return
        what, recipient = self._expect.pop(0)
        if self._state is _ClientState.HANDSHAKE:
            self._on_handshake(what, reply, events)
            return
        if what == "DELIVERY":
            assert recipient is not None
            events.append(DeliveryReply(recipient, reply))
            return
        if what == "RCPT" and reply.positive and recipient is not None:
            self._accepted.append(recipient)
        elif what == "DATA":
            if reply.code == 354:
                self._data_open = True
                self._stuffer = DotStuffer()
            elif reply.code < 400:
                self._fail("protocol", f"Unexpected reply to DATA: {reply.first_line()}", reply, events)
                return
        events.append(CommandReply(what, reply, recipient))

    def _on_handshake(self, what: str, reply: Reply, events: list[ClientEvent]) -> None:
        expected = 220 if what in ("GREETING", "XCLIENT") else 250
        if reply.code != expected:
            kind = "temp" if reply.transient else "protocol"
            self._fail(kind, f"{what} failed: {reply.first_line()}", reply, events)
            return
        if what == "GREETING":
            self._send(f"LHLO {self.lhlo_name}", ("LHLO", None))
        elif what == "LHLO":
            self.capabilities = list(reply.lines[1:])
            advertised = ehlo_keywords(reply).get("XCLIENT")
            lines = format_xclient(self.xclient, advertised, ipv6_prefix=False) if advertised else []
            if lines and not self.xclient_sent:
                for line in lines:
                    self._out += line
                    self._expect.append(("XCLIENT", None))
                self._send(f"LHLO {self.lhlo_name}", ("LHLO", None))
                self.xclient_sent = True
                return
            self._state = _ClientState.READY
            events.append(Ready(list(self.capabilities), self.xclient_sent))


def _path(address: str, *, allow_empty: bool) -> str:
    """`<address>`, checked by the same path parser the server side uses, so an address the proxy
    accepted from an MTA (e.g. a quoted local part holding `>`) is passed on, and nothing else is."""
    path = f"<{address}>"
    try:
        parsed, rest = parse_path(path, allow_empty=allow_empty)
    except SmtpSyntaxError:
        raise ValueError(f"invalid address {address!r}") from None
    if parsed != address or rest:
        raise ValueError(f"invalid address {address!r}")
    return path


def _params(params: Mapping[str, str | None] | None) -> str:
    if not params:
        return ""
    words = []
    for key, value in params.items():
        if not key or any(ch in key for ch in " =\r\n") or (
            value is not None and (not value or any(ch in value for ch in " =\r\n"))
        ):
            raise ValueError(f"invalid ESMTP parameter {key!r}")
        words.append(key if value is None else f"{key}={value}")
    return " " + " ".join(words)
