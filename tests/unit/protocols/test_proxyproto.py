"""PROXY protocol v1/v2: the spec's byte vectors, fragmentation, and every malformed class."""

from __future__ import annotations

import struct

import pytest

from palomar.protocols.proxyproto import (
    MAX_V2_LENGTH,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderParser,
    ProxyProtocolError,
    SslInfo,
    build_v1,
    build_v2,
    build_v2_local,
    crc32c,
)

IPV4_EXAMPLE = bytes.fromhex(
    "0d0a0d0a000d0a515549540a2111000c"
    "c000020ac6336401c822008f"
)
IPV6_EXAMPLE = bytes.fromhex(
    "0d0a0d0a000d0a515549540a21210024"
    "20010db8000000000000000000000010"
    "20010db8000000000000000000000001"
    "c82203e1"
)
LOCAL_EXAMPLE = bytes.fromhex("0d0a0d0a000d0a515549540a20000000")
TLS_EXAMPLE = bytes.fromhex(
    "0d0a0d0a000d0a515549540a2111004a"
    "c000020ac6336401c82203e1"
    "020010696d61702e6578616d706c652e636f6d"
    "2000280100000000"
    "210007544c5376312e33"
    "230016544c535f4145535f3235365f47434d5f534841333834"
)


def parse(data: bytes) -> tuple[ProxyHeader, bytes]:
    parser = ProxyHeaderParser()
    header = parser.feed(data)
    assert header is not None
    return header, parser.remaining


def parse_bytewise(data: bytes) -> tuple[ProxyHeader, bytes]:
    parser = ProxyHeaderParser()
    for i in range(len(data) - 1):
        assert parser.feed(data[i : i + 1]) is None, f"header complete too early at byte {i}"
    header = parser.feed(data[-1:])
    assert header is not None
    return header, parser.remaining


def reject(data: bytes, match: str) -> None:
    with pytest.raises(ProxyProtocolError, match=match):
        ProxyHeaderParser().feed(data)


# --------------------------------------------------------------------------- spec vectors


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_ipv4_example_parses():
    header, rest = parse(IPV4_EXAMPLE + b"a1 CAPABILITY\r\n")
    assert header.version == 2
    assert header.command == "PROXY"
    assert header.source == ("192.0.2.10", 51234)
    assert header.dest == ("198.51.100.1", 143)
    assert header.tlvs == ()
    assert header.ssl is None and header.authority is None
    assert rest == b"a1 CAPABILITY\r\n"


def test_ipv6_example_parses():
    header, rest = parse(IPV6_EXAMPLE)
    assert header.source == ("2001:db8::10", 51234)
    assert header.dest == ("2001:db8::1", 993)
    assert rest == b""


def test_local_example_parses():
    header, rest = parse(LOCAL_EXAMPLE + b"x")
    assert header.command == "LOCAL" and header.is_local
    assert header.source is None and header.dest is None
    assert rest == b"x"


def test_tls_example_parses():
    header, _ = parse(TLS_EXAMPLE)
    assert header.source == ("192.0.2.10", 51234)
    assert header.dest == ("198.51.100.1", 993)
    assert header.authority == "imap.example.com"
    assert header.ssl == SslInfo(client=1, verify=0, version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384")
    assert header.ssl.client_ssl
    assert not header.ssl.cert_verified
    assert [kind for kind, _ in header.tlvs] == [PP2_TYPE_AUTHORITY, PP2_TYPE_SSL]


def test_builder_reproduces_the_spec_vectors():
    assert build_v2(("192.0.2.10", 51234), ("198.51.100.1", 143)) == IPV4_EXAMPLE
    assert build_v2(("2001:db8::10", 51234), ("2001:db8::1", 993)) == IPV6_EXAMPLE
    assert build_v2_local() == LOCAL_EXAMPLE
    ssl = SslInfo(client=1, verify=0, version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384")
    built = build_v2(
        ("192.0.2.10", 51234), ("198.51.100.1", 993),
        [(PP2_TYPE_AUTHORITY, b"imap.example.com"), (PP2_TYPE_SSL, ssl.encode())],
    )
    assert built == TLS_EXAMPLE
    assert len(built) == 90


@pytest.mark.parametrize(
    "vector", [IPV4_EXAMPLE, IPV6_EXAMPLE, LOCAL_EXAMPLE, TLS_EXAMPLE], ids=["ipv4", "ipv6", "local", "tls"]
)
def test_one_byte_at_a_time(vector):
    whole, _ = parse(vector)
    header, rest = parse_bytewise(vector)
    assert header == whole
    assert rest == b""


def test_bytes_fed_after_completion_accumulate_in_remaining():
    parser = ProxyHeaderParser()
    header = parser.feed(IPV4_EXAMPLE + b"ab")
    assert parser.feed(b"cd") is header
    assert parser.remaining == b"abcd"


def test_mixed_families_are_sent_as_ipv4_mapped_ipv6():
    header, _ = parse(build_v2(("192.0.2.10", 1), ("2001:db8::1", 2)))
    assert header.source == ("::ffff:c000:20a", 1)
    assert header.dest == ("2001:db8::1", 2)


# --------------------------------------------------------------------------- TLVs


def test_local_with_tlvs_appended_like_a_haproxy_health_check():
    raw = build_v2_local([(PP2_TYPE_NOOP, b"\x00\x00\x00"), (0xE1, b"check")], with_crc32c=True)
    assert raw[12:14] == b"\x20\x00"
    header, rest = parse(raw + b"rest")
    assert header.command == "LOCAL"
    assert header.source is None
    assert header.tlv(0xE1) == b"check"
    assert header.tlv(PP2_TYPE_CRC32C) is not None
    assert rest == b"rest"


def test_round_trip_with_custom_tlvs_and_crc():
    tlvs = [(0xE0, b"alice@example.test"), (0xE5, b""), (0xEF, bytes(range(256))), (PP2_TYPE_ALPN, b"imap")]
    raw = build_v2(("203.0.113.7", 40000), ("127.0.0.1", 143), tlvs, with_crc32c=True)
    header, _ = parse_bytewise(raw)
    assert header.tlvs[:4] == tuple(tlvs)
    assert header.tlvs[4][0] == PP2_TYPE_CRC32C
    assert header.alpn == b"imap"
    assert header.tlv(0xE0) == b"alice@example.test"
    assert header.tlv(0xE2) is None


def test_crc_mismatch_is_refused():
    raw = bytearray(build_v2(("203.0.113.7", 40000), ("127.0.0.1", 143), [(0xE0, b"bob")], with_crc32c=True))
    raw[-8] ^= 0x01  # flip a bit inside the 0xE0 value, the CRC no longer matches
    reject(bytes(raw), "CRC32C mismatch")


def test_crc_tlv_of_wrong_size_is_refused():
    raw = build_v2(("203.0.113.7", 1), ("127.0.0.1", 2), [(PP2_TYPE_CRC32C, b"\x00\x00")])
    reject(raw, "CRC32C TLV must be 4 bytes")


def test_ssl_with_verified_client_cert():
    ssl = SslInfo(client=0x07, verify=0, version="TLSv1.2", cn="alice", sig_alg="RSA-SHA256", key_alg="RSA2048")
    header, _ = parse(build_v2(("192.0.2.1", 1), ("192.0.2.2", 2), [(PP2_TYPE_SSL, ssl.encode())]))
    assert header.ssl == ssl
    assert header.ssl.cert_verified
    failed = SslInfo(client=0x03, verify=1, cn="mallory")
    header, _ = parse(build_v2(("192.0.2.1", 1), ("192.0.2.2", 2), [(PP2_TYPE_SSL, failed.encode())]))
    assert not header.ssl.cert_verified


def v2_raw(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, size) + body


IPV4_BODY = IPV4_EXAMPLE[16:]


def test_tlv_overrunning_the_block_is_refused():
    reject(v2_raw(0x21, 0x11, IPV4_BODY + b"\xe0\x00\x05abc"), "overruns")


def test_truncated_tlv_header_is_refused():
    reject(v2_raw(0x21, 0x11, IPV4_BODY + b"\xe0\x00"), "truncated TLV")


def test_ssl_tlv_too_short_and_sub_tlv_overrun_are_refused():
    reject(v2_raw(0x21, 0x11, IPV4_BODY + b"\x20\x00\x02\x01\x00"), "SSL TLV shorter")
    reject(v2_raw(0x21, 0x11, IPV4_BODY + b"\x20\x00\x08\x01\x00\x00\x00\x00\x21\x00\x09"), "overruns")


def test_authority_must_be_utf8():
    reject(v2_raw(0x21, 0x11, IPV4_BODY + b"\x02\x00\x02\xff\xfe"), "AUTHORITY")


def test_unique_id_is_limited_to_128_bytes():
    ok = build_v2(("192.0.2.1", 1), ("192.0.2.2", 2), [(0x05, b"u" * 128)])
    assert parse(ok)[0].unique_id == b"u" * 128
    reject(build_v2(("192.0.2.1", 1), ("192.0.2.2", 2), [(0x05, b"u" * 129)]), "UNIQUE_ID")


# --------------------------------------------------------------------------- malformed v2


def test_signature_mismatch_detected_on_the_first_wrong_byte():
    parser = ProxyHeaderParser()
    assert parser.feed(b"\r\n\r\n") is None
    with pytest.raises(ProxyProtocolError, match="signature"):
        parser.feed(b"\x01")


def test_garbage_first_byte_is_refused_immediately():
    reject(b"a", "not a PROXY")
    reject(b"\x16\x03\x01", "not a PROXY")  # a TLS ClientHello


def test_bad_version_is_refused():
    reject(V2_SIGNATURE + b"\x11", "version")


def test_bad_command_is_refused():
    reject(V2_SIGNATURE + b"\x22", "command")


@pytest.mark.parametrize("fam", [0x41, 0x13, 0x1F])
def test_bad_family_or_transport_is_refused(fam):
    reject(V2_SIGNATURE + b"\x21" + bytes([fam]), "family|transport")


@pytest.mark.parametrize("fam", [0x12, 0x22, 0x10])
def test_proxy_over_udp_or_unspec_transport_is_refused(fam):
    reject(V2_SIGNATURE + b"\x21" + bytes([fam]), "not using TCP")


def test_local_ignores_the_family():
    header, rest = parse(v2_raw(0x20, 0x55, b"ignored") + b"!")
    assert header.command == "LOCAL" and header.tlvs == ()
    assert rest == b"!"


def test_proxy_with_unspec_or_unix_family_uses_real_addresses():
    header, _ = parse(v2_raw(0x21, 0x00, b""))
    assert header.command == "PROXY" and header.source is None
    header, _ = parse(v2_raw(0x21, 0x31, b"/a".ljust(108, b"\0") + b"/b".ljust(108, b"\0")))
    assert header.source is None and header.dest is None


@pytest.mark.parametrize(("fam", "short"), [(0x11, 11), (0x21, 35), (0x31, 215)])
def test_len_too_short_for_family_is_refused_before_the_body(fam, short):
    # Refused as soon as the 16 fixed bytes are in: no need to wait for the body.
    reject(V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", short), "too short")


def test_header_longer_than_1500_bytes_is_refused_early():
    reject(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_LENGTH - 16 + 1), "too long")
    exact = v2_raw(0x21, 0x11, IPV4_BODY + b"\xe0" + struct.pack("!H", MAX_V2_LENGTH - 31) +
                   b"x" * (MAX_V2_LENGTH - 31))
    assert len(exact) == MAX_V2_LENGTH
    assert parse(exact)[0].source == ("192.0.2.10", 51234)


def test_incomplete_v2_header_waits():
    parser = ProxyHeaderParser()
    assert parser.feed(IPV4_EXAMPLE[:-1]) is None
    assert parser.header is None


def test_builder_refuses_oversized_headers_and_bad_values():
    with pytest.raises(ValueError):
        build_v2(("192.0.2.1", 1), ("192.0.2.2", 2), [(0xE0, b"x" * 1500)])
    with pytest.raises(ValueError):
        build_v2(("192.0.2.1", 70000), ("192.0.2.2", 2))
    with pytest.raises(ValueError):
        build_v2(("192.0.2.1", 1), ("192.0.2.2", 2), [(256, b"")])
    with pytest.raises(ValueError):
        build_v2(("not-an-ip", 1), ("192.0.2.2", 2))


# --------------------------------------------------------------------------- v1


def test_v1_tcp4():
    header, rest = parse(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n* OK")
    assert header.version == 1 and header.command == "PROXY"
    assert header.source == ("192.168.0.1", 56324)
    assert header.dest == ("192.168.0.11", 443)
    assert rest == b"* OK"


def test_v1_tcp6():
    header, _ = parse_bytewise(b"PROXY TCP6 2001:db8::10 2001:db8::1 51234 993\r\n")
    assert header.source == ("2001:db8::10", 51234)
    assert header.dest == ("2001:db8::1", 993)


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN 1.2.3.4 junk whatever\r\n"])
def test_v1_unknown_uses_real_addresses(line):
    header, rest = parse(line + b"next")
    assert header.source is None and header.dest is None
    assert rest == b"next"


def test_v1_builder_round_trips():
    assert build_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
    assert build_v1(("2001:db8::10", 51234), ("2001:db8::1", 993)) == (
        b"PROXY TCP6 2001:db8::10 2001:db8::1 51234 993\r\n")
    assert build_v1(None, None) == b"PROXY UNKNOWN\r\n"
    header, _ = parse(build_v1(("::1", 0), ("::1", 65535)))
    assert header.source == ("::1", 0) and header.dest == ("::1", 65535)


def test_v1_longest_valid_line_is_accepted():
    line = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
            b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
    assert len(line) == 104
    assert parse(line)[0].dest == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)


def test_v1_without_crlf_in_107_bytes_is_refused():
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN " + b"x" * 92) is None  # 106 bytes
    with pytest.raises(ProxyProtocolError, match="107"):
        parser.feed(b"x")


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "field count"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "field count"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "field count|address"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "protocol family"),
        (b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", "does not match"),
        (b"PROXY TCP6 2001:db8::1 5.6.7.8 1 2\r\n", "does not match"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", "address"),
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "address"),
        (b"PROXY TCP4 localhost 5.6.7.8 1 2\r\n", "address"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "address"),
        (b"PROXY\r\n", "not a PROXY|bad v1"),
        (b"PROXX TCP4", "not a PROXY"),
    ],
)
def test_v1_malformed(line, match):
    reject(line, match)


def test_v1_lone_cr_is_not_a_terminator():
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r") is None
    with pytest.raises(ProxyProtocolError):
        parser.feed(b"x" * 80)
