"""SASL pieces every login core shares: strict base64, PLAIN messages (RFC 4616) and the
server side of a PLAIN or LOGIN exchange.

The exchange is independent of how a protocol frames challenges (`+ <b64>` in POP3, a
quoted string in ManageSieve), so the cores decode base64 and frame replies themselves
and only ask this module what the decoded bytes mean.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

__all__ = [
    "MECHANISMS",
    "Challenge",
    "Credentials",
    "Rejected",
    "SaslServer",
    "b64decode_strict",
    "parse_plain",
    "plain_initial_response",
    "plain_message",
]

#: The mechanisms palomar's proxy offers; both send the password in the clear.
MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN")


def b64decode_strict(data: bytes) -> bytes:
    """Strict base64 (RFC 4648 alphabet and padding), as SASL requires; raises binascii.Error."""
    if not data:
        return b""
    decoded = base64.b64decode(data, validate=True)
    if base64.b64encode(decoded) != data:  # stray padding or a partial quantum
        raise binascii.Error("non-canonical base64")
    return decoded


def plain_message(authzid: str, authcid: str, password: str) -> bytes:
    """`authzid NUL authcid NUL password`; NUL inside a field would shift the fields."""
    for value in (authzid, authcid, password):
        if "\0" in value:
            raise ValueError("NUL is not allowed in SASL PLAIN fields")
    return "\0".join((authzid, authcid, password)).encode("utf-8", "surrogateescape")


def plain_initial_response(authzid: str, authcid: str, password: str) -> bytes:
    """The base64 PLAIN response a master-user login sends (authzid = the user)."""
    return base64.b64encode(plain_message(authzid, authcid, password))


def parse_plain(message: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(authzid, authcid, password), or None when the message is not three NUL-separated fields."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Challenge:
    """Send `data` (base64-encode it in the protocol's framing) and wait for a response."""

    data: bytes


@dataclass(frozen=True)
class Credentials:
    """The exchange is complete; `authzid` is set when PLAIN asked to act as someone else."""

    username: str
    password: str = field(repr=False)
    authzid: str | None = None


@dataclass(frozen=True)
class Rejected:
    """The client's messages cannot be credentials (malformed PLAIN, empty user name)."""

    reason: str


SaslStep = Challenge | Credentials | Rejected


class SaslServer:
    """One PLAIN or LOGIN exchange, fed decoded bytes."""

    def __init__(self, mechanism: str) -> None:
        mechanism = mechanism.upper()
        if mechanism not in MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {mechanism}")
        self.mechanism = mechanism
        self._username: bytes | None = None

    def __repr__(self) -> str:
        return f"<SaslServer {self.mechanism}>"

    def start(self, initial: bytes | None) -> SaslStep:
        """Begin, with the decoded initial response or None when the client sent none."""
        if initial is None:
            return Challenge(b"" if self.mechanism == "PLAIN" else b"Username:")
        return self.step(initial)

    def step(self, response: bytes) -> SaslStep:
        """The client's next decoded response."""
        if self.mechanism == "LOGIN":
            if self._username is None:
                self._username = response
                return Challenge(b"Password:")
            user, password, authzid = self._username, response, b""
        else:
            fields = parse_plain(response)
            if fields is None:
                return Rejected("malformed PLAIN message")
            authzid, user, password = fields
        if not user:
            return Rejected("empty user name")
        return Credentials(_text(user), _text(password), _text(authzid) if authzid else None)
