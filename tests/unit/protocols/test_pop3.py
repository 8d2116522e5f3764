"""POP3 login cores: byte vectors for the proxy's server side and the backend's client side."""

from __future__ import annotations

import base64

import pytest

from palomar.protocols.pop3 import (
    AUTH_FAILED,
    TEMP_FAILED,
    ClientState,
    Close,
    LoggedIn,
    LoginFailed,
    LoginRequest,
    Pop3LoginClient,
    Pop3LoginServer,
    ServerState,
    StartTlsRequest,
    auth_error,
    error_reply,
    format_xclient,
    in_use_error,
    referral_error,
    temp_error,
)

PRIVACY = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
CAPA_FULL = (b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\nUSER\r\n"
             b"SASL PLAIN LOGIN\r\n.\r\n")


def server(*, starttls=True, secured=False, allow_cleartext=True, **kw) -> Pop3LoginServer:
    return Pop3LoginServer(starttls=starttls, secured=secured, allow_cleartext=allow_cleartext,
                           greeting="Palomar ready.", **kw)


def talk(core: Pop3LoginServer, data: bytes) -> tuple[list, bytes]:
    events = core.receive(data)
    return events, core.data_to_send()


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# --------------------------------------------------------------------------- server: greeting, CAPA


def test_greeting():
    assert server().greeting() == b"+OK Palomar ready.\r\n"


def test_greeting_must_be_one_line():
    with pytest.raises(ValueError):
        Pop3LoginServer(starttls=False, secured=True, allow_cleartext=False, greeting="a\r\nb")


def test_capa_plaintext_port_with_stls_and_cleartext_allowed():
    assert talk(server(), b"CAPA\r\n") == ([], CAPA_FULL)


def test_capa_hides_user_and_mechanisms_when_cleartext_refused():
    _, out = talk(server(allow_cleartext=False), b"capa\r\n")
    assert out == (b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\n"
                   b"SASL\r\n.\r\n")


def test_capa_on_secured_connection_has_no_stls():
    _, out = talk(server(secured=True, allow_cleartext=False), b"CAPA\r\n")
    assert b"STLS" not in out
    assert out.endswith(b"USER\r\nSASL PLAIN LOGIN\r\n.\r\n")


def test_capa_without_tls_support_has_no_stls():
    _, out = talk(server(starttls=False), b"CAPA\r\n")
    assert b"STLS\r\n" not in out


# --------------------------------------------------------------------------- server: USER/PASS


def test_user_pass_login_request_and_success_with_pipelined_commands():
    core = server()
    events, out = talk(core, b"USER alice\r\nPASS s3cret with spaces\r\nSTAT\r\nLIST\r\n")
    assert out == b"+OK\r\n"
    assert events == [LoginRequest(None, "alice", "s3cret with spaces", "PLAIN", "PASS")]
    assert core.state is ServerState.AWAIT_LOGIN
    assert talk(core, b"RETR 1\r\n") == ([], b"")
    core.login_succeeded()
    assert core.state is ServerState.LOGGED_IN
    assert core.receive(b"QUIT\r\n") == []
    assert core.leftover() == b"STAT\r\nLIST\r\nRETR 1\r\nQUIT\r\n"
    assert core.leftover() == b""
    assert core.data_to_send() == b""


def test_login_failed_sends_reply_and_continues_with_pipelined_commands():
    core = server()
    events, _ = talk(core, b"USER alice\r\nPASS wrong\r\nCAPA\r\n")
    assert len(events) == 1
    assert core.login_failed(None, AUTH_FAILED) == []
    assert core.data_to_send() == b"-ERR [AUTH] Authentication failed.\r\n" + CAPA_FULL
    assert core.state is ServerState.COMMAND
    # the USER is forgotten after a failed PASS
    assert talk(core, b"PASS again\r\n") == ([], b"-ERR No username given.\r\n")


def test_login_failed_with_a_pipelined_second_login():
    core = server()
    events, _ = talk(core, b"USER a\r\nPASS 1\r\nUSER b\r\nPASS 2\r\n")
    assert [e.username for e in events] == ["a"]
    events = core.login_failed(None, temp_error())
    assert core.data_to_send() == b"-ERR [SYS/TEMP] Account is temporarily unavailable.\r\n+OK\r\n"
    assert [(e.username, e.password) for e in events] == [("b", "2")]


def test_login_answers_require_a_pending_login():
    core = server()
    with pytest.raises(RuntimeError):
        core.login_succeeded()
    with pytest.raises(RuntimeError):
        core.login_failed(None, AUTH_FAILED)
    talk(core, b"USER a\r\nPASS b\r\n")
    with pytest.raises(RuntimeError):
        core.login_failed("a1", AUTH_FAILED)  # type: ignore[arg-type]


def test_pass_without_user():
    assert talk(server(), b"PASS x\r\n") == ([], b"-ERR No username given.\r\n")


def test_user_and_pass_refused_in_cleartext():
    core = server(allow_cleartext=False)
    events, out = talk(core, b"USER alice\r\nPASS secret\r\n")
    assert events == []
    assert out == PRIVACY + PRIVACY


def test_cleartext_allowed_after_stls():
    core = server(allow_cleartext=False)
    events, out = talk(core, b"STLS\r\n")
    assert out == b"+OK Begin TLS negotiation now.\r\n"
    assert events == [StartTlsRequest()]
    core.tls_started()
    events, out = talk(core, b"USER alice\r\nPASS secret\r\n")
    assert out == b"+OK\r\n"
    assert events == [LoginRequest(None, "alice", "secret")]


# --------------------------------------------------------------------------- server: STLS


def test_stls_discards_pipelined_plaintext_bytes():
    core = server()
    events, out = talk(core, b"STLS\r\nUSER evil\r\nPASS injected\r\n")
    assert events == [StartTlsRequest()]
    assert out == b"+OK Begin TLS negotiation now.\r\n"
    assert core.state is ServerState.AWAIT_TLS
    assert talk(core, b"PASS more\r\n") == ([], b"")
    core.tls_started()
    assert core.secured and core.tls_active
    assert talk(core, b"PASS x\r\n") == ([], b"-ERR No username given.\r\n")
    _, out = talk(core, b"CAPA\r\n")
    assert b"STLS" not in out


def test_stls_forgets_a_user_given_before_tls():
    core = server()
    talk(core, b"USER mallory\r\n")
    talk(core, b"STLS\r\n")
    core.tls_started()
    assert talk(core, b"PASS x\r\n") == ([], b"-ERR No username given.\r\n")


def test_stls_refusals():
    assert talk(server(secured=True), b"STLS\r\n") == ([], b"-ERR TLS is already active.\r\n")
    assert talk(server(starttls=False), b"STLS\r\n") == ([], b"-ERR TLS support isn't enabled.\r\n")
    with pytest.raises(RuntimeError):
        server().tls_started()


# --------------------------------------------------------------------------- server: AUTH


def test_auth_plain_with_initial_response():
    core = server()
    events, out = talk(core, b"AUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\n")
    assert out == b""
    assert events == [LoginRequest(None, "alice", "pw", "PLAIN", "AUTH")]
    assert not events[0].is_master_login


def test_auth_plain_with_authzid_is_a_master_login():
    events, _ = talk(server(), b"AUTH PLAIN " + b64(b"bob\0alice\0pw") + b"\r\n")
    assert events[0].authzid == "bob" and events[0].is_master_login


def test_auth_plain_with_continuation():
    core = server()
    events, out = talk(core, b"AUTH PLAIN\r\n")
    assert (events, out) == ([], b"+ \r\n")
    assert core.state is ServerState.AUTH_CONTINUE
    events, out = talk(core, b64(b"\0alice\0pw") + b"\r\n")
    assert events == [LoginRequest(None, "alice", "pw", "PLAIN", "AUTH")]


def test_auth_login_two_steps_and_with_initial_response():
    core = server()
    assert talk(core, b"auth login\r\n") == ([], b"+ VXNlcm5hbWU6\r\n")
    assert talk(core, b64(b"alice") + b"\r\n") == ([], b"+ UGFzc3dvcmQ6\r\n")
    events, _ = talk(core, b64(b"pw") + b"\r\n")
    assert events == [LoginRequest(None, "alice", "pw", "LOGIN", "AUTH")]
    core = server()
    assert talk(core, b"AUTH LOGIN " + b64(b"alice") + b"\r\n") == ([], b"+ UGFzc3dvcmQ6\r\n")


def test_auth_cancel():
    core = server()
    talk(core, b"AUTH PLAIN\r\n")
    assert talk(core, b"*\r\n") == ([], b"-ERR Authentication aborted by client.\r\n")
    assert core.state is ServerState.COMMAND
    core = server()
    talk(core, b"AUTH LOGIN\r\n")
    talk(core, b64(b"alice") + b"\r\n")
    assert talk(core, b"*\r\n") == ([], b"-ERR Authentication aborted by client.\r\n")


def test_auth_bad_base64():
    assert talk(server(), b"AUTH PLAIN !!\r\n") == (
        [], b"-ERR [AUTH] Invalid base64 data in initial response\r\n")
    assert talk(server(), b"AUTH PLAIN " + b64(b"\0a\0b") + b"==\r\n")[1] == (
        b"-ERR [AUTH] Invalid base64 data in initial response\r\n")
    core = server()
    talk(core, b"AUTH PLAIN\r\n")
    assert talk(core, b"%%%\r\n") == ([], b"-ERR [AUTH] Invalid base64 data in continued response\r\n")
    assert core.state is ServerState.COMMAND


def test_auth_malformed_plain_and_empty_response_fail_without_a_request():
    for ir in (b"=", b64(b"alice\0pw"), b64(b"\0\0pw"), b64(b"a\0b\0c\0d")):
        assert talk(server(), b"AUTH PLAIN " + ir + b"\r\n") == ([], AUTH_FAILED.encode() + b"\r\n")


def test_auth_without_mechanism_lists_them():
    assert talk(server(), b"AUTH\r\n") == ([], b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n")
    assert talk(server(allow_cleartext=False), b"AUTH\r\n") == ([], b"+OK\r\n.\r\n")


def test_auth_unsupported_mechanism_and_cleartext_refused():
    assert talk(server(), b"AUTH CRAM-MD5\r\n") == ([], b"-ERR [AUTH] Unsupported authentication mechanism.\r\n")
    core = server(allow_cleartext=False)
    assert talk(core, b"AUTH PLAIN " + b64(b"\0a\0b") + b"\r\n") == ([], b"-ERR [AUTH] Plaintext authentication disabled.\r\n")
    assert core.bad_commands == 0


# --------------------------------------------------------------------------- server: QUIT, errors


def test_quit_closes():
    core = server()
    events, out = talk(core, b"QUIT\r\nCAPA\r\n")
    assert out == b"+OK Logging out\r\n"
    assert events == [Close("Aborted login (logged out)")]
    assert core.state is ServerState.CLOSED
    assert talk(core, b"CAPA\r\n") == ([], b"")


def test_unknown_commands_then_too_many_closes():
    core = server()
    events, out = talk(core, b"NOOP\r\nSTAT\r\n")
    assert (events, out) == ([], b"-ERR Unknown command.\r\n-ERR Unknown command.\r\n")
    events, out = talk(core, b"XFOO ADDR=1.2.3.4\r\nCAPA\r\n")
    assert out == b"-ERR Unknown command.\r\n-ERR Too many invalid bad commands.\r\n"
    assert events == [Close("Too many invalid commands")]
    assert core.state is ServerState.CLOSED


def test_overlong_line_is_refused_and_closes():
    core = server(max_line=64)
    events, out = talk(core, b"USER " + b"x" * 100)
    assert out == b"-ERR Input buffer full, aborting\r\n"
    assert events == [Close("Input buffer full")]
    assert talk(core, b"\r\nCAPA\r\n") == ([], b"")


def test_line_at_the_limit_is_accepted():
    core = server(max_line=16)
    assert talk(core, b"USER " + b"u" * 11 + b"\r\n") == ([], b"+OK\r\n")


def test_flood_while_login_is_pending_closes():
    core = server(max_line=64)
    talk(core, b"USER a\r\nPASS b\r\n")
    events, out = talk(core, b"x" * 70000)
    assert events == [Close("Input buffer full")]
    assert out == b"-ERR Input buffer full, aborting\r\n"


def test_bare_lf_and_lowercase_commands():
    events, out = talk(server(), b"user alice\npass pw\n")
    assert out == b"+OK\r\n"
    assert events == [LoginRequest(None, "alice", "pw")]


def test_one_byte_at_a_time():
    core = server()
    stream = b"CAPA\r\nAUTH LOGIN\r\n" + b64(b"alice") + b"\r\n" + b64(b"pw") + b"\r\nSTAT\r\n"
    events: list = []
    out = b""
    for i in range(len(stream)):
        events += core.receive(stream[i:i + 1])
        out += core.data_to_send()
    assert events == [LoginRequest(None, "alice", "pw", "LOGIN", "AUTH")]
    assert out == CAPA_FULL + b"+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n"
    core.login_succeeded()
    assert core.leftover() == b"STAT\r\n"


def test_8bit_credentials_survive():
    events, _ = talk(server(), "USER jürgen\r\nPASS pässwörd\r\n".encode())
    assert events[0].username == "jürgen"
    assert events[0].password.encode("utf-8", "surrogateescape") == "pässwörd".encode()
    events, _ = talk(server(), b"USER x\r\nPASS \xff\xfe\r\n")
    assert events[0].password.encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_passwords_do_not_appear_in_reprs():
    core = server()
    events, _ = talk(core, b"USER alice\r\nPASS Sup3rS3cret\r\n")
    for text in (repr(events), str(events[0]), repr(core)):
        assert "Sup3rS3cret" not in text
    core = server()
    talk(core, b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n")
    assert "alice" not in repr(core) and "alice" not in repr(core._sasl)
    events, _ = talk(core, b64(b"Sup3rS3cret") + b"\r\n")
    assert "Sup3rS3cret" not in repr(events)


# --------------------------------------------------------------------------- reply helpers


def test_reply_helpers():
    assert auth_error() == AUTH_FAILED == "-ERR [AUTH] Authentication failed."
    assert temp_error() == TEMP_FAILED == "-ERR [SYS/TEMP] Account is temporarily unavailable."
    assert in_use_error("Too many connections.") == "-ERR [IN-USE] Too many connections."
    assert referral_error("alice@10.0.0.2:1110") == "-ERR [REFERRAL/alice@10.0.0.2:1110] Referral"
    assert error_reply(None, "Nope.") == "-ERR Nope."
    core = server()
    talk(core, b"USER a\r\nPASS b\r\n")
    with pytest.raises(ValueError):
        core.login_failed(None, "-ERR two\r\nlines")


# --------------------------------------------------------------------------- client

IR = b64(b"alice@example.test\0palomar-master\0m4sterPW")
XCLIENT = {"ADDR": "203.0.113.7", "PORT": "40001", "SESSION": "wDcCCsgi", "TTL": "4"}
XCLIENT_LINE = b"XCLIENT ADDR=203.0.113.7 PORT=40001 SESSION=wDcCCsgi TTL=4\r\n"


def client(xclient=XCLIENT) -> Pop3LoginClient:
    return Pop3LoginClient("alice@example.test", master_user="palomar-master", master_password="m4sterPW",
                           xclient=xclient)


def test_client_trusted_banner_pipelines_xclient_and_auth():
    core = client()
    assert core.data_to_send() == b""
    assert core.receive(b"+OK [XCLIENT] Dovecot (Debian) ready.\r\n") is None
    assert core.data_to_send() == XCLIENT_LINE + b"AUTH PLAIN " + IR + b"\r\n"
    assert core.xclient_sent and core.state is ClientState.XCLIENT
    result = core.receive(b"+OK Updated\r\n+OK Logged in.\r\n")
    assert result == LoggedIn(b"+OK Logged in.\r\n")
    assert core.result is result and core.state is ClientState.DONE


def test_client_untrusted_banner_sends_no_xclient():
    core = client()
    core.receive(b"+OK Dovecot ready.\r\n")
    assert core.data_to_send() == b"AUTH PLAIN " + IR + b"\r\n"
    assert not core.xclient_sent
    assert core.receive(b"+OK Logged in.\r\n") == LoggedIn(b"+OK Logged in.\r\n")


def test_client_without_xclient_fields_sends_none():
    core = client(xclient={})
    core.receive(b"+OK [XCLIENT] Dovecot ready.\r\n")
    assert core.data_to_send() == b"AUTH PLAIN " + IR + b"\r\n"


def test_client_one_byte_at_a_time_keeps_leftover():
    core = client()
    stream = b"+OK [XCLIENT] Dovecot ready.\r\n+OK Updated\r\n+OK Logged in.\r\n+OK 2 messages\r\n"
    results = [core.receive(stream[i:i + 1]) for i in range(len(stream))]
    assert [r for r in results if r is not None] == [LoggedIn(b"+OK Logged in.\r\n")]
    assert core.leftover() == b"+OK 2 messages\r\n"
    assert core.leftover() == b""


@pytest.mark.parametrize(
    ("reply", "kind", "code", "text", "referral"),
    [
        (b"-ERR [AUTH] Authentication failed.", "auth", "AUTH", "Authentication failed.", None),
        (b"-ERR Authentication failed.", "auth", None, "Authentication failed.", None),
        (b"-ERR [SYS/TEMP] Account is temporarily unavailable.", "temp", "SYS/TEMP",
         "Account is temporarily unavailable.", None),
        (b"-ERR [REFERRAL/alice@127.0.0.3:1110] Referral", "referral", "REFERRAL", "Referral",
         "alice@127.0.0.3:1110"),
        (b"-ERR [IN-USE] Too many connections.", "other", "IN-USE", "Too many connections.", None),
    ],
)
def test_client_failure_mapping(reply, kind, code, text, referral):
    core = client()
    core.receive(b"+OK [XCLIENT] ready.\r\n+OK Updated\r\n")
    result = core.receive(reply + b"\r\n")
    assert result == LoginFailed(kind, code, text, referral, reply + b"\r\n")


def test_client_xclient_refused_is_a_config_failure():
    core = client()
    core.receive(b"+OK [XCLIENT] ready.\r\n")
    result = core.receive(b"-ERR You are not from trusted IP\r\n-ERR [AUTH] Authentication failed.\r\n")
    assert isinstance(result, LoginFailed) and result.kind == "config"
    assert "not from trusted IP" in result.text
    assert core.leftover() == b"-ERR [AUTH] Authentication failed.\r\n"


def test_client_protocol_errors():
    core = client()
    result = core.receive(b"* OK IMAP4rev1 ready\r\n")
    assert isinstance(result, LoginFailed) and result.kind == "protocol"
    core = client()
    core.receive(b"+OK ready.\r\n")
    assert core.receive(b"+ \r\n").kind == "protocol"
    core = client()
    core.receive(b"+OK ready.\r\n")
    assert core.receive(b"-ERR [REFERRAL/] Referral\r\n").kind == "protocol"
    core = Pop3LoginClient("u", master_user="m", master_password="p", max_line=32)
    assert core.receive(b"+OK " + b"x" * 64).kind == "protocol"


def test_client_connection_lost():
    core = client()
    core.receive(b"+OK [XCLIENT] ready.\r\n")
    result = core.connection_lost()
    assert result == LoginFailed("temp", None, "Backend disconnected during login")
    assert core.connection_lost() is result
    core = client()
    ok = core.receive(b"+OK ready.\r\n+OK Logged in.\r\n")
    assert core.connection_lost() is ok


def test_client_input_validation_and_secrets():
    with pytest.raises(ValueError):
        Pop3LoginClient("", master_user="m", master_password="p")
    with pytest.raises(ValueError):
        Pop3LoginClient("u\0x", master_user="m", master_password="p")
    with pytest.raises(ValueError):
        client(xclient={"ADDR": "1.2.3.4 TTL=9"})
    with pytest.raises(ValueError):
        client(xclient={"BAD KEY": "1"})
    core = client()
    assert "m4sterPW" not in repr(core)


def test_format_xclient():
    assert format_xclient({}) is None
    assert format_xclient({"addr": "::1", "port": "1"}) == b"XCLIENT ADDR=::1 PORT=1\r\n"
