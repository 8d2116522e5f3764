"""What a client is told when palomar cannot serve it, per protocol, in one table.

As in Dovecot's login proxy (one `enum login_proxy_failure_type`, worded per protocol by one
`*_proxy_send_failure_reply` each), the session code speaks one vocabulary — the outcome of a
login (`AuthFailed`, `NoLogin`, `TempFailed`) and the two ways the proxy ends a session itself
(inactivity, an internal error, a refusal, the server's shutdown) — and only this table turns it
into a protocol's words. The shutdown line is the backend's too, so its wording lives in
`protocols.shutdown` and each row here takes it from there. LMTP has no login: its row has the
closing lines only; its per-recipient replies are in `cluster.lmtp_fanout`. docs/design/failures.md
has the whole map, the hop's `FAIL` codes and the LMTP replies included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from palomar.cluster.lmtp_fanout import closing_internal
from palomar.protocols import imap, managesieve, pop3, submission
from palomar.protocols.shutdown import SHUTDOWN
from palomar.proxy.limits import Farewell, smtp_bye
from palomar.proxy.login import AuthFailed, LoginOutcome, NoLogin, TempFailed

INTERNAL_FAILURE = "Internal login failure. Refer to server log for more information."
"""Dovecot's text when a login process gives up on a client for an internal error."""
TEMP_UNAVAILABLE = "Account is temporarily unavailable."
"""Dovecot's LOGIN_PROXY_FAILURE_MSG."""


@dataclass(frozen=True)
class Wording:
    """One protocol's replies. The byes are whole lines, sent just before the connection closes (the
    SMTP family names the host in them); the login replies go through the core's
    `login_failed(tag, text)` (which adds IMAP's tag). LMTP has no login: its row has no login
    replies."""

    timeout_bye: Callable[[str], bytes]
    internal_bye: Callable[[str], bytes]
    bye: Callable[[str, Farewell], bytes]
    """The line closing a connection the proxy refuses or gives up on (host name, why)."""
    shutdown: Callable[[str], bytes]
    """The line ending a session when the server stops, worded as Dovecot CE words it
    (`MASTER_SERVICE_SHUTTING_DOWN_MSG`): `protocols.shutdown`'s, shared with the backend."""
    auth_failed: str | None = None
    temp_failed: str | None = None
    nologin: Callable[[str], str] | None = None


WORDING: dict[str, Wording] = {
    "imap": Wording(
        auth_failed=imap.AUTH_FAILED,
        temp_failed=f"NO [UNAVAILABLE] {TEMP_UNAVAILABLE}",
        nologin=lambda reason: f"NO [CONTACTADMIN] {reason}",
        timeout_bye=lambda host: b"* BYE Disconnected for inactivity.\r\n",
        internal_bye=lambda host: f"* BYE [UNAVAILABLE] {INTERNAL_FAILURE}\r\n".encode(),
        bye=lambda host, farewell: f"* BYE {farewell.text}\r\n".encode(),
        shutdown=SHUTDOWN["imap"],
    ),
    "pop3": Wording(
        auth_failed=pop3.AUTH_FAILED,
        temp_failed=pop3.TEMP_FAILED,
        nologin=pop3.auth_error,
        timeout_bye=lambda host: b"-ERR Disconnected for inactivity.\r\n",
        internal_bye=lambda host: f"{pop3.temp_error(INTERNAL_FAILURE)}\r\n".encode(),
        bye=lambda host, farewell: f"-ERR {farewell.text}\r\n".encode(),
        shutdown=SHUTDOWN["pop3"],
    ),
    "submission": Wording(
        auth_failed=submission.AUTH_FAILED,
        temp_failed=submission.TEMP_FAILED,
        nologin=lambda reason: f"535 5.7.8 {reason}",
        timeout_bye=lambda host: b"421 4.4.2 Disconnected for inactivity.\r\n",
        internal_bye=lambda host: f"421 4.0.0 {INTERNAL_FAILURE}\r\n".encode(),
        bye=smtp_bye,  # Dovecot's submission-login prefixes its host name (smtp_server_connection_terminate)
        shutdown=SHUTDOWN["submission"],
    ),
    "lmtp": Wording(
        timeout_bye=lambda host: f"421 4.4.2 {host} Disconnected client for inactivity\r\n".encode(),
        internal_bye=lambda host: f"{closing_internal(host)}\r\n".encode(),
        bye=smtp_bye,
        shutdown=SHUTDOWN["lmtp"],
    ),
    "sieve": Wording(
        auth_failed=managesieve.AUTH_FAILED,
        temp_failed=managesieve.TEMP_FAILED,
        nologin=lambda reason: managesieve.response("NO", reason, None),
        timeout_bye=lambda host: b'BYE "Disconnected for inactivity."\r\n',
        internal_bye=lambda host: f"{managesieve.response('BYE', INTERNAL_FAILURE, None)}\r\n".encode(),
        bye=lambda host, farewell: (managesieve.response("BYE", farewell.text) + "\r\n").encode(),
        shutdown=SHUTDOWN["sieve"],
    ),
}


def login_failure(protocol: str, outcome: LoginOutcome) -> str:
    """The reply to a login command that did not log the client in."""
    wording = WORDING[protocol]
    assert wording.auth_failed is not None and wording.temp_failed is not None and wording.nologin is not None, protocol
    if isinstance(outcome, AuthFailed):
        return wording.auth_failed
    if isinstance(outcome, NoLogin):
        return wording.nologin(" ".join(outcome.reason.split()))
    return wording.temp_failed


def failure_reason(outcome: LoginOutcome) -> str:
    """Why a login did not log the client in, for the session's one log line (never sent to the client)."""
    if isinstance(outcome, AuthFailed):
        return outcome.reason
    if isinstance(outcome, NoLogin):
        return f"nologin: {outcome.reason}"
    if isinstance(outcome, TempFailed):
        return f"{outcome.error_code}: {outcome.text}"
    return type(outcome).__name__
