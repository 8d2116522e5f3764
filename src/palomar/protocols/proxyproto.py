"""PROXY protocol v1 and v2 (HAProxy), sans-IO.

HAProxy in front of the proxies, and the proxy in front of each backend, announce the
real client address with this header before the first application byte. The parser is
strict on purpose: a listener that accepts the header trusts the addresses in it, so
anything that does not match the format exactly aborts the connection, as early as the
offending byte is seen.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MAX_V1_LENGTH",
    "MAX_V2_LENGTH",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderParser",
    "ProxyProtocolError",
    "SslInfo",
    "build_v1",
    "build_v2",
    "build_v2_local",
    "crc32c",
]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: Longest valid v1 line including CRLF; no CRLF within it means the line is invalid.
MAX_V1_LENGTH = 107
#: Dovecot's cap on a whole v2 header (16 fixed bytes + len).
MAX_V2_LENGTH = 1500

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30

PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_T_UNSPEC, _T_STREAM, _T_DGRAM = 0x0, 0x1, 0x2
_ADDR_LEN = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_MAX_UNIQUE_ID = 128

Address = tuple[str, int]
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY header; the connection must be dropped."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- CRC32C


def _make_crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C (Castagnoli, RFC 4960 appendix B), the checksum PP2_TYPE_CRC32C carries."""
    crc ^= 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class SslInfo:
    """PP2_TYPE_SSL: how the client reached the sender (TLS or not, client cert)."""

    client: int = PP2_CLIENT_SSL
    verify: int = 0
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None

    @property
    def client_ssl(self) -> bool:
        return bool(self.client & PP2_CLIENT_SSL)

    @property
    def cert_verified(self) -> bool:
        """True only when a client cert was presented and verified; only then is `cn` trustworthy."""
        return bool(self.client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS)) and self.verify == 0

    def encode(self) -> bytes:
        """The TLV value (without the 3-byte TLV header)."""
        out = bytearray(struct.pack("!BI", self.client, self.verify))
        for sub_type, text in (
            (PP2_SUBTYPE_SSL_VERSION, self.version),
            (PP2_SUBTYPE_SSL_CN, self.cn),
            (PP2_SUBTYPE_SSL_CIPHER, self.cipher),
            (PP2_SUBTYPE_SSL_SIG_ALG, self.sig_alg),
            (PP2_SUBTYPE_SSL_KEY_ALG, self.key_alg),
        ):
            if text is not None:
                out += _encode_tlv(sub_type, text.encode("utf-8"))
        return bytes(out)

    @classmethod
    def decode(cls, value: bytes) -> SslInfo:
        if len(value) < 5:
            raise ProxyProtocolError("SSL TLV shorter than 5 bytes")
        client, verify = struct.unpack_from("!BI", value)
        fields: dict[int, str] = {}
        for sub_type, sub_value in _parse_tlvs(value, 5):
            try:
                fields[sub_type] = sub_value.decode("utf-8")
            except UnicodeDecodeError:
                raise ProxyProtocolError(f"SSL sub-TLV 0x{sub_type:02x} is not UTF-8") from None
        return cls(
            client=client,
            verify=verify,
            version=fields.get(PP2_SUBTYPE_SSL_VERSION),
            cn=fields.get(PP2_SUBTYPE_SSL_CN),
            cipher=fields.get(PP2_SUBTYPE_SSL_CIPHER),
            sig_alg=fields.get(PP2_SUBTYPE_SSL_SIG_ALG),
            key_alg=fields.get(PP2_SUBTYPE_SSL_KEY_ALG),
        )


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header. `source`/`dest` are None when the real socket addresses apply
    (LOCAL, v1 UNKNOWN, v2 UNSPEC or UNIX families)."""

    version: int
    command: str  # "PROXY" or "LOCAL"
    source: Address | None
    dest: Address | None
    tlvs: tuple[tuple[int, bytes], ...] = ()
    ssl: SslInfo | None = None
    authority: str | None = field(default=None)

    def tlv(self, tlv_type: int) -> bytes | None:
        """Value of the first TLV of this type, or None."""
        for kind, value in self.tlvs:
            if kind == tlv_type:
                return value
        return None

    @property
    def alpn(self) -> bytes | None:
        return self.tlv(PP2_TYPE_ALPN)

    @property
    def unique_id(self) -> bytes | None:
        return self.tlv(PP2_TYPE_UNIQUE_ID)

    @property
    def is_local(self) -> bool:
        return self.command == "LOCAL"


# --------------------------------------------------------------------------- parser


class ProxyHeaderParser:
    """Incremental receiver: feed bytes until a header comes out.

    `feed()` returns None while more bytes are needed, the header once complete, and
    raises ProxyProtocolError as soon as the bytes seen cannot start a valid header.
    After the header, `remaining` holds the application bytes that followed it.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._header: ProxyHeader | None = None
        self.remaining = b""

    @property
    def header(self) -> ProxyHeader | None:
        return self._header

    def feed(self, data: bytes) -> ProxyHeader | None:
        if self._header is not None:
            self.remaining += bytes(data)
            return self._header
        self._buf += data
        buf = self._buf
        if not buf:
            return None
        if buf[0] == V2_SIGNATURE[0]:
            result = self._feed_v2(buf)
        elif buf[0] == V1_PREFIX[0]:
            result = self._feed_v1(buf)
        else:
            raise ProxyProtocolError("not a PROXY protocol header")
        if result is None:
            return None
        header, used = result
        self._header = header
        self.remaining = bytes(buf[used:])
        self._buf = bytearray()
        return header

    # ---- v2

    def _feed_v2(self, buf: bytearray) -> tuple[ProxyHeader, int] | None:
        sig_seen = min(len(buf), len(V2_SIGNATURE))
        if buf[:sig_seen] != V2_SIGNATURE[:sig_seen]:
            raise ProxyProtocolError("bad v2 signature")
        if len(buf) < 13:
            return None
        version, command = buf[12] >> 4, buf[12] & 0x0F
        if version != 2:
            raise ProxyProtocolError(f"unsupported v2 version {version}")
        if command not in (_CMD_LOCAL, _CMD_PROXY):
            raise ProxyProtocolError(f"unsupported v2 command {command}")
        if len(buf) < 14:
            return None
        family, transport = buf[13] >> 4, buf[13] & 0x0F
        if command == _CMD_PROXY:
            if family not in _ADDR_LEN:
                raise ProxyProtocolError(f"bad v2 address family {family}")
            if transport > _T_DGRAM:
                raise ProxyProtocolError(f"bad v2 transport {transport}")
            if family != _AF_UNSPEC and transport != _T_STREAM:
                raise ProxyProtocolError("not using TCP")
        if len(buf) < 16:
            return None
        (length,) = struct.unpack_from("!H", buf, 14)
        total = 16 + length
        if total > MAX_V2_LENGTH:
            raise ProxyProtocolError("too long header")
        if command == _CMD_PROXY and length < _ADDR_LEN[family]:
            raise ProxyProtocolError("header length too short for the address family")
        if len(buf) < total:
            return None
        return _decode_v2(bytes(buf[:total]), command, family), total

    # ---- v1

    def _feed_v1(self, buf: bytearray) -> tuple[ProxyHeader, int] | None:
        seen = min(len(buf), len(V1_PREFIX))
        if buf[:seen] != V1_PREFIX[:seen]:
            raise ProxyProtocolError("not a PROXY protocol header")
        end = buf.find(b"\n", 0, MAX_V1_LENGTH)
        if end < 0:
            if len(buf) >= MAX_V1_LENGTH:
                raise ProxyProtocolError("v1 header without CRLF in 107 bytes")
            return None
        if end == 0 or buf[end - 1] != 0x0D:
            raise ProxyProtocolError("v1 header line not terminated by CRLF")
        return _decode_v1(bytes(buf[: end - 1])), end + 1


def _decode_v2(raw: bytes, command: int, family: int) -> ProxyHeader:
    source = dest = None
    addr_len = _ADDR_LEN.get(family, 0)
    if command == _CMD_PROXY:
        if family == _AF_INET:
            src, dst, sport, dport = struct.unpack_from("!4s4sHH", raw, 16)
            source = (str(ipaddress.IPv4Address(src)), sport)
            dest = (str(ipaddress.IPv4Address(dst)), dport)
        elif family == _AF_INET6:
            src, dst, sport, dport = struct.unpack_from("!16s16sHH", raw, 16)
            source = (str(ipaddress.IPv6Address(src)), sport)
            dest = (str(ipaddress.IPv6Address(dst)), dport)
        # UNSPEC and UNIX: keep the real socket addresses.
    elif family not in _ADDR_LEN or len(raw) - 16 < addr_len:
        # LOCAL ignores the family; with an odd one there is nothing to read but the length.
        return ProxyHeader(version=2, command="LOCAL", source=None, dest=None)
    tlvs = _parse_tlvs(raw, 16 + addr_len)
    _check_crc(raw, tlvs, 16 + addr_len)
    ssl = None
    authority = None
    for kind, value in tlvs:
        if kind == PP2_TYPE_SSL:
            ssl = SslInfo.decode(value)
        elif kind == PP2_TYPE_AUTHORITY:
            try:
                authority = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ProxyProtocolError("AUTHORITY TLV is not UTF-8") from None
        elif kind == PP2_TYPE_UNIQUE_ID and len(value) > _MAX_UNIQUE_ID:
            raise ProxyProtocolError("UNIQUE_ID TLV longer than 128 bytes")
    return ProxyHeader(
        version=2,
        command="PROXY" if command == _CMD_PROXY else "LOCAL",
        source=source,
        dest=dest,
        tlvs=tuple(tlvs),
        ssl=ssl,
        authority=authority,
    )


def _parse_tlvs(block: bytes, offset: int) -> list[tuple[int, bytes]]:
    tlvs = []
    while offset < len(block):
        if len(block) - offset < 3:
            raise ProxyProtocolError("truncated TLV header")
        kind, length = struct.unpack_from("!BH", block, offset)
        offset += 3
        if offset + length > len(block):
            raise ProxyProtocolError(f"TLV 0x{kind:02x} overruns the header")
        tlvs.append((kind, bytes(block[offset : offset + length])))
        offset += length
    return tlvs


def _check_crc(raw: bytes, tlvs: list[tuple[int, bytes]], tlv_start: int) -> None:
    """Verify PP2_TYPE_CRC32C: checksum of the whole header with the value zeroed."""
    offset = tlv_start
    for kind, value in tlvs:
        if kind == PP2_TYPE_CRC32C:
            if len(value) != 4:
                raise ProxyProtocolError("CRC32C TLV must be 4 bytes")
            zeroed = raw[: offset + 3] + b"\x00\x00\x00\x00" + raw[offset + 7 :]
            if crc32c(zeroed) != struct.unpack("!I", value)[0]:
                raise ProxyProtocolError("CRC32C mismatch")
        offset += 3 + len(value)


def _decode_v1(line: bytes) -> ProxyHeader:
    parts = line.split(b" ")
    if len(parts) < 2 or parts[0] != b"PROXY":
        raise ProxyProtocolError("bad v1 header")
    proto = parts[1]
    if proto == b"UNKNOWN":
        # Anything may follow UNKNOWN; the real socket addresses apply.
        return ProxyHeader(version=1, command="PROXY", source=None, dest=None)
    if proto not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("bad v1 protocol family")
    if len(parts) != 6:
        raise ProxyProtocolError("bad v1 field count")
    want = 4 if proto == b"TCP4" else 6
    src = _v1_address(parts[2], want)
    dst = _v1_address(parts[3], want)
    return ProxyHeader(
        version=1,
        command="PROXY",
        source=(src, _v1_port(parts[4])),
        dest=(dst, _v1_port(parts[5])),
    )


def _v1_address(raw: bytes, version: int) -> str:
    try:
        text = raw.decode("ascii")
        if "%" in text:
            raise ValueError(text)
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError("bad v1 address") from None
    if addr.version != version:
        raise ProxyProtocolError("v1 address does not match the protocol family")
    return str(addr)


def _v1_port(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 5 or (len(raw) > 1 and raw[0:1] == b"0"):
        raise ProxyProtocolError("bad v1 port")
    port = int(raw)
    if port > 65535:
        raise ProxyProtocolError("v1 port out of range")
    return port


# --------------------------------------------------------------------------- builders


def _encode_tlv(kind: int, value: bytes) -> bytes:
    if not 0 <= kind <= 0xFF:
        raise ValueError(f"TLV type out of range: {kind}")
    if len(value) > 0xFFFF:
        raise ValueError("TLV value longer than 65535 bytes")
    return struct.pack("!BH", kind, len(value)) + value


def _ip_pair(source: Address, dest: Address) -> tuple[_IP, _IP]:
    """Parse both addresses; mixed families are sent as IPv6 with IPv4-mapped addresses (like HAProxy)."""
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(dest[0])
    if src.version != dst.version:
        if src.version == 4:
            src = ipaddress.IPv6Address(f"::ffff:{src}")
        if dst.version == 4:
            dst = ipaddress.IPv6Address(f"::ffff:{dst}")
    for port in (source[1], dest[1]):
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
    return src, dst


def build_v1(source: Address | None, dest: Address | None) -> bytes:
    """A v1 line; None addresses give `PROXY UNKNOWN`."""
    if source is None or dest is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = _ip_pair(source, dest)
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {source[1]} {dest[1]}\r\n".encode("ascii")


def _finish_v2(ver_cmd: int, family: int, body: bytes, tlvs: Iterable[tuple[int, bytes]],
               with_crc: bool) -> bytes:
    tlv_bytes = bytearray()
    for kind, value in tlvs:
        tlv_bytes += _encode_tlv(kind, bytes(value))
    crc_at = None
    if with_crc:
        crc_at = 16 + len(body) + len(tlv_bytes) + 3
        tlv_bytes += _encode_tlv(PP2_TYPE_CRC32C, b"\x00\x00\x00\x00")
    length = len(body) + len(tlv_bytes)
    if 16 + length > MAX_V2_LENGTH:
        raise ValueError(f"PROXY v2 header longer than {MAX_V2_LENGTH} bytes")
    raw = bytearray(V2_SIGNATURE + struct.pack("!BBH", ver_cmd, family, length) + body + tlv_bytes)
    if crc_at is not None:
        raw[crc_at : crc_at + 4] = struct.pack("!I", crc32c(bytes(raw)))
    return bytes(raw)


def build_v2(source: Address, dest: Address, tlvs: Iterable[tuple[int, bytes]] = (), *,
             with_crc32c: bool = False) -> bytes:
    """A v2 PROXY header over TCP. TLVs are written in the given order; types 0xE0-0xEF
    are free for the application (palomar's proxy-to-backend hop uses them)."""
    src, dst = _ip_pair(source, dest)
    if src.version == 4:
        family = (_AF_INET << 4) | _T_STREAM
        body = struct.pack("!4s4sHH", src.packed, dst.packed, source[1], dest[1])
    else:
        family = (_AF_INET6 << 4) | _T_STREAM
        body = struct.pack("!16s16sHH", src.packed, dst.packed, source[1], dest[1])
    return _finish_v2(0x20 | _CMD_PROXY, family, body, tlvs, with_crc32c)


def build_v2_local(tlvs: Sequence[tuple[int, bytes]] = (), *, with_crc32c: bool = False) -> bytes:
    """A v2 LOCAL header (a health check: the receiver keeps the real addresses)."""
    return _finish_v2(0x20 | _CMD_LOCAL, 0x00, b"", tlvs, with_crc32c)
