"""Fuzzing the proxy -> backend hop codec: header verification and the reply line."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from palomar.protocols import hop
from unit.fuzz.hostile import byte_by_byte, cuts, more, nasty

SECRET = b"s" * 32
CHALLENGE = b"c" * 16
CLIENT = ("192.0.2.1", 40000)
LOCAL = ("198.51.100.2", 10143)


def sealed(user: str = "alice", protocol: str = "imap", admin: bytes | None = None) -> list[tuple[int, bytes]]:
    request = hop.HopRequest(user=user, protocol=protocol, session_id="s1", backend_host="b1", client=CLIENT,
                             local=LOCAL, admin=admin)
    return hop.seal(request, SECRET, CHALLENGE)


@st.composite
def mutated_tlvs(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    tlvs = sealed(draw(st.sampled_from(["alice", "", "\xe9", "a\r\nb"])),
                  draw(st.sampled_from(["imap", "doveadm", "x"])), draw(st.none() | st.binary(max_size=10)))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["drop", "dup", "change", "add"]))
        index = draw(st.integers(0, len(tlvs) - 1))
        if action == "drop" and len(tlvs) > 1:
            tlvs.pop(index)
        elif action == "dup":
            tlvs.append(tlvs[index])
        elif action == "change":
            tlvs[index] = (tlvs[index][0], draw(st.one_of(nasty(6), st.binary(max_size=40))))
        else:
            tlvs.append((draw(st.integers(0, 255)), draw(st.binary(max_size=20))))
    return tlvs


@given(tlvs=st.one_of(mutated_tlvs(), st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=12)),
       client=st.sampled_from([CLIENT, None, ("::1", 1)]),
       challenge=st.sampled_from([CHALLENGE, b"d" * 16, b""]))
@more(4)
def test_verify_raises_only_hop_errors(tlvs, client, challenge):
    try:
        request = hop.verify(client, LOCAL, tlvs, secret=SECRET, own_host="b1", challenge=challenge)
    except hop.HopError:
        return
    assert request.backend_host == "b1" and request.protocol in hop.PROTOCOLS


@given(user=st.text(max_size=30), protocol=st.sampled_from(hop.PROTOCOLS))
def test_sealed_request_verifies_only_against_its_challenge(user, protocol):
    tlvs = sealed(user, protocol)
    request = hop.verify(CLIENT, LOCAL, tlvs, secret=SECRET, own_host="b1", challenge=CHALLENGE)
    assert request.user == user
    try:  # a replay meets a fresh challenge on its new connection
        hop.verify(CLIENT, LOCAL, tlvs, secret=SECRET, own_host="b1", challenge=hop.new_challenge())
    except hop.HopError as exc:
        assert "MAC" in str(exc)
    else:
        raise AssertionError("a replayed header was accepted")


REPLIES = st.sampled_from([b"OK aGVsbG8=\r\n", b"OK \r\n", b"OK !!\r\n", b"REFERRAL b2 moved\r\n", b"REFERRAL \r\n",
                           b"FAIL auth bad\r\n", b"FAIL what x\r\n", b"FAIL\r\n", b"NOPE\r\n", b"REFERRAL \xff\r\n",
                           b"OK aGVsbG8=\n"])


@given(data=st.one_of(st.tuples(REPLIES, st.binary(max_size=20)).map(b"".join), st.binary(max_size=100)),
       st_data=st.data())
@more(2)
def test_reply_reader_only_raises_hop_errors_and_ignores_chunking(data, st_data):
    def read(chunks):
        reader = hop.ReplyReader()
        for chunk in chunks:
            try:
                reply = reader.feed(chunk)
            except hop.HopError:
                return "error"
            if reply is not None:
                return reply, reader.leftover + b"".join(chunks[chunks.index(chunk) + 1 :])
            assert len(reader._buf) <= hop.MAX_REPLY_LINE
        return None

    first = read([data])
    assert read(st_data.draw(cuts(data))) == first
    assert read(byte_by_byte(data)) == first


@given(size=st.integers(0, 3 * hop.MAX_REPLY_LINE))
def test_reply_reader_caps_its_buffer(size):
    reader = hop.ReplyReader()
    try:
        for _ in range(4):
            assert reader.feed(b"x" * size) is None
            assert len(reader._buf) <= hop.MAX_REPLY_LINE
    except hop.HopError:
        assert size * 4 > hop.MAX_REPLY_LINE


@given(reply=st.one_of(
    st.binary(max_size=50).map(hop.LoggedIn),
    st.tuples(st.text("abc.-1", min_size=1, max_size=10), st.text(max_size=20)).map(lambda t: hop.Referral(*t)),
    st.tuples(st.sampled_from(hop.FAILURE_CODES), st.text(max_size=20)).map(lambda t: hop.Failure(*t))))
def test_reply_round_trip(reply):
    line = hop.encode_reply(reply)
    assert line.endswith(b"\r\n") and line.count(b"\n") == 1
    decoded = hop.decode_reply(line)
    assert type(decoded) is type(reply)
    if isinstance(reply, hop.LoggedIn):
        assert decoded == reply

