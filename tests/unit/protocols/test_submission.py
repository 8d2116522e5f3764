"""Submission login cores, byte for byte: the proxy's server side and the backend's client side."""

from __future__ import annotations

import base64

import pytest

from palomar.protocols.submission import (
    AUTH_FAILED,
    LOGGED_IN,
    TEMP_FAILED,
    Close,
    LoggedIn,
    LoginFailed,
    LoginRequest,
    ServerState,
    StartTlsRequest,
    SubmissionLoginClient,
    SubmissionLoginServer,
    post_login_ehlo_reply,
)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def make_server(**kwargs: object) -> SubmissionLoginServer:
    options: dict = {"hostname": "proxy.example", "starttls": True, "secured": False, "allow_cleartext": True}
    options.update(kwargs)
    return SubmissionLoginServer(**options)


def talk(server: SubmissionLoginServer, data: bytes) -> tuple[bytes, list]:
    events = server.receive(data)
    return server.data_to_send(), events


EHLO_PLAIN = (b"250-proxy.example\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250-BURL imap\r\n250-CHUNKING\r\n"
              b"250-ENHANCEDSTATUSCODES\r\n250-SIZE\r\n250-STARTTLS\r\n250 PIPELINING\r\n")
"""Dovecot 2.3 submission-login's pre-login EHLO, keyword for keyword and in its order."""

# --------------------------------------------------------------------------- server


def test_greeting_and_ehlo() -> None:
    server = make_server()
    assert server.greeting() == b"220 proxy.example Palomar ready.\r\n"
    out, events = talk(server, b"EHLO client.example\r\n")
    assert out == EHLO_PLAIN and events == []
    assert server.ehlo_name == "client.example"


def test_ehlo_without_starttls_and_without_cleartext_auth() -> None:
    server = make_server(starttls=False, allow_cleartext=False)
    out, _ = talk(server, b"EHLO c\r\n")
    assert out == (b"250-proxy.example\r\n250-8BITMIME\r\n250-BURL imap\r\n250-CHUNKING\r\n"
                   b"250-ENHANCEDSTATUSCODES\r\n250-SIZE\r\n250 PIPELINING\r\n")
    out, events = talk(server, b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n")
    assert out == b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    assert events == []


def test_secured_connection_offers_auth_but_not_starttls() -> None:
    server = make_server(secured=True, allow_cleartext=False)
    out, _ = talk(server, b"EHLO c\r\n")
    assert b"250-AUTH PLAIN LOGIN\r\n" in out and b"STARTTLS" not in out
    out, _ = talk(server, b"STARTTLS\r\n")
    assert out == b"502 5.5.1 TLS is already active.\r\n"


def test_helo_and_hostname_errors() -> None:
    server = make_server()
    out, _ = talk(server, b"HELO c.example\r\nEHLO\r\nEHLO a\x01b\r\n")
    assert out == b"250 proxy.example\r\n501 Missing hostname\r\n501 5.5.4 Invalid hostname\r\n"
    assert server.ehlo_name == "c.example"


def test_configured_capabilities_cannot_include_state_ones() -> None:
    with pytest.raises(ValueError, match="STARTTLS"):
        make_server(capabilities=("PIPELINING", "STARTTLS"))
    with pytest.raises(ValueError):
        make_server(hostname="two words")


def test_starttls_discards_pipelined_bytes_and_requires_new_ehlo() -> None:
    server = make_server()
    talk(server, b"EHLO c\r\n")
    out, events = talk(server, b"STARTTLS\r\nAUTH PLAIN " + b64(b"\0u\0p") + b"\r\n")
    assert out == b"220 2.0.0 Begin TLS negotiation now.\r\n"
    assert events == [StartTlsRequest()]
    assert talk(server, b"MAIL FROM:<injected@x>\r\n") == (b"", [])
    server.tls_started()
    assert server.secured and server.ehlo_name is None
    out, _ = talk(server, b"EHLO again\r\n")
    assert b"STARTTLS" not in out and b"AUTH PLAIN LOGIN" in out
    with pytest.raises(RuntimeError):
        server.tls_started()


def test_starttls_not_enabled_and_with_args() -> None:
    server = make_server(starttls=False)
    out, _ = talk(server, b"STARTTLS\r\nSTARTTLS x\r\n")
    assert out == b"502 5.5.1 TLS support is not enabled.\r\n501 5.5.4 Invalid parameters\r\n"


def test_auth_plain_with_initial_response() -> None:
    server = make_server()
    talk(server, b"EHLO client.example\r\n")
    out, events = talk(server, b"AUTH PLAIN " + b64(b"\0alice@example.test\0s3cret") + b"\r\n")
    assert out == b""
    assert events == [LoginRequest("alice@example.test", "s3cret", "PLAIN", "client.example", None)]
    assert "s3cret" not in repr(events[0]) and "s3cret" not in repr(server)
    assert server.state is ServerState.AWAIT_LOGIN


def test_auth_plain_with_continuation_and_authzid() -> None:
    server = make_server()
    out, events = talk(server, b"AUTH PLAIN\r\n")
    assert out == b"334 \r\n" and events == []
    out, events = talk(server, b64(b"bob\0master\0pw") + b"\r\n")
    assert events == [LoginRequest("master", "pw", "PLAIN", None, "bob")]
    assert events[0].is_master_login


def test_auth_plain_empty_initial_response_is_equals_sign() -> None:
    server = make_server()
    out, events = talk(server, b"AUTH PLAIN =\r\n")
    assert out == AUTH_FAILED.encode() + b"\r\n" and events == []  # empty message: not credentials


def test_auth_login_prompts() -> None:
    server = make_server()
    out, _ = talk(server, b"AUTH LOGIN\r\n")
    assert out == b"334 VXNlcm5hbWU6\r\n"
    out, _ = talk(server, b64(b"carol") + b"\r\n")
    assert out == b"334 UGFzc3dvcmQ6\r\n"
    out, events = talk(server, b64(b"pw") + b"\r\n")
    assert out == b"" and events == [LoginRequest("carol", "pw", "LOGIN", None, None)]


def test_auth_login_with_username_as_initial_response() -> None:
    server = make_server()
    out, _ = talk(server, b"AUTH LOGIN " + b64(b"carol") + b"\r\n")
    assert out == b"334 UGFzc3dvcmQ6\r\n"


def test_auth_cancel_and_bad_base64() -> None:
    server = make_server()
    out, _ = talk(server, b"AUTH LOGIN\r\n*\r\n")
    assert out == b"334 VXNlcm5hbWU6\r\n501 5.5.2 Authentication aborted by client.\r\n"
    out, _ = talk(server, b"AUTH PLAIN\r\n!!!\r\n")
    assert out == b"334 \r\n501 5.5.2 Invalid base64 data in continued response\r\n"
    out, _ = talk(server, b"AUTH PLAIN AAA=x\r\n")
    assert out == b"501 5.5.2 Invalid base64 data in initial response\r\n"
    out, _ = talk(server, b"AUTH CRAM-MD5\r\nAUTH\r\nAUTH PLAIN a b\r\n")
    assert out == (b"504 5.5.4 Unsupported authentication mechanism.\r\n"
                   b"501 5.5.4 Missing SASL mechanism parameter\r\n501 5.5.4 Invalid parameters\r\n")
    assert server.state is ServerState.COMMAND


def test_login_failed_then_pipelined_commands_continue() -> None:
    server = make_server()
    _, events = talk(server, b"AUTH PLAIN " + b64(b"\0u\0bad") + b"\r\nNOOP\r\n")
    assert len(events) == 1
    assert talk(server, b"RSET\r\n") == (b"", [])  # held back until the login is answered
    events = server.login_failed(None, AUTH_FAILED)
    assert server.data_to_send() == (b"535 5.7.8 Authentication failed.\r\n"
                                     b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n")
    assert events == []
    _, events = talk(server, b"AUTH PLAIN " + b64(b"\0u\0bad") + b"\r\n")
    server.login_failed(None, TEMP_FAILED)
    assert server.data_to_send() == b"454 4.7.0 Account is temporarily unavailable.\r\n"
    with pytest.raises(RuntimeError):
        server.login_failed(None, AUTH_FAILED)


def test_login_succeeded_hands_over_pipelined_bytes() -> None:
    server = make_server()
    talk(server, b"EHLO c\r\n")
    _, events = talk(server, b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\nMAIL FROM:<u@x>\r\n")
    assert isinstance(events[0], LoginRequest)
    server.login_succeeded(LOGGED_IN)
    assert server.data_to_send() == b"235 2.7.0 Logged in.\r\n"
    assert talk(server, b"RCPT TO:<v@y>\r\n") == (b"", [])
    assert server.leftover() == b"MAIL FROM:<u@x>\r\nRCPT TO:<v@y>\r\n"
    assert server.leftover() == b""
    assert server.state is ServerState.LOGGED_IN


def test_commands_needing_auth() -> None:
    server = make_server()
    out, _ = talk(server, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nVRFY x\r\n")
    assert out == b"530 5.7.0 Authentication required.\r\n" * 4


def test_bdat_before_auth_consumes_its_chunk() -> None:
    server = make_server()
    out, _ = talk(server, b"BDAT 10 LAST\r\nNOOP\r\nNOOPNOOP\r\n")
    assert out == b"530 5.7.0 Authentication required.\r\n250 2.0.0 OK\r\n"  # "NOOP\r\nNOOP" was data


def test_rset_noop_quit() -> None:
    server = make_server()
    out, events = talk(server, b"RSET\r\nNOOP hello\r\nRSET x\r\nQUIT\r\nNOOP\r\n")
    assert out == b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n501 5.5.4 Invalid parameters\r\n221 2.0.0 Bye\r\n"
    assert events == [Close("Aborted login (logged out)")]
    assert talk(server, b"NOOP\r\n") == (b"", [])


def test_unknown_commands_then_too_many_errors() -> None:
    server = make_server(max_bad_commands=3)
    out, events = talk(server, b"FOO\r\n\r\nXFOO ADDR=1.2.3.4\r\nNOOP\r\n")
    assert out == (b"500 5.5.1 Unknown command\r\n500 5.5.2 Invalid command syntax\r\n"
                   b"421 4.7.0 proxy.example Too many invalid commands.\r\n")
    assert events == [Close("Too many invalid commands")]


def test_line_too_long_is_refused_and_session_continues() -> None:
    server = make_server(max_line=100)
    out, events = talk(server, b"NOOP " + b"x" * 200 + b"\r\nNOOP\r\n")
    assert out == b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n" and events == []
    out, _ = talk(server, b"AUTH PLAIN\r\n" + b"A" * 300 + b"\r\n")
    assert out == b"334 \r\n500 5.5.2 Line too long\r\n"
    assert server.state is ServerState.COMMAND


def test_input_buffer_full_while_login_is_pending() -> None:
    server = make_server(max_line=100)
    talk(server, b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n")
    out, events = talk(server, b"x" * 70000)
    assert out == b"421 4.7.0 proxy.example Input buffer full\r\n"
    assert events == [Close("Input buffer full")]


def test_whole_session_one_byte_at_a_time() -> None:
    server = make_server()
    data = b"EHLO c.example\r\nAUTH LOGIN\r\n" + b64(b"dave") + b"\r\n" + b64(b"pw") + b"\r\n"
    out = bytearray()
    events: list = []
    for byte in data:
        events += server.receive(bytes([byte]))
        out += server.data_to_send()
    assert bytes(out) == EHLO_PLAIN + b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n"
    assert events == [LoginRequest("dave", "pw", "LOGIN", "c.example", None)]


def test_login_reply_must_be_a_valid_reply() -> None:
    server = make_server()
    talk(server, b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n")
    with pytest.raises(ValueError):
        server.login_failed(None, "not a reply")


def test_post_login_ehlo_reply() -> None:
    caps = ["8BITMIME", "AUTH", "BURL imap imap://b.example", "CHUNKING", "ENHANCEDSTATUSCODES", "PIPELINING",
            "SIZE 33553408", "STARTTLS", "XCLIENT ADDR PORT"]
    assert post_login_ehlo_reply("proxy.example", caps) == (
        b"250-proxy.example\r\n250-8BITMIME\r\n250-BURL imap imap://b.example\r\n250-CHUNKING\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250 SIZE 33553408\r\n")


# --------------------------------------------------------------------------- client

GREETING = b"220 backend1.example.test Dovecot (Debian) ready.\r\n"
PRE_EHLO = (b"250-backend1.example.test\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250-BURL imap\r\n"
            b"250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE\r\n250-PIPELINING\r\n"
            b"250 XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT FORWARD\r\n")
POST_EHLO = (b"250-backend1.example.test\r\n250-8BITMIME\r\n250-AUTH\r\n250-BURL imap imap://backend1\r\n"
             b"250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250 SIZE 33553408\r\n")
XCLIENT_ATTRS = {"ADDR": "2001:db8::7", "PORT": "40001", "HELO": "client.example", "SESSION": "sess1",
                 "TTL": "4", "DESTADDR": "192.0.2.1"}
PLAIN_IR = b64(b"alice@example.test\0palomar-master\0m-secret")


def make_client(**kwargs: object) -> SubmissionLoginClient:
    options: dict = {"master_user": "palomar-master", "master_password": "m-secret", "helo": "proxy.example",
                     "xclient": XCLIENT_ATTRS}
    options.update(kwargs)
    return SubmissionLoginClient("alice@example.test", **options)


def run_to_auth(client: SubmissionLoginClient) -> None:
    assert client.receive(GREETING) is None
    assert client.data_to_send() == b"EHLO proxy.example\r\n"
    assert client.receive(PRE_EHLO) is None
    assert client.data_to_send() == (
        b"XCLIENT HELO=client.example SESSION=sess1 TTL=4 PORT=40001 ADDR=IPV6:2001:db8::7\r\n"
        b"EHLO proxy.example\r\n")
    assert client.receive(GREETING) is None
    assert client.receive(PRE_EHLO) is None
    assert client.data_to_send() == b"AUTH PLAIN " + PLAIN_IR + b"\r\n"


def test_client_full_login_with_xclient_and_post_login_ehlo() -> None:
    client = make_client()
    run_to_auth(client)
    assert client.xclient_sent
    assert client.receive(b"235 2.7.0 Logged in.\r\n") is None
    assert client.data_to_send() == b"EHLO proxy.example\r\n"
    result = client.receive(POST_EHLO + b"250 2.1.0 OK\r\n")
    assert result == LoggedIn(["8BITMIME", "AUTH", "BURL imap imap://backend1", "CHUNKING",
                               "ENHANCEDSTATUSCODES", "PIPELINING", "SIZE 33553408"],
                              b"235 2.7.0 Logged in.\r\n")
    assert client.leftover() == b"250 2.1.0 OK\r\n"
    assert client.receive(b"more") is None and client.leftover() == b"more"


def test_client_one_byte_at_a_time() -> None:
    client = make_client(post_login_ehlo=False)
    script = GREETING + PRE_EHLO + GREETING + PRE_EHLO + b"235 2.7.0 Logged in.\r\n"
    results = [client.receive(bytes([byte])) for byte in script]
    assert [r for r in results if r is not None] == [LoggedIn(
        ["8BITMIME", "AUTH PLAIN LOGIN", "BURL imap", "CHUNKING", "ENHANCEDSTATUSCODES", "SIZE", "PIPELINING",
         "XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT FORWARD"], b"235 2.7.0 Logged in.\r\n")]
    assert client.data_to_send().endswith(b"AUTH PLAIN " + PLAIN_IR + b"\r\n")


def test_client_without_xclient_advertised_goes_straight_to_auth() -> None:
    client = make_client()
    client.receive(GREETING)
    client.data_to_send()
    client.receive(b"250-b\r\n250-AUTH PLAIN LOGIN\r\n250 PIPELINING\r\n")
    assert client.data_to_send() == b"AUTH PLAIN " + PLAIN_IR + b"\r\n"
    assert not client.xclient_sent


def test_client_splits_xclient_and_waits_for_every_greeting() -> None:
    attrs = {"HELO": "h" * 255, "LOGIN": "l" * 255, "ADDR": "192.0.2.9"}
    client = make_client(xclient=attrs)
    client.receive(GREETING + PRE_EHLO)
    sent = client.data_to_send().split(b"\r\n")
    assert [line[:12] for line in sent[1:4]] == [b"XCLIENT HELO", b"XCLIENT LOGI", b"EHLO proxy.e"]
    assert sent[2].endswith(b" ADDR=192.0.2.9")
    assert client.receive(GREETING) is None
    assert client.receive(GREETING) is None
    assert client.data_to_send() == b""
    client.receive(PRE_EHLO)
    assert client.data_to_send().startswith(b"AUTH PLAIN ")


@pytest.mark.parametrize("reply,kind,code,referral", [
    (b"535 5.7.8 Authentication failed.\r\n", "auth", 535, None),
    (b"454 4.7.0 Temporary authentication failure\r\n", "temp", 454, None),
    (b"421 4.3.0 shutting down\r\n", "temp", 421, None),
    (b"550 5.2.900 user@127.0.0.3:10587 Referral\r\n", "referral", 550, "user@127.0.0.3:10587"),
    (b"534 5.7.9 Authentication mechanism is too weak\r\n", "protocol", 534, None),
])
def test_client_auth_failures(reply: bytes, kind: str, code: int, referral: str | None) -> None:
    client = make_client()
    run_to_auth(client)
    result = client.receive(reply)
    assert isinstance(result, LoginFailed)
    assert (result.kind, result.code, result.referral, result.reply) == (kind, code, referral, reply)


def test_client_refused_greeting_and_xclient() -> None:
    client = make_client()
    result = client.receive(b"421 4.3.2 too busy\r\n")
    assert isinstance(result, LoginFailed) and result.kind == "temp"
    client = make_client()
    client.receive(GREETING + PRE_EHLO)
    result = client.receive(b"550 5.7.14 You are not from trusted IP\r\n")
    assert isinstance(result, LoginFailed) and (result.kind, result.code) == ("protocol", 550)
    assert "XCLIENT failed" in result.text


def test_client_needs_auth_plain() -> None:
    client = make_client(xclient={})
    client.receive(GREETING)
    result = client.receive(b"250-b\r\n250-STARTTLS\r\n250 PIPELINING\r\n")
    assert isinstance(result, LoginFailed) and result.kind == "protocol" and "AUTH PLAIN" in result.text


def test_client_long_credentials_use_a_continuation() -> None:
    client = SubmissionLoginClient("u" * 300, master_user="m" * 100, master_password="p" * 100, helo="h")
    client.receive(GREETING + b"250-b\r\n250 AUTH PLAIN\r\n")
    assert client.data_to_send() == b"EHLO h\r\nAUTH PLAIN\r\n"
    assert client.receive(b"334 \r\n") is None
    assert client.data_to_send() == b64(b"u" * 300 + b"\0" + b"m" * 100 + b"\0" + b"p" * 100) + b"\r\n"
    assert client.receive(b"334 \r\n") == LoginFailed(
        "protocol", 334, "Unexpected AUTH challenge from backend", None, b"334 \r\n")


def test_client_failure_after_login_and_disconnects() -> None:
    client = make_client()
    run_to_auth(client)
    client.receive(b"235 2.7.0 Logged in.\r\n")
    result = client.receive(b"421 4.4.0 b Failed to connect to relay server (connect)\r\n")
    assert isinstance(result, LoginFailed) and result.kind == "temp"
    client = make_client()
    client.receive(GREETING[:10])
    assert client.connection_lost() == LoginFailed("temp", None, "Backend disconnected during login")


def test_client_garbage_and_secrets() -> None:
    client = make_client()
    result = client.receive(b"HTTP/1.1 400 Bad Request\r\n")
    assert isinstance(result, LoginFailed) and result.kind == "protocol"
    client = make_client()
    assert "m-secret" not in repr(client)
    with pytest.raises(ValueError):
        make_client(helo="two words")
    with pytest.raises(ValueError):
        SubmissionLoginClient("u\0x", master_user="m", master_password="p", helo="h")
