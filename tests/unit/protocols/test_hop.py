"""The hop contract (docs/design/backend-hop.md): both sides, every refusal."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from palomar.protocols import hop
from palomar.protocols.proxyproto import ProxyHeaderParser, build_v2

SECRET = b"s3cret-hop-key"
CHALLENGE = bytes(range(16))
"""A fixed challenge, so the byte vectors below stay stable."""


def request(**overrides) -> hop.HopRequest:
    values = dict(
        user="alice@example.test",
        protocol="imap",
        session_id="sess-1",
        backend_host="be1.example.test",
        client=("203.0.113.7", 51234),
        local=("127.0.0.1", 143),
        client_tls=True,
        ttl=5,
    )
    values.update(overrides)
    return hop.HopRequest(**values)


def verify(tlvs, *, client=("203.0.113.7", 51234), local=("127.0.0.1", 143), secret=SECRET,
           own="be1.example.test", challenge=CHALLENGE):
    return hop.verify(client, local, tlvs, secret=secret, own_host=own, challenge=challenge)


def test_sealed_request_verifies_with_all_fields():
    got = verify(hop.seal(request(), SECRET, CHALLENGE))
    assert got == request()
    assert (got.user, got.protocol, got.session_id, got.client_tls, got.ttl) == (
        "alice@example.test", "imap", "sess-1", True, 5)


def test_header_byte_vector():
    """The header a proxy writes for a known request and challenge, laid out and MACed as
    docs/design/backend-hop.md says (the MAC recomputed here from the document, not the code)."""
    raw = build_v2(("203.0.113.7", 51234), ("127.0.0.1", 143), hop.seal(request(), SECRET, CHALLENGE))
    tlvs = bytes.fromhex(
        "e0000132"                                        # version "2"
        "e10012" + b"alice@example.test".hex() +          # user
        "e20004" + b"imap".hex() +                        # protocol
        "e30006" + b"sess-1".hex() +                      # session id
        "e60010" + b"be1.example.test".hex() +            # backend
        "e7000105"                                        # ttl 5
        "e8000131"                                        # client TLS "1"
    )
    addresses = bytes([203, 0, 113, 7, 127, 0, 0, 1]) + (51234).to_bytes(2, "big") + (143).to_bytes(2, "big")
    mac = hmac.new(SECRET, b"palomar-hop-v2\0" + bytes([16]) + CHALLENGE
                   + bytes([203, 0, 113, 7]) + (51234).to_bytes(2, "big")
                   + bytes([127, 0, 0, 1]) + (143).to_bytes(2, "big") + tlvs, hashlib.sha256).digest()
    body = addresses + tlvs + b"\xef\x00\x20" + mac
    assert raw == b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + len(body).to_bytes(2, "big") + body


def test_round_trip_through_a_real_proxy_v2_header():
    tlvs = hop.seal(request(client=("2001:db8::10", 40000), local=("::1", 993)), SECRET, CHALLENGE)
    raw = build_v2(("2001:db8::10", 40000), ("::1", 993), tlvs)
    parser = ProxyHeaderParser()
    header = parser.feed(raw + b"after")
    assert header is not None
    assert parser.remaining == b"after"
    items = header.tlvs.items() if isinstance(header.tlvs, dict) else header.tlvs
    got = hop.verify(header.source, header.dest, list(items), secret=SECRET, own_host="be1.example.test",
                     challenge=CHALLENGE)
    assert got == request(client=("2001:db8::10", 40000), local=("::1", 993))


def test_wrong_secret_is_refused():
    with pytest.raises(hop.HopError, match="MAC"):
        verify(hop.seal(request(), b"other-secret", CHALLENGE))


def test_header_answering_another_challenge_is_refused():
    """A captured header replayed on a new connection answers the old connection's challenge."""
    captured = hop.seal(request(), SECRET, CHALLENGE)
    with pytest.raises(hop.HopError, match="replayed from another connection"):
        verify(captured, challenge=hop.new_challenge())


@pytest.mark.parametrize("field,value", [
    (hop.TLV_USER, b"mallory@example.test"),
    (hop.TLV_PROTOCOL, b"pop3"),
    (hop.TLV_CLIENT_TLS, b"0"),
    (hop.TLV_TTL, b"\x09"),
    (hop.TLV_BACKEND, b"be2.example.test"),
])
def test_altered_field_breaks_the_mac(field, value):
    tampered = [(t, value if t == field else v) for t, v in hop.seal(request(), SECRET, CHALLENGE)]
    with pytest.raises(hop.HopError, match="MAC"):
        verify(tampered)


def test_altered_client_address_breaks_the_mac():
    with pytest.raises(hop.HopError, match="MAC"):
        verify(hop.seal(request(), SECRET, CHALLENGE), client=("198.51.100.9", 51234))


def test_header_for_another_backend_is_refused():
    with pytest.raises(hop.HopError, match="meant for backend"):
        verify(hop.seal(request(backend_host="be2.example.test"), SECRET, CHALLENGE))


def test_ttl_zero_is_refused():
    with pytest.raises(hop.HopError, match="TTL"):
        verify(hop.seal(request(ttl=0), SECRET, CHALLENGE))


def test_admin_command_only_with_doveadm():
    assert verify(hop.seal(request(protocol="doveadm", admin=b"{}"), SECRET, CHALLENGE)).admin == b"{}"
    with pytest.raises(hop.HopError, match="admin command"):
        verify(hop.seal(request(admin=b"{}"), SECRET, CHALLENGE))


def test_missing_duplicate_and_foreign_headers_are_refused():
    tlvs = hop.seal(request(), SECRET, CHALLENGE)
    with pytest.raises(hop.HopError, match="lacks"):
        verify([t for t in tlvs if t[0] != hop.TLV_SESSION])
    with pytest.raises(hop.HopError, match="duplicate"):
        verify(tlvs + [(hop.TLV_USER, b"x")])
    with pytest.raises(hop.HopError, match="not a palomar hop"):
        verify([(0x01, b"imap")])
    with pytest.raises(hop.HopError, match="without addresses"):
        hop.verify(None, None, tlvs, secret=SECRET, own_host="be1.example.test", challenge=CHALLENGE)


def test_version_1_header_is_refused():
    """A proxy of the time-and-nonce version writes version 1: refused, whatever its MAC."""
    tlvs = [(t, b"1" if t == hop.TLV_VERSION else v) for t, v in hop.seal(request(), SECRET, CHALLENGE)]
    with pytest.raises(hop.HopError, match="version 2"):
        verify(tlvs)


def test_challenge_line_byte_vector_and_round_trip():
    line = hop.encode_challenge(CHALLENGE)
    assert line == b"HOP 2 AAECAwQFBgcICQoLDA0ODw==\r\n"
    reader = hop.ChallengeReader()
    assert reader.feed(line[:5]) is None
    assert reader.feed(line[5:]) == CHALLENGE
    assert reader.leftover == b""


def test_challenges_are_fresh():
    assert len({hop.new_challenge() for _ in range(100)}) == 100
    assert len(hop.new_challenge()) == hop.CHALLENGE_BYTES


@pytest.mark.parametrize("line,message", [
    (b"* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n", "did not send a hop challenge"),
    (b"HOP 1 AAECAwQFBgcICQoLDA0ODw==\r\n", "hop version '1'"),
    (b"HOP 2 !!!!\r\n", "malformed hop challenge"),
    (b"HOP 2 AAEC\r\n", "malformed hop challenge"),
    (b"\x16\x03\x03\x00\x7a\x02\r\n", "did not send a hop challenge"),
])
def test_bad_challenge_lines_are_refused(line, message):
    with pytest.raises(hop.HopError, match=message):
        hop.decode_challenge(line)


@pytest.mark.parametrize("reply,line", [
    (hop.LoggedIn(b"L OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"),
     b"OK TCBPSyBbQ0FQQUJJTElUWSBJTUFQNHJldjEgSURMRV0gTG9nZ2VkIGluDQo=\r\n"),
    (hop.Referral("be2.example.test", "group moved"), b"REFERRAL be2.example.test group moved\r\n"),
    (hop.Failure("temp", "Dovecot is not answering"), b"FAIL temp Dovecot is not answering\r\n"),
])
def test_reply_lines_round_trip(reply, line):
    assert hop.encode_reply(reply) == line
    assert hop.decode_reply(line) == reply


@pytest.mark.parametrize("line", [b"HELLO\r\n", b"OK !!notbase64\r\n", b"FAIL bogus text\r\n", b"REFERRAL \r\n"])
def test_malformed_replies_raise(line):
    with pytest.raises(hop.HopError):
        hop.decode_reply(line)


def test_reply_reader_keeps_bytes_after_the_line_and_handles_fragments():
    reader = hop.ReplyReader()
    data = hop.encode_reply(hop.Failure("auth", "no")) + b"extra"
    assert reader.feed(data[:3]) is None
    assert reader.feed(data[3:]) == hop.Failure("auth", "no")
    assert reader.leftover == b"extra"


def test_reply_reader_refuses_endless_line():
    reader = hop.ReplyReader()
    with pytest.raises(hop.HopError, match="too long"):
        reader.feed(b"x" * (hop.MAX_REPLY_LINE + 1))


SITE_A, SITE_B = "0b6f1a5e-0000-4000-8000-00000000000a", "0b6f1a5e-0000-4000-8000-00000000000b"


def test_via_sites_travel_under_the_mac():
    sent = request(via_sites=(SITE_A, SITE_B))
    assert verify(hop.seal(sent, SECRET, CHALLENGE)).via_sites == (SITE_A, SITE_B)
    tlvs = [(t, SITE_A.encode() if t == hop.TLV_VIA_SITES else v) for t, v in hop.seal(sent, SECRET, CHALLENGE)]
    with pytest.raises(hop.HopError, match="MAC mismatch"):  # a relay cannot drop a site it passed
        verify(tlvs)
    plain = hop.seal(request(), SECRET, CHALLENGE)
    assert hop.TLV_VIA_SITES not in dict(plain) and verify(plain).via_sites == ()


@pytest.mark.parametrize("via", [("not-a-uuid",), tuple([SITE_A] * 9)])
def test_malformed_via_sites_are_refused(via):
    with pytest.raises(hop.HopError, match="via-sites"):
        verify(hop.seal(request(via_sites=via), SECRET, CHALLENGE))


def test_the_referred_backend_travels_under_the_mac():
    sent = request(referred="127.0.0.103")
    assert verify(hop.seal(sent, SECRET, CHALLENGE)).referred == "127.0.0.103"
    tlvs = [(t, b"127.0.0.9" if t == hop.TLV_REFERRED else v) for t, v in hop.seal(sent, SECRET, CHALLENGE)]
    with pytest.raises(hop.HopError, match="MAC mismatch"):  # only a cluster member names the backend
        verify(tlvs)
    plain = hop.seal(request(), SECRET, CHALLENGE)
    assert hop.TLV_REFERRED not in dict(plain) and verify(plain).referred == ""


@pytest.mark.parametrize("referred", ["two words", "x" * 256, "tab\there"])
def test_a_malformed_referred_backend_is_refused(referred):
    with pytest.raises(hop.HopError, match="referred-backend"):
        verify(hop.seal(request(referred=referred), SECRET, CHALLENGE))
