"""ManageSieve login cores: byte vectors for the proxy's server side and the backend's client side."""

from __future__ import annotations

import base64

import pytest

from palomar.protocols.managesieve import (
    AUTH_FAILED,
    PRIVACY_REQUIRED,
    TEMP_FAILED,
    ClientState,
    Close,
    LoggedIn,
    LoginFailed,
    LoginRequest,
    ServerState,
    SieveLoginClient,
    SieveLoginServer,
    SieveResponse,
    SieveSyntaxError,
    StartTlsRequest,
    parse_response,
    referral_response,
    response,
)

EXTS = "fileinto reject envelope vacation"
CAPS_TLS = (b'"IMPLEMENTATION" "palomar"\r\n"SIEVE" "fileinto reject envelope vacation"\r\n'
            b'"SASL" "PLAIN LOGIN"\r\n"STARTTLS"\r\n"VERSION" "1.0"\r\n')
CAPS_SECURED = (b'"IMPLEMENTATION" "palomar"\r\n"SIEVE" "fileinto reject envelope vacation"\r\n'
                b'"SASL" "PLAIN LOGIN"\r\n"VERSION" "1.0"\r\n')
BAD = b'NO "Error in MANAGESIEVE command received by server."\r\n'
FAILED = b'NO "Authentication failed."\r\n'


def server(*, starttls=True, secured=False, allow_cleartext=True, **kw) -> SieveLoginServer:
    return SieveLoginServer(starttls=starttls, secured=secured, allow_cleartext=allow_cleartext,
                            sieve_extensions=EXTS, **kw)


def talk(core: SieveLoginServer, data: bytes) -> tuple[list, bytes]:
    events = core.receive(data)
    return events, core.data_to_send()


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def req(user="alice", password="pw", mech="PLAIN", authzid=None) -> LoginRequest:
    return LoginRequest(None, user, password, mech, "AUTHENTICATE", authzid)


# --------------------------------------------------------------------------- server: greeting, CAPABILITY


def test_greeting_plaintext_with_starttls():
    assert server().greeting() == CAPS_TLS + b'OK "Palomar ready."\r\n'


def test_greeting_cleartext_refused_has_empty_sasl_and_starttls():
    assert server(allow_cleartext=False).greeting() == (
        b'"IMPLEMENTATION" "palomar"\r\n"SIEVE" "fileinto reject envelope vacation"\r\n'
        b'"SASL" ""\r\n"STARTTLS"\r\n"VERSION" "1.0"\r\nOK "Palomar ready."\r\n')


def test_greeting_options():
    core = server(secured=True, implementation='Pal "omar"', notify_methods="mailto", greeting="Hi.")
    assert core.greeting() == (
        b'"IMPLEMENTATION" "Pal \\"omar\\""\r\n"SIEVE" "fileinto reject envelope vacation"\r\n'
        b'"NOTIFY" "mailto"\r\n"SASL" "PLAIN LOGIN"\r\n"VERSION" "1.0"\r\nOK "Hi."\r\n')
    with pytest.raises(ValueError):
        server(greeting="two\r\nlines")


def test_capability_command():
    assert talk(server(), b"CAPABILITY\r\n") == ([], CAPS_TLS + b'OK "Capability completed."\r\n')
    assert talk(server(secured=True), b"capability\n") == (
        [], CAPS_SECURED + b'OK "Capability completed."\r\n')


def test_noop_with_and_without_tag():
    _, out = talk(server(), b'NOOP\r\nNOOP "t1"\r\nNOOP {2+}\r\nab\r\n')
    assert out == b'OK "NOOP Completed"\r\nOK (TAG "t1") "Done"\r\nOK (TAG "ab") "Done"\r\n'


def test_noop_tag_with_line_breaks_is_refused():
    """Found by fuzzing: a literal tag holding CR, LF or NUL raised ValueError out of the core."""
    core = server()
    _, out = talk(core, b"NOOP {3+}\r\na\rb\r\nNOOP {2+}\r\n\n\n\r\nNOOP {1+}\r\n\0\r\nNOOP\r\n")
    assert out == b'NO "Invalid echo tag."\r\n' * 3 + b'OK "NOOP Completed"\r\n'
    assert core.state is ServerState.COMMAND


def test_logout():
    core = server()
    events, out = talk(core, b"LOGOUT\r\nCAPABILITY\r\n")
    assert out == b'OK "Logout completed."\r\n'
    assert events == [Close("Aborted login (logged out)")]
    assert core.state is ServerState.CLOSED
    assert talk(core, b"NOOP\r\n") == ([], b"")


# --------------------------------------------------------------------------- server: STARTTLS


def test_starttls_discards_pipelined_bytes_and_resends_capabilities():
    core = server(allow_cleartext=False)
    events, out = talk(core, b'STARTTLS\r\nAUTHENTICATE "PLAIN" "' + b64(b"\0evil\0x") + b'"\r\n')
    assert out == b'OK "Begin TLS negotiation now."\r\n'
    assert events == [StartTlsRequest()]
    assert core.state is ServerState.AWAIT_TLS
    assert talk(core, b"NOOP\r\n") == ([], b"")
    core.tls_started()
    assert core.data_to_send() == CAPS_SECURED + b'OK "TLS negotiation successful."\r\n'
    events, _ = talk(core, b'AUTHENTICATE "PLAIN" "' + b64(b"\0alice\0pw") + b'"\r\n')
    assert events == [req()]


def test_starttls_refusals():
    assert talk(server(secured=True), b"STARTTLS\r\n") == ([], b'NO "TLS is already active."\r\n')
    assert talk(server(starttls=False), b"STARTTLS\r\n") == ([], b'NO "TLS support isn\'t enabled."\r\n')
    with pytest.raises(RuntimeError):
        server().tls_started()


# --------------------------------------------------------------------------- server: AUTHENTICATE


def test_authenticate_plain_quoted_initial_response_and_pipelined_commands():
    core = server()
    events, out = talk(core, b'AUTHENTICATE "PLAIN" "' + b64(b"\0alice\0pw") + b'"\r\nLISTSCRIPTS\r\n')
    assert (events, out) == ([req()], b"")
    assert core.state is ServerState.AWAIT_LOGIN
    core.login_succeeded()
    core.receive(b'GETSCRIPT "x"\r\n')
    assert core.leftover() == b'LISTSCRIPTS\r\nGETSCRIPT "x"\r\n'
    assert core.leftover() == b""


def test_authenticate_initial_response_as_literal():
    ir = b64(b"\0alice\0pw")
    for marker in (b"+}", b"}"):
        events, out = talk(server(), b'authenticate "plain" {%d' % len(ir) + marker + b"\r\n" + ir + b"\r\n")
        assert (events, out) == ([req()], b"")


def test_authenticate_mechanism_as_literal_and_master_login():
    events, _ = talk(server(), b'AUTHENTICATE {5+}\r\nPLAIN "' + b64(b"bob\0alice\0pw") + b'"\r\n')
    assert events == [req(authzid="bob")]
    assert events[0].is_master_login


def test_authenticate_plain_with_continuation():
    core = server()
    assert talk(core, b'AUTHENTICATE "PLAIN"\r\n') == ([], b'""\r\n')
    assert core.state is ServerState.AUTH_CONTINUE
    events, out = talk(core, b'"' + b64(b"\0alice\0pw") + b'"\r\n')
    assert (events, out) == ([req()], b"")


def test_authenticate_continuation_as_literal():
    core = server()
    talk(core, b'AUTHENTICATE "PLAIN"\r\n')
    token = b64(b"\0alice\0pw")
    events, _ = talk(core, b"{%d+}\r\n" % len(token) + token + b"\r\n")
    assert events == [req()]


def test_authenticate_login_mechanism():
    core = server()
    assert talk(core, b'AUTHENTICATE "LOGIN"\r\n') == ([], b'"VXNlcm5hbWU6"\r\n')
    assert talk(core, b'"' + b64(b"alice") + b'"\r\n') == ([], b'"UGFzc3dvcmQ6"\r\n')
    events, _ = talk(core, b'"' + b64(b"pw") + b'"\r\n')
    assert events == [req(mech="LOGIN")]


def test_authenticate_cancel():
    core = server()
    talk(core, b'AUTHENTICATE "PLAIN"\r\n')
    assert talk(core, b'"*"\r\n') == ([], b'NO "Authentication aborted by client."\r\n')
    assert core.state is ServerState.COMMAND
    assert talk(core, b"NOOP\r\n")[1] == b'OK "NOOP Completed"\r\n'


def test_authenticate_bad_continuations():
    cases = {
        b"": b'NO "Received empty AUTHENTICATE client response line."\r\n',
        b"AAAA": b'NO "Invalid AUTHENTICATE client response."\r\n',
        b'"a" "b"': b'NO "Invalid AUTHENTICATE client response."\r\n',
        b'"!!!"': b'NO "Invalid base64 data in continued response"\r\n',
    }
    for line, reply in cases.items():
        core = server()
        talk(core, b'AUTHENTICATE "PLAIN"\r\n')
        assert talk(core, line + b"\r\n") == ([], reply), line
        assert core.state is ServerState.COMMAND
        assert core.bad_commands == 0


def test_authenticate_bad_base64_and_malformed_plain():
    assert talk(server(), b'AUTHENTICATE "PLAIN" "!!"\r\n') == (
        [], b'NO "Invalid base64 data in initial response"\r\n')
    for token in (b"", b64(b"alice\0pw"), b64(b"\0\0pw")):
        assert talk(server(), b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n') == ([], FAILED)


def test_authenticate_unsupported_and_cleartext_refused():
    assert talk(server(), b'AUTHENTICATE "GSSAPI"\r\n') == (
        [], b'NO "Unsupported authentication mechanism."\r\n')
    core = server(allow_cleartext=False)
    events, out = talk(core, b'AUTHENTICATE "PLAIN" "' + b64(b"\0a\0b") + b'"\r\n')
    assert (events, out) == ([], PRIVACY_REQUIRED.encode() + b"\r\n")
    assert out.startswith(b'NO (ENCRYPT-NEEDED) "Plaintext authentication disallowed')


def test_authenticate_syntax_errors_are_bad_commands():
    core = server(max_bad_commands=10)
    for line in (b"AUTHENTICATE", b"AUTHENTICATE PLAIN", b'AUTHENTICATE ""', b'AUTHENTICATE "PLAIN" x',
                 b'AUTHENTICATE "PLAIN" "a" "b"', b'AUTHENTICATE "PL\\AIN"'):
        assert talk(core, line + b"\r\n") == ([], BAD), line
    assert core.bad_commands == 6


def test_login_failed_then_pipelined_retry():
    core = server()
    token = b'"' + b64(b"\0alice\0pw") + b'"'
    events, _ = talk(core, b'AUTHENTICATE "PLAIN" ' + token + b'\r\nAUTHENTICATE "PLAIN" ' + token + b"\r\n")
    assert events == [req()]
    assert core.login_failed(None, TEMP_FAILED) == [req()]
    assert core.data_to_send() == b'NO (TRYLATER) "Account is temporarily unavailable."\r\n'
    assert core.login_failed(None, AUTH_FAILED) == []
    assert core.data_to_send() == FAILED


def test_login_answers_require_a_pending_login():
    core = server()
    with pytest.raises(RuntimeError):
        core.login_succeeded()
    with pytest.raises(RuntimeError):
        core.login_failed(None, AUTH_FAILED)


# --------------------------------------------------------------------------- server: errors, limits


def test_bad_commands_then_bye():
    core = server()
    _, out = talk(core, b"LISTSCRIPTS\r\nCAPABILITY extra\r\n")
    assert out == BAD + BAD
    events, out = talk(core, b"(garbage\r\nNOOP\r\n")
    assert out == b'BYE "Too many invalid MANAGESIEVE commands."\r\n'
    assert events == [Close("Too many invalid commands")]
    assert core.state is ServerState.CLOSED


def test_overlong_line_bye():
    core = server(max_line=64)
    events, out = talk(core, b"NOOP " + b"x" * 100)
    assert out == b'BYE "Input buffer full, aborting"\r\n'
    assert events == [Close("Input buffer full")]


def test_oversized_literal_bye():
    core = server(max_line=64)
    events, out = talk(core, b'AUTHENTICATE "PLAIN" {1000+}\r\n')
    assert out == b'BYE "Input buffer full, aborting"\r\n'
    assert events == [Close("Input buffer full")]
    assert talk(core, b"x" * 1000) == ([], b"")


def test_flood_while_login_is_pending_closes():
    core = server(max_line=64)
    talk(core, b'AUTHENTICATE "PLAIN" "' + b64(b"\0a\0b") + b'"\r\n')
    events, out = talk(core, b"x" * 70000)
    assert events == [Close("Input buffer full")]
    assert out == b'BYE "Input buffer full, aborting"\r\n'


def test_one_byte_at_a_time():
    core = server()
    token = b64(b"\0alice\0pw")
    stream = (b'NOOP "t"\r\nAUTHENTICATE "PLAIN"\r\n{%d+}\r\n' % len(token) + token
              + b'\r\nPUTSCRIPT "s" {4+}\r\nkeep\r\n')
    events: list = []
    out = b""
    for i in range(len(stream)):
        events += core.receive(stream[i:i + 1])
        out += core.data_to_send()
    assert events == [req()]
    assert out == b'OK (TAG "t") "Done"\r\n""\r\n'
    core.login_succeeded()
    assert core.leftover() == b'PUTSCRIPT "s" {4+}\r\nkeep\r\n'


def test_passwords_do_not_appear_in_reprs():
    core = server()
    events, _ = talk(core, b'AUTHENTICATE "PLAIN" "' + b64(b"\0alice\0Sup3rS3cret") + b'"\r\n')
    for text in (repr(events), str(events[0]), repr(core)):
        assert "Sup3rS3cret" not in text
    core = server()
    talk(core, b'AUTHENTICATE "LOGIN" "' + b64(b"alice") + b'"\r\n')
    assert "alice" not in repr(core) and "alice" not in repr(core._sasl)


# --------------------------------------------------------------------------- formatting and parsing


def test_response_helpers():
    assert response("OK") == "OK"
    assert response("NO", 'say "x"', "TRYLATER") == 'NO (TRYLATER) "say \\"x\\""'
    assert referral_response("sieve://127.0.0.3:4190") == (
        'NO (REFERRAL "sieve://127.0.0.3:4190") "Try this server instead."')


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b'OK "Logged in."', ("OK", None, (), "Logged in.")),
        (b"OK", ("OK", None, (), "")),
        (b'no (TRYLATER) "Later."', ("NO", "TRYLATER", (), "Later.")),
        (b'NO (REFERRAL "sieve://h:4190") "Elsewhere."',
         ("NO", "REFERRAL", ("sieve://h:4190",), "Elsewhere.")),
        (b"BYE (REFERRAL sieve://h/)", ("BYE", "REFERRAL", ("sieve://h/",), "")),
        (b'NO (QUOTA/MAXSIZE) {5}\r\nlarge', ("NO", "QUOTA/MAXSIZE", (), "large")),
        (b'OK (SASL "cnNwYXV0aA==")', ("OK", "SASL", ("cnNwYXV0aA==",), "")),
    ],
)
def test_parse_response(message, expected):
    resp = parse_response(message)
    assert (resp.status, resp.code, resp.code_args, resp.text) == expected
    assert resp.raw == message + b"\r\n"


@pytest.mark.parametrize(
    "message", [b"", b"MAYBE", b'OK "unterminated', b"OK (TRYLATER", b'OK "a" "b"', b"OK text"])
def test_parse_response_errors(message):
    with pytest.raises(SieveSyntaxError):
        parse_response(message)


# --------------------------------------------------------------------------- client

IR = b64(b"alice@example.test\0palomar-master\0m4sterPW")
AUTH_LINE = b'AUTHENTICATE "PLAIN" "' + IR + b'"\r\n'
XCLIENT = {"ADDR": "203.0.113.7", "PORT": "40001", "SESSION": "wDcCCsgi", "TTL": "4"}
XCLIENT_LINE = b"XCLIENT ADDR=203.0.113.7 PORT=40001 SESSION=wDcCCsgi TTL=4\r\n"
GREETING = (b'"IMPLEMENTATION" "Dovecot (Debian) Pigeonhole"\r\n"SIEVE" "fileinto reject vacation"\r\n'
            b'"NOTIFY" "mailto"\r\n"SASL" "PLAIN LOGIN"\r\n"VERSION" "1.0"\r\n')
TRUSTED = GREETING + b'"XCLIENT"\r\nOK "Dovecot (Debian) ready."\r\n'
UNTRUSTED = GREETING + b'OK "Dovecot (Debian) ready."\r\n'
CAPS = {"IMPLEMENTATION": "Dovecot (Debian) Pigeonhole", "SIEVE": "fileinto reject vacation",
        "NOTIFY": "mailto", "SASL": "PLAIN LOGIN", "VERSION": "1.0"}


def client(xclient=XCLIENT) -> SieveLoginClient:
    return SieveLoginClient("alice@example.test", master_user="palomar-master", master_password="m4sterPW",
                            xclient=xclient)


def test_client_trusted_greeting_pipelines_xclient_and_authenticate():
    core = client()
    assert core.receive(TRUSTED) is None
    assert core.data_to_send() == XCLIENT_LINE + AUTH_LINE
    assert core.xclient_sent and core.state is ClientState.XCLIENT
    result = core.receive(b'OK "Updated"\r\nOK "Logged in."\r\n')
    assert result == LoggedIn(b'OK "Logged in."\r\n', {**CAPS, "XCLIENT": None})
    assert result.capabilities["SIEVE"] == "fileinto reject vacation"
    assert core.state is ClientState.DONE


def test_client_untrusted_greeting_sends_no_xclient():
    core = client()
    core.receive(UNTRUSTED)
    assert core.data_to_send() == AUTH_LINE
    assert not core.xclient_sent
    assert core.receive(b'OK "Logged in."\r\n') == LoggedIn(b'OK "Logged in."\r\n', CAPS)


def test_client_without_xclient_fields():
    core = client(xclient=None)
    core.receive(TRUSTED)
    assert core.data_to_send() == AUTH_LINE


def test_client_one_byte_at_a_time_with_literal_capability_and_leftover():
    core = client()
    stream = (b'"IMPLEMENTATION" "x"\r\n"SIEVE" {8}\r\nfileinto\r\n"SASL" "LOGIN PLAIN"\r\n"XCLIENT"\r\n'
              b'OK "ready"\r\nOK "Updated"\r\nOK "Logged in."\r\n"s1" ACTIVE\r\n')
    results = []
    sent = b""
    for i in range(len(stream)):
        results.append(core.receive(stream[i:i + 1]))
        sent += core.data_to_send()
    assert sent == XCLIENT_LINE + AUTH_LINE
    done = [r for r in results if r is not None]
    assert len(done) == 1 and isinstance(done[0], LoggedIn)
    assert done[0].capabilities["SIEVE"] == "fileinto"
    assert core.leftover() == b'"s1" ACTIVE\r\n'


@pytest.mark.parametrize(
    ("reply", "kind", "code", "referral"),
    [
        (b'NO "Authentication failed."', "auth", None, None),
        (b'NO (TRYLATER) "Account is temporarily unavailable."', "temp", "TRYLATER", None),
        (b'NO (REFERRAL "sieve://127.0.0.3:4190") "Try elsewhere."', "referral", "REFERRAL",
         "sieve://127.0.0.3:4190"),
        (b'BYE (REFERRAL sieve://127.0.0.3/) "Moved."', "referral", "REFERRAL", "sieve://127.0.0.3/"),
        (b'BYE "Disconnected for inactivity."', "temp", None, None),
        (b'NO (TRYLATER/NORETRY) "Nope."', "other", "TRYLATER/NORETRY", None),
    ],
)
def test_client_failure_mapping(reply, kind, code, referral):
    core = client()
    core.receive(UNTRUSTED)
    result = core.receive(reply + b"\r\n")
    assert isinstance(result, LoginFailed)
    assert (result.kind, result.response_code, result.referral) == (kind, code, referral)
    assert result.line == reply + b"\r\n"


def test_client_xclient_refused_is_config():
    core = client()
    core.receive(TRUSTED)
    result = core.receive(b'NO "You are not from trusted IP"\r\nNO "Authentication failed."\r\n')
    assert result.kind == "config" and "trusted IP" in result.text
    assert core.leftover() == b'NO "Authentication failed."\r\n'


def test_client_needs_sasl_plain():
    core = client()
    result = core.receive(b'"IMPLEMENTATION" "x"\r\n"SASL" ""\r\n"STARTTLS"\r\nOK "ready"\r\n')
    assert result == LoginFailed("config", None, "Server has disabled authentication (TLS required?)")
    assert core.data_to_send() == b""
    core = client()
    assert core.receive(b'"SASL" "LOGIN"\r\nOK "ready"\r\n').kind == "config"


def test_client_greeting_failures_and_protocol_errors():
    core = client()
    assert core.receive(b'"IMPLEMENTATION" "x"\r\nBYE "Too many connections."\r\n').kind == "temp"
    core = client()
    assert core.receive(b"* OK IMAP4rev1\r\n").kind == "protocol"
    core = client()
    assert core.receive(b'"SASL" "PLAIN" "extra"\r\n').kind == "protocol"
    core = client()
    core.receive(UNTRUSTED)
    assert core.receive(b'NO (REFERRAL) "x"\r\n').kind == "protocol"
    core = SieveLoginClient("u", master_user="m", master_password="p", max_line=32)
    assert core.receive(b'"IMPLEMENTATION" "' + b"x" * 64).kind == "protocol"


def test_client_endless_capability_list_is_a_protocol_failure():
    """Found by fuzzing: capability lines before the greeting's OK were kept without a bound."""
    core = SieveLoginClient("alice", master_user="m", master_password="p", max_line=200)
    result = None
    for index in range(20):
        result = core.receive(f'"X-{index}" "some value"\r\n'.encode())
        if result is not None:
            break
    assert isinstance(result, LoginFailed) and result.kind == "protocol"
    assert sum(len(k) + len(v or "") for k, v in core.capabilities.items()) <= 200


def test_client_connection_lost_and_validation():
    core = client()
    core.receive(TRUSTED)
    assert core.connection_lost() == LoginFailed("temp", None, "Backend disconnected during login")
    with pytest.raises(ValueError):
        SieveLoginClient("alice", master_user="", master_password="p")
    with pytest.raises(ValueError):
        client(xclient={"ADDR": "a b"})
    assert "m4sterPW" not in repr(client())


def test_sieve_response_is_frozen_data():
    resp = parse_response(b'OK "x"')
    assert resp == SieveResponse("OK", None, (), "x", b'OK "x"\r\n')
