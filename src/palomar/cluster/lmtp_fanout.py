"""The pure rules of one LMTP transaction fanned out over backends (docs/design/lmtp.md).

The proxy accepts each recipient on the backend its routing chose, may be referred on per
recipient, and after the message owes the MTA exactly one reply per accepted recipient in RCPT
order. Mail must never be lost or stored twice, so a recipient only gets a 2xx when its own
backend said 2xx; a backend that failed gives its recipients a temporary 451 (the MTA retries
just those), a backend's own 4xx/5xx passes through. No I/O here: the proxy's LMTP front end
and the backend's gateway feed these functions what they saw and send what they return.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from palomar.cluster.routing import MAX_REFERRAL_HOPS
from palomar.protocols.smtp_syntax import Reply

REFERRAL_MARK = "palomar-referral"
"""The backend gateway's RCPT reply for a recipient it does not own: `451 4.7.0 palomar-referral <host>`.
A 4xx on purpose: should it ever reach an MTA, the MTA retries instead of bouncing."""

RCPT_OK = "250 2.1.5 OK"
_ADDRESS_PREFIX = re.compile(r"<[^<>]*>(?: |$)")


# --------------------------------------------------------------------------- reply texts


def referral_reply(host: str) -> str:
    if not host or any(ch.isspace() for ch in host):
        raise ValueError("referral host must be one word")
    return f"451 4.7.0 {REFERRAL_MARK} {host}"


def parse_referral(reply: Reply) -> str | None:
    """The host a backend's RCPT reply refers the recipient to, or None."""
    if reply.code != 451 or reply.enhanced != "4.7.0" or not reply.lines:
        return None
    words = reply.lines[0].split()
    if len(words) == 2 and words[0] == REFERRAL_MARK:
        return words[1]
    return None


def unknown_user(address: str) -> str:
    return f"550 5.1.1 <{address}> User doesn't exist: {address}"


def lookup_failed(address: str) -> str:
    return f"451 4.3.0 <{address}> Temporary user lookup failure"


def rcpt_failed(address: str, *, store: bool) -> str:
    """A recipient whose handling raised (the exception boundary's reply, docs/design/failures.md):
    the routing state could not be read (`store`: GeoDB or LocalDB down; RFC 3463 X.4.3, directory
    server failure) or an internal error. Both temporary: the MTA keeps the message and retries."""
    if store:
        return f"451 4.4.3 <{address}> Temporary routing failure"
    return f"451 4.3.0 <{address}> Internal error"


def closing_internal(hostname: str) -> str:
    """The session's boundary caught an error outside any one recipient: end the session with a
    421 (RFC 5321: every recipient not yet answered 2xx after DATA is retried by the MTA)."""
    return f"421 4.3.0 {hostname} Internal error, closing connection"


def login_disabled(address: str) -> str:
    return f"550 5.3.5 <{address}> Login disabled"


def proxy_failed(address: str, detail: str) -> str:
    """Dovecot's wording for a recipient its proxy could not hand on: temporary, retry later."""
    return f"451 4.4.0 <{address}> Proxy failed ({' '.join(detail.split())})"


def _enhanced(reply: Reply, success_default: str) -> str:
    if reply.enhanced is not None:
        return reply.enhanced
    return success_default if reply.code < 400 else f"{reply.code // 100}.0.0"


def _first_text(reply: Reply) -> str:
    return reply.lines[0] if reply.lines else ""


def rcpt_reply(address: str, reply: Reply) -> str:
    """The MTA's reply to RCPT from the backend's: a success keeps its text (enhanced code 2.1.0 if
    none); a refusal names the MTA's address, not the one after passdb renames."""
    enhanced = _enhanced(reply, "2.1.0")
    text = _first_text(reply)
    if reply.code < 400:
        return f"{reply.code} {enhanced} {text}".rstrip()
    return f"{reply.code} {enhanced} <{address}> {_ADDRESS_PREFIX.sub('', text, count=1)}".rstrip()


def delivery_reply(address: str, reply: Reply) -> str:
    """The MTA's per-recipient reply after DATA from the backend's (its address prefix replaced)."""
    enhanced = _enhanced(reply, "2.0.0")
    if reply.code < 200 or reply.code >= 600 or 300 <= reply.code < 400:
        return proxy_failed(address, f"bad reply: {reply.code}")
    text = _ADDRESS_PREFIX.sub("", _first_text(reply), count=1)
    return f"{reply.code} {enhanced} <{address}> {text}".rstrip()


# --------------------------------------------------------------------------- referrals


@dataclass(frozen=True)
class Follow:
    """Ask `host` for the recipient next."""

    host: str


@dataclass(frozen=True)
class GiveUp:
    reason: str


def follow_referral(visited: Sequence[str], target: str) -> Follow | GiveUp:
    """As for logins: at most MAX_REFERRAL_HOPS referrals per recipient, never a host twice.
    `visited` holds every host asked so far, the first one included."""
    if target in visited:
        return GiveUp(f"referral loop via {target}")
    if len(visited) > MAX_REFERRAL_HOPS:
        return GiveUp("too many referrals")
    return Follow(target)


# --------------------------------------------------------------------------- the transaction


@dataclass(frozen=True)
class Accepted:
    """A recipient some backend accepted: `address` as the MTA wrote it, `user` as sent to `host`."""

    address: str
    user: str
    host: str


@dataclass(frozen=True)
class BackendFailed:
    """A backend that failed (or vanished) before every reply of its recipients arrived."""

    detail: str


@dataclass
class Fanout:
    """The accepted recipients of one transaction in RCPT order, each with its backend."""

    accepted: list[Accepted] = field(default_factory=list)

    def accept(self, address: str, user: str, host: str) -> None:
        self.accepted.append(Accepted(address, user, host))

    def hosts(self) -> list[str]:
        """The backends with accepted recipients, in the order they were first used."""
        return list(dict.fromkeys(rcpt.host for rcpt in self.accepted))

    def recipients_of(self, host: str) -> list[Accepted]:
        """`host`'s recipients in RCPT order: the order its per-recipient replies come in."""
        return [rcpt for rcpt in self.accepted if rcpt.host == host]

    def replies(self, outcomes: Mapping[str, Sequence[Reply] | BackendFailed]) -> list[str]:
        """One reply per accepted recipient, in RCPT order. A backend missing from `outcomes`, a
        failed one, and recipients beyond the replies a backend gave all get a 451."""
        given: dict[str, list[Reply]] = {}
        failure: dict[str, str] = {}
        for host in self.hosts():
            outcome = outcomes.get(host, BackendFailed("no reply"))
            if isinstance(outcome, BackendFailed):
                failure[host] = outcome.detail
            else:
                given[host] = list(outcome)
        replies = []
        for rcpt in self.accepted:
            queue = given.get(rcpt.host)
            if queue:
                replies.append(delivery_reply(rcpt.address, queue.pop(0)))
            else:
                replies.append(proxy_failed(rcpt.address, failure.get(rcpt.host, "connection lost")))
        return replies


# --------------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class RcptFinished:
    """One `smtp_server_transaction_rcpt_finished` event, as the seed's metrics filter it."""

    status_code: int
    enhanced_code: str
    error: str

    @property
    def success(self) -> bool:
        """`lmtp_rcpt_finished_success`: error=""."""
        return not self.error

    @property
    def failure(self) -> bool:
        """`lmtp_rcpt_finished_failure`: an error that is not a 5.x.x permanent one."""
        return bool(self.error) and not self.enhanced_code.startswith("5.")


ABORTED = RcptFinished(9000, "9.0.0", "Reset")
"""The event of a recipient whose transaction ended without a message (Dovecot's values)."""


def rcpt_finished(reply: str) -> RcptFinished:
    """The event for the final reply an MTA got for one recipient."""
    code_text, _, rest = reply.partition(" ")
    code = int(code_text)
    head, _, tail = rest.partition(" ")
    if re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", head) and int(head[0]) == code // 100:
        enhanced, text = head, tail
    else:
        enhanced, text = f"{code // 100}.0.0", rest
    return RcptFinished(code, enhanced, "" if code < 400 else (text or "failed"))
