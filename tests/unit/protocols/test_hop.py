"""The hop contract (docs/design/backend-hop.md): both sides, every refusal."""

from __future__ import annotations

import pytest

from palomar.protocols import hop
from palomar.protocols.proxyproto import ProxyHeaderParser, build_v2

SECRET = b"s3cret-hop-key"
NOW = 1_800_000_000_000_000


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
           own="be1.example.test", now=NOW, replay=None):
    return hop.verify(client, local, tlvs, secret=secret, own_host=own, now_us=now,
                      replay=replay or hop.ReplayCache())


def test_sealed_request_verifies_with_all_fields():
    tlvs, stamped = hop.seal(request(), SECRET, NOW)
    got = verify(tlvs)
    assert got == stamped
    assert (got.user, got.protocol, got.session_id, got.client_tls, got.ttl) == (
        "alice@example.test", "imap", "sess-1", True, 5)


def test_round_trip_through_a_real_proxy_v2_header():
    tlvs, stamped = hop.seal(request(client=("2001:db8::10", 40000), local=("::1", 993)), SECRET, NOW)
    raw = build_v2(("2001:db8::10", 40000), ("::1", 993), tlvs)
    parser = ProxyHeaderParser()
    header = parser.feed(raw + b"after")
    assert header is not None
    assert parser.remaining == b"after"
    items = header.tlvs.items() if isinstance(header.tlvs, dict) else header.tlvs
    got = hop.verify(header.source, header.dest, list(items), secret=SECRET, own_host="be1.example.test",
                     now_us=NOW, replay=hop.ReplayCache())
    assert got == stamped


def test_wrong_secret_is_refused():
    tlvs, _ = hop.seal(request(), b"other-secret", NOW)
    with pytest.raises(hop.HopError, match="MAC"):
        verify(tlvs)


@pytest.mark.parametrize("field,value", [
    (hop.TLV_USER, b"mallory@example.test"),
    (hop.TLV_PROTOCOL, b"pop3"),
    (hop.TLV_CLIENT_TLS, b"0"),
    (hop.TLV_TTL, b"\x09"),
])
def test_altered_field_breaks_the_mac(field, value):
    tlvs, _ = hop.seal(request(), SECRET, NOW)
    tampered = [(t, value if t == field else v) for t, v in tlvs]
    with pytest.raises(hop.HopError, match="MAC"):
        verify(tampered)


def test_altered_client_address_breaks_the_mac():
    tlvs, _ = hop.seal(request(), SECRET, NOW)
    with pytest.raises(hop.HopError, match="MAC"):
        verify(tlvs, client=("198.51.100.9", 51234))


def test_replayed_header_is_refused():
    tlvs, _ = hop.seal(request(), SECRET, NOW)
    cache = hop.ReplayCache()
    verify(tlvs, replay=cache)
    with pytest.raises(hop.HopError, match="replayed"):
        verify(tlvs, now=NOW + 1000, replay=cache)


@pytest.mark.parametrize("skew", [-hop.DEFAULT_WINDOW_US - 1, hop.DEFAULT_WINDOW_US + 1])
def test_stale_or_future_header_is_refused(skew):
    tlvs, _ = hop.seal(request(), SECRET, NOW)
    with pytest.raises(hop.HopError, match="time window"):
        verify(tlvs, now=NOW + skew)


def test_header_for_another_backend_is_refused():
    tlvs, _ = hop.seal(request(backend_host="be2.example.test"), SECRET, NOW)
    with pytest.raises(hop.HopError, match="meant for backend"):
        verify(tlvs)


def test_ttl_zero_is_refused():
    tlvs, _ = hop.seal(request(ttl=0), SECRET, NOW)
    with pytest.raises(hop.HopError, match="TTL"):
        verify(tlvs)


def test_missing_duplicate_and_foreign_headers_are_refused():
    tlvs, _ = hop.seal(request(), SECRET, NOW)
    with pytest.raises(hop.HopError, match="lacks"):
        verify([t for t in tlvs if t[0] != hop.TLV_NONCE])
    with pytest.raises(hop.HopError, match="duplicate"):
        verify(tlvs + [(hop.TLV_USER, b"x")])
    with pytest.raises(hop.HopError, match="not a palomar hop"):
        verify([(0x01, b"imap")])
    with pytest.raises(hop.HopError, match="without addresses"):
        hop.verify(None, None, tlvs, secret=SECRET, own_host="be1.example.test", now_us=NOW,
                   replay=hop.ReplayCache())


def test_replay_cache_forgets_after_the_window_but_stays_correct_inside():
    cache = hop.ReplayCache(window_us=10)
    assert cache.check_and_add(b"a", 100)
    assert not cache.check_and_add(b"a", 105)
    assert cache.check_and_add(b"b", 200)
    assert len(cache._seen) == 1


def test_seal_uses_a_fresh_nonce_each_time():
    a, _ = hop.seal(request(), SECRET, NOW)
    b, _ = hop.seal(request(), SECRET, NOW)
    assert dict(a)[hop.TLV_NONCE] != dict(b)[hop.TLV_NONCE]


def test_repr_does_not_show_the_nonce():
    _, stamped = hop.seal(request(), SECRET, NOW)
    assert "nonce" not in repr(stamped)


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
