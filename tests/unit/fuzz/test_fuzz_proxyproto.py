"""Fuzzing the PROXY protocol v1/v2 header parser."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from palomar.protocols.proxyproto import (
    MAX_V1_LENGTH,
    MAX_V2_LENGTH,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderParser,
    ProxyProtocolError,
    SslInfo,
    build_v1,
    build_v2,
    crc32c,
)
from unit.fuzz.hostile import byte_by_byte, cuts, more, nasty

V1_FIELDS = st.sampled_from([b"PROXY", b"TCP4", b"TCP6", b"UNKNOWN", b"1.2.3.4", b"::1", b"::ffff:1.2.3.4",
                             b"fe80::1%eth0", b"256.1.1.1", b"01.2.3.4", b"80", b"0", b"65535", b"65536", b"080",
                             b"", b" ", b"\xd9\xa3", b"1" * 40])


@st.composite
def v1_header(draw: st.DrawFn) -> bytes:
    words = draw(st.lists(st.one_of(V1_FIELDS, nasty(3)), max_size=7))
    return b"PROXY " + b" ".join(words) + draw(st.sampled_from([b"\r\n", b"\n", b"\r", b""]))


@st.composite
def tlv(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([PP2_TYPE_SSL, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_UNIQUE_ID, 0x01, 0x04,
                                 0x30, 0xE0, 0xEF, 0xFF]))
    if kind == PP2_TYPE_SSL and draw(st.booleans()):
        value = struct.pack("!BI", draw(st.integers(0, 255)), draw(st.integers(0, 2**32 - 1)))
        value += b"".join(draw(st.lists(tlv(), max_size=2)))
    else:
        value = draw(st.one_of(nasty(6), st.binary(max_size=140)))
    length = len(value) if draw(st.sampled_from([True, True, False])) else draw(st.integers(0, 0xFFFF))
    return struct.pack("!BH", kind, length) + value


@st.composite
def v2_header(draw: st.DrawFn) -> bytes:
    ver_cmd = draw(st.sampled_from([0x21, 0x20, 0x22, 0x11, 0x2F]))
    fam = draw(st.sampled_from([0x11, 0x21, 0x31, 0x00, 0x12, 0x41, 0x13]))
    addr = draw(st.sampled_from([b"", b"\x7f\x00\x00\x01" * 2 + b"\x00\x50" * 2, b"\x00" * 36, b"\x00" * 216,
                                 b"\x01" * 5]))
    body = addr + b"".join(draw(st.lists(tlv(), max_size=3)))
    length = len(body) if draw(st.sampled_from([True, True, False])) else draw(st.integers(0, 0xFFFF))
    raw = bytearray(V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, length) + body)
    crc_at = raw.find(bytes([PP2_TYPE_CRC32C, 0, 4]), 16)
    if crc_at > 0 and draw(st.booleans()):  # a correct checksum, so the parse goes past it
        raw[crc_at + 3 : crc_at + 7] = b"\0\0\0\0"
        raw[crc_at + 3 : crc_at + 7] = struct.pack("!I", crc32c(bytes(raw[: 16 + length])))
    return bytes(raw)


def parse(chunks: list[bytes]) -> tuple:
    parser = ProxyHeaderParser()
    for chunk in chunks:
        try:
            header = parser.feed(chunk)
        except ProxyProtocolError as exc:
            return ("error", exc.reason)
        if header is None:
            assert len(parser._buf) < MAX_V2_LENGTH
            assert parser._buf[:1] != b"P" or len(parser._buf) < MAX_V1_LENGTH
    header = parser.header
    if header is None:
        return ("incomplete",)
    assert isinstance(header, ProxyHeader)
    return ("header", header, parser.remaining)


@given(data=st.one_of(v1_header(), v2_header(), st.binary(max_size=120)).flatmap(
    lambda head: st.tuples(st.just(head), st.binary(max_size=20))), st_data=st.data())
@more(6)
def test_parser_only_raises_protocol_errors_and_ignores_chunking(data, st_data):
    head, tail = data
    stream = head + tail
    first = parse([stream])
    split = parse(st_data.draw(cuts(stream)))
    single = parse(byte_by_byte(stream))
    # Fed gradually, a bad header may be refused as early as its first wrong byte, before
    # what a single chunk would be refused for; a good one must come out the same.
    for other in (split, single):
        assert other[0] == first[0] or (other[0] == "error" and first[0] == "error")
        if first[0] == "header":
            assert other == first


@given(src=st.ip_addresses(), dst=st.ip_addresses(), sport=st.integers(0, 65535), dport=st.integers(0, 65535),
       unique=st.binary(max_size=128), authority=st.text(max_size=40), ssl_cn=st.none() | st.text(max_size=30),
       crc=st.booleans(), tail=st.binary(max_size=30), st_data=st.data())
def test_v2_round_trip(src, dst, sport, dport, unique, authority, ssl_cn, crc, tail, st_data):
    tlvs = [(PP2_TYPE_UNIQUE_ID, unique), (PP2_TYPE_AUTHORITY, authority.encode()),
            (PP2_TYPE_SSL, SslInfo(cn=ssl_cn, version="TLSv1.3").encode())]
    raw = build_v2((str(src), sport), (str(dst), dport), tlvs, with_crc32c=crc)
    kind, header, remaining = parse(st_data.draw(cuts(raw + tail)))
    assert kind == "header" and remaining == tail
    assert header.source[1] == sport and header.dest[1] == dport
    assert header.authority == authority and header.unique_id == unique and header.ssl.cn == ssl_cn


@given(src=st.ip_addresses(), dst=st.ip_addresses(), sport=st.integers(0, 65535), dport=st.integers(0, 65535),
       tail=st.binary(max_size=30))
def test_v1_round_trip(src, dst, sport, dport, tail):
    raw = build_v1((str(src), sport), (str(dst), dport))
    kind, header, remaining = parse(byte_by_byte(raw + tail))
    assert kind == "header" and remaining == tail and header.version == 1
    assert (header.source[1], header.dest[1]) == (sport, dport)
