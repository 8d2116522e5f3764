"""The proxy -> backend hop (docs/design/backend-hop.md), sans-IO.

A proxy that has authenticated a user opens a connection (TLS unless the operator chose
plaintext) to the backend's palomar service. The backend speaks first: one line with a fresh
random challenge. The proxy answers with one PROXY v2 header. Its address block carries the
client's real address; palomar TLVs (the PROXY protocol's custom range 0xE0-0xEF) carry the
user, the protocol, the session id and the destination backend, and an HMAC-SHA256 keyed with
the cluster's shared secret over the challenge and all of it. A header is thus only good on
the one connection whose challenge it answers: no captured header is ever accepted again, with
no replay cache and no clock involved. The backend answers with one line (logged in /
referral / failure); after a logged-in line both sides only relay bytes.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

HOP_VERSION = b"2"
"""Version 1 (time, nonce and a replay cache instead of a challenge) is refused."""

TLV_VERSION = 0xE0
TLV_USER = 0xE1
TLV_PROTOCOL = 0xE2
TLV_SESSION = 0xE3
# 0xE4 (time) and 0xE5 (nonce) belonged to version 1; they are not reused.
TLV_BACKEND = 0xE6
TLV_TTL = 0xE7
TLV_CLIENT_TLS = 0xE8
TLV_ADMIN = 0xE9
"""An admin command (small JSON) for the backend itself; only with protocol `doveadm`."""
TLV_CLIENT_ID = 0xEA
"""The client's IMAP ID pairs (JSON list of [key, value]) for the backend's Dovecot; optional."""
MAX_CLIENT_ID_BYTES = 4096
TLV_VIA_SITES = 0xEB
"""Site IDs (comma-separated UUIDs) a login was relayed through, proxy to proxy; optional."""
MAX_VIA_SITES = 8
TLV_REFERRED = 0xEC
"""A backend of the receiving site that referred this session (its host, as in the GeoDB), sent
through that site's load balancer by a proxy that cannot reach the site's backends; optional."""
MAX_REFERRED_BYTES = 255
TLV_MAC = 0xEF

PROTOCOLS = ("imap", "pop3", "lmtp", "submission", "sieve", "doveadm")
MAX_REPLY_LINE = 65536
CHALLENGE_BYTES = 16
CHALLENGE_WORD = b"HOP"

T = TypeVar("T")
MAC_BYTES = 32
MAX_ADMIN_BYTES = 4096


class HopError(Exception):
    """A hop header or reply that must be refused; the text is safe to log."""


@dataclass(frozen=True)
class HopRequest:
    """What a proxy asserts about one session it hands to a backend."""

    user: str
    protocol: str
    session_id: str
    backend_host: str
    client: tuple[str, int]
    local: tuple[str, int]
    client_tls: bool = False
    ttl: int = 5
    admin: bytes | None = None
    """An admin command for the backend (TLV 0xE9); None for a user session."""
    client_id: bytes | None = None
    """The client's IMAP ID, `encode_client_id` (TLV 0xEA); None when there is none to pass on."""
    via_sites: tuple[str, ...] = ()
    """Sites (UUID text) whose proxies relayed this login here (TLV 0xEB): the site loop guard."""
    referred: str = ""
    """The receiving site's backend that referred this session (TLV 0xEC); empty when none did."""

    def tlvs(self) -> list[tuple[int, bytes]]:
        """The palomar TLVs, without the MAC, in their canonical order."""
        tlvs = [
            (TLV_VERSION, HOP_VERSION),
            (TLV_USER, self.user.encode()),
            (TLV_PROTOCOL, self.protocol.encode()),
            (TLV_SESSION, self.session_id.encode()),
            (TLV_BACKEND, self.backend_host.encode()),
            (TLV_TTL, bytes([self.ttl])),
            (TLV_CLIENT_TLS, b"1" if self.client_tls else b"0"),
        ]
        if self.admin is not None:
            tlvs.append((TLV_ADMIN, self.admin))
        if self.client_id is not None:
            tlvs.append((TLV_CLIENT_ID, self.client_id))
        if self.via_sites:
            tlvs.append((TLV_VIA_SITES, ",".join(self.via_sites).encode("ascii")))
        if self.referred:
            tlvs.append((TLV_REFERRED, self.referred.encode()))
        return tlvs


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    """The HMAC keyed with `secret` and fed the version prefix, copied for each header: the key's
    set-up (an OpenSSL MAC fetch, the padded key's two hash blocks) is done once, not per hop."""
    return hmac.new(secret, b"palomar-hop-v2\0", hashlib.sha256)


def _packed(host: str) -> bytes:
    """The address's bytes; dotted IPv4 (what the kernel and PROXY headers give) without `ipaddress`
    (`inet_pton` takes exactly the dotted quads `ipaddress` takes; anything else goes to it)."""
    with contextlib.suppress(OSError):
        return socket.inet_pton(socket.AF_INET, host)
    return ipaddress.ip_address(host).packed


def _mac(secret: bytes, challenge: bytes, client: tuple[str, int], local: tuple[str, int],
         tlvs: Iterable[tuple[int, bytes]]) -> bytes:
    """HMAC over the backend's challenge, the addresses and every palomar TLV (sorted by type):
    nothing can be altered, and the header answers one connection only."""
    mac = _keyed(secret).copy()
    mac.update(struct.pack(">B", len(challenge)) + challenge)
    for host, port in (client, local):
        mac.update(_packed(host) + struct.pack(">H", port))
    for tlv_type, value in sorted(t for t in tlvs if t[0] != TLV_MAC):
        mac.update(struct.pack(">BH", tlv_type, len(value)) + value)
    return mac.digest()


def seal(request: HopRequest, secret: bytes, challenge: bytes) -> list[tuple[int, bytes]]:
    """The request's TLVs including the MAC that answers the backend's `challenge`."""
    tlvs = request.tlvs()
    tlvs.append((TLV_MAC, _mac(secret, challenge, request.client, request.local, tlvs)))
    return tlvs


# --- the backend's challenge ------------------------------------------------------------------


def new_challenge() -> bytes:
    """Fresh random bytes for one connection: what makes every hop header single-use."""
    return os.urandom(CHALLENGE_BYTES)


def encode_challenge(challenge: bytes) -> bytes:
    """The backend's first line: `HOP 2 <base64 challenge>`."""
    return CHALLENGE_WORD + b" " + HOP_VERSION + b" " + base64.b64encode(challenge) + b"\r\n"


def decode_challenge(line: bytes) -> bytes:
    """The challenge of the backend's first line; HopError if it is not one this proxy speaks."""
    parts = line.rstrip(b"\r\n").split(b" ")
    if len(parts) != 3 or parts[0] != CHALLENGE_WORD:
        raise HopError("backend did not send a hop challenge (not a palomar backend, or TLS on one side only)")
    if parts[1] != HOP_VERSION:
        raise HopError(f"backend speaks hop version {parts[1].decode(errors='replace')!r}, "
                       f"this proxy {HOP_VERSION.decode()}")
    try:
        challenge = base64.b64decode(parts[2], validate=True)
    except ValueError as exc:
        raise HopError("malformed hop challenge") from exc
    if len(challenge) != CHALLENGE_BYTES:
        raise HopError("malformed hop challenge")
    return challenge


def verify(
    client: tuple[str, int] | None,
    local: tuple[str, int] | None,
    tlvs: Iterable[tuple[int, bytes]],
    *,
    secret: bytes,
    own_host: str,
    challenge: bytes,
) -> HopRequest:
    """Check a hop header received on the connection that was sent `challenge`; return the
    request it carries, or raise HopError."""
    pairs = list(tlvs)
    fields: dict[int, bytes] = {}
    for tlv_type, value in pairs:
        if 0xE0 <= tlv_type <= 0xEF:
            if tlv_type in fields:
                raise HopError(f"duplicate hop field 0x{tlv_type:02x}")
            fields[tlv_type] = value
    if client is None or local is None:
        raise HopError("hop header without addresses")
    if fields.get(TLV_VERSION) != HOP_VERSION:
        raise HopError("not a palomar hop header of version 2 (a proxy of an older version?)")
    missing = [t for t in (TLV_USER, TLV_PROTOCOL, TLV_SESSION, TLV_BACKEND, TLV_TTL, TLV_CLIENT_TLS, TLV_MAC)
               if t not in fields]
    if missing:
        raise HopError("hop header lacks fields " + ",".join(f"0x{t:02x}" for t in missing))
    expected = _mac(secret, challenge, client, local, [(t, v) for t, v in fields.items()])
    if not hmac.compare_digest(expected, fields[TLV_MAC]):
        raise HopError("hop MAC mismatch (wrong shared secret, altered header, or a header replayed "
                       "from another connection)")
    if len(fields[TLV_TTL]) != 1:
        raise HopError("malformed hop field")
    try:
        request = HopRequest(
            user=fields[TLV_USER].decode(),
            protocol=fields[TLV_PROTOCOL].decode("ascii"),
            session_id=fields[TLV_SESSION].decode("ascii"),
            backend_host=fields[TLV_BACKEND].decode(),
            client=client,
            local=local,
            client_tls=fields[TLV_CLIENT_TLS] == b"1",
            ttl=fields[TLV_TTL][0],
            admin=fields.get(TLV_ADMIN),
            client_id=fields.get(TLV_CLIENT_ID),
            via_sites=tuple(fields[TLV_VIA_SITES].decode("ascii").split(",")) if TLV_VIA_SITES in fields else (),
            referred=fields[TLV_REFERRED].decode() if TLV_REFERRED in fields else "",
        )
    except UnicodeDecodeError as exc:
        raise HopError("hop field is not valid text") from exc
    if request.protocol not in PROTOCOLS:
        raise HopError(f"unknown protocol {request.protocol!r}")
    if request.admin is not None and (request.protocol != "doveadm" or len(request.admin) > MAX_ADMIN_BYTES):
        raise HopError("admin command only with protocol doveadm and at most 4096 bytes")
    if request.client_id is not None and (len(request.client_id) > MAX_CLIENT_ID_BYTES
                                          or decode_client_id(request.client_id) is None):
        raise HopError("malformed client ID field")
    if len(request.via_sites) > MAX_VIA_SITES or not all(_is_uuid(s) for s in request.via_sites):
        raise HopError("malformed via-sites field")
    if TLV_REFERRED in fields and not (0 < len(fields[TLV_REFERRED]) <= MAX_REFERRED_BYTES
                                       and request.referred.isprintable() and " " not in request.referred):
        raise HopError("malformed referred-backend field")
    if request.backend_host != own_host:
        raise HopError(f"hop meant for backend {request.backend_host!r}, this is {own_host!r}")
    if request.ttl < 1:
        raise HopError("hop TTL exhausted (proxies appear to be looping)")
    return request


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def encode_client_id(pairs: Iterable[tuple[str, str | None]]) -> bytes | None:
    """The TLV value for the client's ID pairs; None (no TLV) when there are none."""
    items = [[key, value] for key, value in pairs]
    return json.dumps(items, ensure_ascii=False).encode("utf-8", "surrogateescape") if items else None


def decode_client_id(value: bytes) -> tuple[tuple[str, str | None], ...] | None:
    """The pairs of a client ID TLV, or None if it is not a list of [string, string-or-null]."""
    try:
        items = json.loads(value.decode("utf-8", "surrogateescape"))
    except ValueError:
        return None
    if not isinstance(items, list) or not all(
        isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
        and (item[1] is None or isinstance(item[1], str)) for item in items
    ):
        return None
    return tuple((item[0], item[1]) for item in items)


# --- replies ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedIn:
    """The backend logged the user in; `text` is Dovecot's post-login reply (e.g. IMAP's tagged OK)."""

    text: bytes


@dataclass(frozen=True)
class Referral:
    """The user lives elsewhere now: the proxy should go to `host`."""

    host: str
    reason: str = ""


FAILURE_CODES = ("denied", "temp", "auth", "internal", "protocol", "unavailable")


@dataclass(frozen=True)
class Failure:
    """The backend could not log the user in. `code` is one of FAILURE_CODES."""

    code: str
    text: str


HopReply = LoggedIn | Referral | Failure


def _clean(text: str) -> str:
    return " ".join(text.split())


def encode_reply(reply: HopReply) -> bytes:
    """One CRLF-terminated line."""
    if isinstance(reply, LoggedIn):
        return b"OK " + base64.b64encode(reply.text) + b"\r\n"
    if isinstance(reply, Referral):
        return f"REFERRAL {reply.host} {_clean(reply.reason)}".rstrip().encode() + b"\r\n"
    if reply.code not in FAILURE_CODES:
        raise ValueError(f"unknown failure code {reply.code!r}")
    return f"FAIL {reply.code} {_clean(reply.text)}".rstrip().encode() + b"\r\n"


def decode_reply(line: bytes) -> HopReply:
    """Parse one reply line (with or without its CRLF); raise HopError if it is malformed."""
    text = line.rstrip(b"\r\n")
    verb, _, rest = text.partition(b" ")
    try:
        if verb == b"OK":
            return LoggedIn(base64.b64decode(rest, validate=True))
        if verb == b"REFERRAL":
            host, _, reason = rest.decode().partition(" ")
            if not host:
                raise HopError("referral without a host")
            return Referral(host, reason)
        if verb == b"FAIL":
            code, _, message = rest.decode().partition(" ")
            if code not in FAILURE_CODES:
                raise HopError(f"unknown failure code {code!r}")
            return Failure(code, message)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HopError("malformed hop reply") from exc
    raise HopError("malformed hop reply")


class LineReader(Generic[T]):
    """Collects one line from a byte stream and decodes it; keeps what follows it."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.leftover = b""

    @staticmethod
    def decode(line: bytes) -> T:
        raise NotImplementedError

    def feed(self, data: bytes) -> T | None:
        self._buf += data
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > MAX_REPLY_LINE:
                raise HopError("hop line too long")
            return None
        line = bytes(self._buf[: end + 1])
        self.leftover = bytes(self._buf[end + 1 :])
        return self.decode(line)


class ChallengeReader(LineReader[bytes]):
    """Reads the backend's first line; `feed` returns the challenge once the line is complete."""

    decode = staticmethod(decode_challenge)


class ReplyReader(LineReader[HopReply]):
    """Reads the backend's reply line; `feed` returns the HopReply once the line is complete."""

    decode = staticmethod(decode_reply)
