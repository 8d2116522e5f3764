"""The hop's admin channel: the 0xE9 command TLV is sealed like every field, and commands are checked."""

from __future__ import annotations

import pytest

from palomar.backend.admin import AdminError, decode_command, decode_result, encode_command
from palomar.protocols import hop

SECRET = b"s3cret"
CHALLENGE = b"c" * 16


def admin_request(protocol: str = "doveadm", admin: bytes | None = None) -> hop.HopRequest:
    return hop.HopRequest(user="u@example.test", protocol=protocol, session_id="admin-1", backend_host="be1",
                          client=("127.0.0.1", 40000), local=("127.0.0.2", 7425),
                          admin=admin if admin is not None else encode_command("kick", user="u@example.test"))


def verify(tlvs: list[tuple[int, bytes]], request: hop.HopRequest) -> hop.HopRequest:
    return hop.verify(request.client, request.local, tlvs, secret=SECRET, own_host="be1", challenge=CHALLENGE)


def test_admin_command_survives_seal_and_verify() -> None:
    request = admin_request()
    tlvs = hop.seal(request, SECRET, CHALLENGE)
    assert decode_command(verify(tlvs, request).admin or b"") == {"cmd": "kick", "user": "u@example.test"}


def test_altered_admin_command_breaks_the_mac() -> None:
    request = admin_request()
    tlvs = hop.seal(request, SECRET, CHALLENGE)
    other = encode_command("kick", user="other@example.test")
    forged = [(t, other if t == hop.TLV_ADMIN else v) for t, v in tlvs]
    with pytest.raises(hop.HopError, match="MAC"):
        verify(forged, request)


def test_admin_command_needs_protocol_doveadm() -> None:
    request = admin_request(protocol="imap")
    tlvs = hop.seal(request, SECRET, CHALLENGE)
    with pytest.raises(hop.HopError, match="doveadm"):
        verify(tlvs, request)


def test_a_session_has_no_admin_field() -> None:
    request = hop.HopRequest(user="u", protocol="imap", session_id="s", backend_host="be1",
                             client=("127.0.0.1", 1), local=("127.0.0.2", 2))
    tlvs = hop.seal(request, SECRET, CHALLENGE)
    assert hop.TLV_ADMIN not in dict(tlvs)
    assert verify(tlvs, request).admin is None


@pytest.mark.parametrize(("payload", "message"), [
    (b"not json", "not JSON"),
    (b"[1]", "unknown admin command"),
    (b'{"cmd": "reboot"}', "unknown admin command"),
    (b'{"cmd": "kick"}', "needs 'user'"),
    (b'{"cmd": "group-access", "group": ""}', "non-empty strings"),
    (b'{"cmd": "user-access", "user": 5}', "non-empty strings"),
])
def test_bad_commands_are_refused_with_a_reason(payload: bytes, message: str) -> None:
    with pytest.raises(AdminError, match=message):
        decode_command(payload)


def test_results_and_refusals_for_the_cli() -> None:
    assert decode_result(hop.LoggedIn(b'{"result": "started"}')) == {"result": "started"}
    with pytest.raises(AdminError, match="refused: hop refused"):
        decode_result(hop.Failure("denied", "hop refused"))
    with pytest.raises(AdminError, match="unreadable"):
        decode_result(hop.LoggedIn(b"[]"))


def test_capabilities_command_needs_no_argument() -> None:
    assert decode_command(encode_command("capabilities")) == {"cmd": "capabilities"}
